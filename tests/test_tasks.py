"""Task data: labels equal a direct formula, the split is clean, and randomness comes from data_seed."""

import math

import pytest
import torch

from grok.config import ConfigError
from grok.tasks import TASKS, make_dataset
from tests.conftest import make_config

FORMULAS = {
    "add": lambda a, b, p: (a + b) % p,
    "subtract": lambda a, b, p: (a - b) % p,
    "multiply": lambda a, b, p: (a * b) % p,
    "divide": lambda a, b, p: next(c for c in range(p) if (c * b) % p == a),  # c with c*b = a
    "x2xyy2": lambda a, b, p: (a**2 + a * b + b**2) % p,
    "noisy_label": lambda a, b, p: (a + b) % p,  # the clean label
}


def dataset(task, train_frac=0.3, data_seed=0, **task_overrides):
    cfg = make_config([f"task={task}"] + [f"task.{k}={v}" for k, v in task_overrides.items()])
    return make_dataset(cfg.task, train_frac, data_seed)


@pytest.mark.parametrize("task", sorted(FORMULAS))
def test_labels_match_the_formula_for_every_pair(task):
    p = 7
    data = dataset(task, p=p, **({"noise": 0} if task == "noisy_label" else {}))
    pairs = [(a, b) for a in range(p) for b in range(p) if task != "divide" or b != 0]
    assert sorted(map(tuple, data.inputs[:, :2].tolist())) == pairs
    assert (data.inputs[:, 2] == p).all(), "the third token is '=', numbered p"
    for (a, b, _), label in zip(data.inputs.tolist(), data.labels.tolist()):
        assert label == FORMULAS[task](a, b, p), (a, b)


def test_every_registered_task_has_a_config_and_a_formula_or_table():
    assert set(TASKS) == set(FORMULAS) | {"random"}
    for task in TASKS:
        assert make_config([f"task={task}"]).task.name == task


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
    assert not torch.equal(dataset("noisy_label", p=13, data_seed=0).labels, dataset("noisy_label", p=13, data_seed=1).labels)


def test_train_frac_that_leaves_a_split_empty_is_an_error():
    with pytest.raises(ConfigError, match="train_frac=0.01"):
        dataset("add", train_frac=0.01, p=3)
