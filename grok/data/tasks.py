"""Task data: every (a, b) pair of a binary operation, its label, and the train/test split.

Binary operations act on the m elements of Z_p (m = p) or of S_n (m = n!, grok/permutations.py);
inputs are token sequences [a, b, =] with the '=' token numbered m. Sequence tasks (digit_add,
calculator) are written out character by character instead: grok/sequences.py. Everything random
here (the split, the `random` task's table, label noise, sampled problems) is drawn from `data_seed`
alone, each from its own stream, so changing the model seed never changes the data and vice versa.

grok/memory.py checks, before make_dataset runs, that the data set and its training fit in memory.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from grok.config import ConfigError
from grok.data.expr import evaluate_expr
from grok.data.permutations import compose, elements, index, inverse
from grok.data.sequences import VOCAB, make_problems

# Independent random streams derived from data_seed.
SPLIT_STREAM, TABLE_STREAM, NOISE_STREAM, LABEL_NOISE_STREAM, PROBLEM_STREAM = 0, 1, 2, 3, 4
UNDEFINED = -1  # a label function's mark for a pair where the operation is undefined (left out)

LabelFn = Callable[[Tensor, Tensor, Any, int], Tensor]  # (a, b, task config, data_seed) -> labels


def _rng(data_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([data_seed, stream])


def _divide(a: Tensor, b: Tensor, task_cfg, data_seed: int) -> Tensor:
    p = task_cfg.p
    reciprocal = torch.tensor([0] + [pow(k, -1, p) for k in range(1, p)])
    return a * reciprocal[b] % p


def _random_table(a: Tensor, b: Tensor, task_cfg, data_seed: int) -> Tensor:
    p = task_cfg.p
    table = torch.from_numpy(_rng(data_seed, TABLE_STREAM).integers(0, p, size=(p, p)))
    return table[a, b]


def _mix(a: Tensor, b: Tensor, task_cfg, data_seed: int) -> Tensor:
    """openai/grok's mix1: a/b when b is odd, else a-b."""
    return torch.where(b % 2 == 1, _divide(a, b, task_cfg, data_seed), (a - b) % task_cfg.p)


def _expression(a: Tensor, b: Tensor, task_cfg, data_seed: int) -> Tensor:
    values, defined = evaluate_expr(task_cfg.expr, a.numpy(), b.numpy(), task_cfg.p)
    return torch.from_numpy(np.where(defined, values, UNDEFINED))


def _modulus(task_cfg) -> int:
    return task_cfg.p


@dataclass(frozen=True)
class Task:
    label: Optional[LabelFn]  # None for sequence tasks
    needs_prime: bool = False
    nonzero_b: bool = False  # the operation is only defined for b != 0
    binomial_noise: bool = False  # labels get task.noise added before the mod
    n_elements: Callable[[Any], int] = _modulus  # m, the operands and labels: p for Z_p, n! for S_n
    sequence: bool = False  # written out character by character: grok/sequences.py
    # make_dataset's peak memory over that of the tensors it returns, with the train/test copies
    # grok/run.py makes of them: measured (peak resident memory) at 0.5-9 million examples, ~10% to spare.
    peak: float = 3


def _permutation_task(word: Callable[[Tensor, Tensor], Tensor]) -> Task:
    """A task on S_n (task.n): the label is the element word(a, b), computed on permutation arrays."""

    def label(a: Tensor, b: Tensor, task_cfg, data_seed: int) -> Tensor:
        perms = elements(task_cfg.n)
        return index(word(perms[a], perms[b]))

    # peak: the Lehmer code compares every pair of positions, (N, n, n); measured at n = 6
    return Task(label, n_elements=lambda task_cfg: math.factorial(task_cfg.n), peak=15)


TASKS: Dict[str, Task] = {
    "add": Task(lambda a, b, t, s: (a + b) % t.p),
    "subtract": Task(lambda a, b, t, s: (a - b) % t.p),
    "multiply": Task(lambda a, b, t, s: a * b % t.p),
    "divide": Task(_divide, needs_prime=True, nonzero_b=True),
    "x2xyy2": Task(lambda a, b, t, s: (a * a + a * b + b * b) % t.p),
    "random": Task(_random_table),
    "noisy_label": Task(lambda a, b, t, s: (a + b) % t.p, binomial_noise=True),
    # The rest of Power et al. (2022)'s operations, x = a and y = b.
    "x2y2": Task(lambda a, b, t, s: (a**2 + b**2) % t.p),
    "x2xyy2x": Task(lambda a, b, t, s: (a**2 + a * b + b**2 + a) % t.p),
    "x3xy": Task(lambda a, b, t, s: (a**3 + a * b) % t.p),
    "x3xy2y": Task(lambda a, b, t, s: (a**3 + a * b**2 + b) % t.p),
    "a2b": Task(lambda a, b, t, s: (a**2 + b) % t.p),
    "a3b": Task(lambda a, b, t, s: (a**3 + b) % t.p),
    "mix": Task(_mix, needs_prime=True, nonzero_b=True),
    "add_or_mul": Task(lambda a, b, t, s: torch.where(a % 2 == 0, a + b, a * b) % t.p),
    "add_or_sub": Task(lambda a, b, t, s: torch.where(a % 2 == 0, a + b, a - b) % t.p),
    "s5": _permutation_task(lambda a, b: compose(a, b)),
    "s5conj": _permutation_task(lambda a, b: compose(compose(a, b), inverse(a))),
    "s5aba": _permutation_task(lambda a, b: compose(compose(a, b), a)),
    "expr": Task(_expression, peak=8),  # Python integers, ~36 bytes each; more where values grow large
    "digit_add": Task(None, sequence=True, peak=3.5),  # each problem's text as a Python string first
    "calculator": Task(None, sequence=True, peak=3.5),
}


@dataclass
class Dataset:
    inputs: Tensor  # (N, 3) int64 tokens [a, b, =]; sequence tasks: (N, T) characters
    labels: Tensor  # (N,) int64, the labels trained and tested on; sequence tasks: (N, T) next tokens
    clean_labels: Optional[Tensor]  # (N,) noiseless labels, for noisy tasks only
    train_idx: Tensor  # indices into inputs
    test_idx: Tensor
    n_vocab: int  # input tokens: the m elements and '=' (sequence tasks: sequences.VOCAB)
    n_classes: int  # output classes: the m elements (sequence tasks: sequences.VOCAB)


def binomial_noise(n: int, size: int, data_seed: int) -> Tensor:
    """Binomial(n, 1/2) - n//2: symmetric around 0 for even n (seed 004 uses n = 4)."""
    return torch.from_numpy(_rng(data_seed, NOISE_STREAM).binomial(n, 0.5, size=size) - n // 2)


def uniform_label_noise(labels: Tensor, train_idx: Tensor, frac: float, n_classes: int, data_seed: int) -> Tensor:
    """openai/grok's `_noisy` model: round(frac * n_train) training labels, chosen at random, are
    replaced by labels drawn uniformly from the n_classes (which may by chance be the true one)."""
    rng = _rng(data_seed, LABEL_NOISE_STREAM)
    chosen = torch.from_numpy(rng.choice(train_idx.numpy(), size=round(frac * len(train_idx)), replace=False))
    noisy = labels.clone()
    noisy[chosen] = torch.from_numpy(rng.integers(0, n_classes, size=len(chosen)))
    return noisy


def _split(n: int, train_frac: float, data_seed: int, name: str, split_hash: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """A random train_frac of the n examples; with split_hash (in [0, 1)), those below train_frac."""
    if split_hash is None:
        order = torch.from_numpy(_rng(data_seed, SPLIT_STREAM).permutation(n))
        train_idx, test_idx = order[: int(train_frac * n)], order[int(train_frac * n) :]
    else:
        train_idx, test_idx = (split_hash < train_frac).nonzero()[:, 0], (split_hash >= train_frac).nonzero()[:, 0]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ConfigError(f"train_frac={train_frac}: leaves an empty train or test set of the {n} examples of task={name}")
    return train_idx, test_idx


def make_dataset(task_cfg, train_frac: float, data_seed: int) -> Dataset:
    task = TASKS[task_cfg.name]
    if task.sequence:
        inputs, labels, split_hash = make_problems(task_cfg, _rng(data_seed, PROBLEM_STREAM))
        train_idx, test_idx = _split(len(inputs), train_frac, data_seed, task_cfg.name, split_hash)
        return Dataset(inputs, labels, None, train_idx, test_idx, len(VOCAB), len(VOCAB))

    m = task.n_elements(task_cfg)
    a, b = torch.cartesian_prod(torch.arange(m), torch.arange(m)).unbind(1)
    if task.nonzero_b:
        a, b = a[b != 0], b[b != 0]
    labels = task.label(a, b, task_cfg, data_seed)
    if (labels == UNDEFINED).any():
        a, b, labels = a[labels != UNDEFINED], b[labels != UNDEFINED], labels[labels != UNDEFINED]
    inputs = torch.stack([a, b, torch.full_like(a, m)], dim=1)

    clean_labels = None
    if task.binomial_noise:
        clean_labels = labels
        labels = (labels + binomial_noise(task_cfg.noise, len(labels), data_seed)) % m
    train_idx, test_idx = _split(len(inputs), train_frac, data_seed, task_cfg.name)
    if "label_noise_frac" in task_cfg and task_cfg.label_noise_frac > 0:
        clean_labels = labels if clean_labels is None else clean_labels
        labels = uniform_label_noise(labels, train_idx, task_cfg.label_noise_frac, m, data_seed)
    return Dataset(inputs, labels, clean_labels, train_idx, test_idx, m + 1, m)
