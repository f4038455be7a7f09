"""Task data: labels equal a direct formula, the split is clean, and randomness comes from data_seed."""

import math

import pytest
import torch

from grok.data import make_dataset
from grok.errors import ConfigError
from grok.plugins import plugin
from tests.conftest import ROOT, make_config


def divide(a, b, p):
    return next(c for c in range(p) if (c * b) % p == a)  # c with c*b = a


FORMULAS = {
    "add": lambda a, b, p: (a + b) % p,
    "subtract": lambda a, b, p: (a - b) % p,
    "multiply": lambda a, b, p: (a * b) % p,
    "divide": divide,
    "x2xyy2": lambda a, b, p: (a**2 + a * b + b**2) % p,
    "noisy_label": lambda a, b, p: (a + b) % p,  # the clean label
    "x2y2": lambda a, b, p: (a**2 + b**2) % p,
    "x2xyy2x": lambda a, b, p: (a**2 + a * b + b**2 + a) % p,
    "x3xy": lambda a, b, p: (a**3 + a * b) % p,
    "x3xy2y": lambda a, b, p: (a**3 + a * b**2 + b) % p,
    "a2b": lambda a, b, p: (a**2 + b) % p,
    "a3b": lambda a, b, p: (a**3 + b) % p,
    "mix": lambda a, b, p: divide(a, b, p) if b % 2 == 1 else (a - b) % p,
    "add_or_mul": lambda a, b, p: (a + b) % p if a % 2 == 0 else (a * b) % p,
    "add_or_sub": lambda a, b, p: (a + b) % p if a % 2 == 0 else (a - b) % p,
    "expr": lambda a, b, p: (a**2 + 3 * a * b) % p,  # conf/task/expr.yaml's example
}
NONZERO_B = {"divide", "mix"}
PERMUTATION_TASKS = {"s5", "s5conj", "s5aba"}  # tests/test_permutations.py
SEQUENCE_TASKS = {"digit_add", "calculator"}  # tests/test_sequences.py


def dataset(task, train_frac=0.3, data_seed=0, **task_overrides):
    cfg = make_config([f"task={task}"] + [f"task.{k}={v}" for k, v in task_overrides.items()])
    return make_dataset(cfg.task, train_frac, data_seed)


@pytest.mark.parametrize("task", sorted(FORMULAS))
def test_labels_match_the_formula_for_every_pair(task):
    p = 11
    data = dataset(task, p=p, **({"noise": 0} if task == "noisy_label" else {}))
    pairs = [(a, b) for a in range(p) for b in range(p) if task not in NONZERO_B or b != 0]
    assert sorted(map(tuple, data.inputs[:, :2].tolist())) == pairs
    assert (data.inputs[:, 2] == p).all(), "the third token is '=', numbered p"
    for (a, b, _), label in zip(data.inputs.tolist(), data.labels.tolist()):
        assert label == FORMULAS[task](a, b, p), (a, b)


def test_every_task_option_names_its_plug_in_and_has_a_formula_or_table():
    options = {path.stem for path in (ROOT / "conf" / "task").glob("*.yaml")}
    assert options == set(FORMULAS) | {"random"} | PERMUTATION_TASKS | SEQUENCE_TASKS
    for task in options:
        cfg = make_config([f"task={task}"]).task
        assert cfg.name == task and all(hasattr(plugin(cfg, "task"), attr) for attr in ("make", "size", "check"))


def test_divide_uses_the_p_times_p_minus_1_pairs_with_nonzero_divisor():
    data = dataset("divide", p=11)
    assert len(data.inputs) == 11 * 10
    assert (data.inputs[:, 1] != 0).all()


def test_random_task_is_a_fixed_table_drawn_from_data_seed():
    a = dataset("random", p=11, data_seed=1)
    again = dataset("random", p=11, data_seed=1)
    other = dataset("random", p=11, data_seed=2)
    assert torch.equal(a.labels, again.labels)
    assert not torch.equal(a.labels, other.labels)
    assert a.labels.min() >= 0 and a.labels.max() < 11
    # A fixed function: each (a, b) has one label, whatever the split.
    assert len(set(a.labels.tolist())) > 5


def test_split_sizes_are_disjoint_and_cover_all_pairs():
    data = dataset("add", train_frac=0.3, p=97)
    n = 97 * 97
    assert len(data.train_idx) == int(0.3 * n) and len(data.test_idx) == n - int(0.3 * n)
    both = torch.cat([data.train_idx, data.test_idx])
    assert torch.equal(both.sort().values, torch.arange(n))


def test_split_depends_on_data_seed_only():
    base = dataset("add", p=23, data_seed=5)
    assert torch.equal(base.train_idx, dataset("add", p=23, data_seed=5).train_idx)
    assert not torch.equal(base.train_idx, dataset("add", p=23, data_seed=6).train_idx)
    torch.manual_seed(123)  # the model seed (torch's global RNG) does not touch the split
    assert torch.equal(base.train_idx, dataset("add", p=23, data_seed=5).train_idx)


def test_label_noise_follows_binomial_n_half_minus_n_over_2():
    p, n = 97, 4
    data = dataset("noisy_label", p=p, noise=n)
    offsets = ((data.labels - data.clean_labels + n // 2) % p).tolist()  # noise + n/2, in 0..n
    counts = [offsets.count(k) for k in range(n + 1)]
    assert sum(counts) == p * p, "every noise value lies in [-n/2, n/2]"
    total = p * p
    for k, count in enumerate(counts):
        expected = total * math.comb(n, k) / 2**n
        assert abs(count - expected) < 4 * math.sqrt(expected), (k, count, expected)


def test_noise_zero_gives_clean_labels():
    data = dataset("noisy_label", p=13, noise=0)
    assert torch.equal(data.labels, data.clean_labels)


def test_noise_depends_on_data_seed():
    assert not torch.equal(
        dataset("noisy_label", p=13, data_seed=0).labels, dataset("noisy_label", p=13, data_seed=1).labels
    )


def test_train_frac_that_leaves_a_split_empty_is_an_error():
    with pytest.raises(ConfigError, match="train_frac=0.01"):
        dataset("add", train_frac=0.01, p=3)


def test_label_noise_frac_replaces_that_fraction_of_training_labels_with_uniform_ones():
    p, frac = 97, 0.2
    data = dataset("add", p=p, label_noise_frac=frac)
    a, b = data.inputs[:, 0], data.inputs[:, 1]
    assert torch.equal(data.clean_labels, (a + b) % p)
    changed = (data.labels != data.clean_labels).nonzero()[:, 0]
    assert set(changed.tolist()) <= set(data.train_idx.tolist()), "test labels stay clean"
    n_noisy = round(frac * len(data.train_idx))
    # A uniform replacement equals the true label with probability 1/p.
    assert n_noisy * (1 - 1 / p) - 4 * math.sqrt(n_noisy / p) <= len(changed) <= n_noisy
    replaced = data.labels[changed].double()
    assert abs(replaced.mean().item() - (p - 1) / 2) < 4 * p / math.sqrt(12 * len(changed)), "uniform over Z_p"


def test_label_noise_depends_on_data_seed_and_zero_means_clean():
    assert not torch.equal(
        dataset("add", p=13, label_noise_frac=0.5, data_seed=0).labels,
        dataset("add", p=13, label_noise_frac=0.5, data_seed=1).labels,
    )
    assert dataset("add", p=13, label_noise_frac=0.0).clean_labels is None


def test_label_noise_on_a_permutation_task_draws_from_the_n_factorial_elements():
    data = dataset("s5", n=4, label_noise_frac=0.9)
    assert data.labels.max() < 24 and len(set(data.labels[data.train_idx].tolist())) == 24
