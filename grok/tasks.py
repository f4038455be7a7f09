"""Task data: every (a, b) pair of a binary operation on Z_p, its label, and the train/test split.

Inputs are token sequences [a, b, =] with the '=' token numbered p. Everything random here (the
split, the `random` task's table, label noise) is drawn from `data_seed` alone, each from its own
stream, so changing the model seed never changes the data and vice versa.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from grok.config import ConfigError

# Independent random streams derived from data_seed.
SPLIT_STREAM, TABLE_STREAM, NOISE_STREAM = 0, 1, 2

LabelFn = Callable[[Tensor, Tensor, int, int], Tensor]  # (a, b, p, data_seed) -> labels


def _rng(data_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([data_seed, stream])


def _divide(a: Tensor, b: Tensor, p: int, data_seed: int) -> Tensor:
    inverse = torch.tensor([0] + [pow(k, -1, p) for k in range(1, p)])
    return a * inverse[b] % p


def _random_table(a: Tensor, b: Tensor, p: int, data_seed: int) -> Tensor:
    table = torch.from_numpy(_rng(data_seed, TABLE_STREAM).integers(0, p, size=(p, p)))
    return table[a, b]


@dataclass(frozen=True)
class Task:
    label: LabelFn
    needs_prime: bool = False
    nonzero_b: bool = False  # the operation is only defined for b != 0
    binomial_noise: bool = False  # labels get task.noise added before the mod


TASKS: Dict[str, Task] = {
    "add": Task(lambda a, b, p, s: (a + b) % p),
    "subtract": Task(lambda a, b, p, s: (a - b) % p),
    "multiply": Task(lambda a, b, p, s: a * b % p),
    "divide": Task(_divide, needs_prime=True, nonzero_b=True),
    "x2xyy2": Task(lambda a, b, p, s: (a * a + a * b + b * b) % p),
    "random": Task(_random_table),
    "noisy_label": Task(lambda a, b, p, s: (a + b) % p, binomial_noise=True),
}


@dataclass
class Dataset:
    inputs: Tensor  # (N, 3) int64 tokens [a, b, =]
    labels: Tensor  # (N,) int64, the labels trained and tested on
    clean_labels: Optional[Tensor]  # (N,) noiseless labels, for noisy tasks only
    train_idx: Tensor  # indices into inputs
    test_idx: Tensor
    n_vocab: int  # input tokens: 0..p-1 and '='
    n_classes: int  # output classes: Z_p


def binomial_noise(n: int, size: int, data_seed: int) -> Tensor:
    """Binomial(n, 1/2) - n//2: symmetric around 0 for even n (seed 004 uses n = 4)."""
    return torch.from_numpy(_rng(data_seed, NOISE_STREAM).binomial(n, 0.5, size=size) - n // 2)


def make_dataset(task_cfg, train_frac: float, data_seed: int) -> Dataset:
    task, p = TASKS[task_cfg.name], task_cfg.p
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    if task.nonzero_b:
        a, b = a[b != 0], b[b != 0]
    inputs = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = task.label(a, b, p, data_seed)

    clean_labels = None
    if task.binomial_noise:
        clean_labels = labels
        labels = (labels + binomial_noise(task_cfg.noise, len(labels), data_seed)) % p

    n_train = int(train_frac * len(inputs))
    if not 0 < n_train < len(inputs):
        raise ConfigError(
            f"train_frac={train_frac}: leaves an empty train or test set of the "
            f"{len(inputs)} examples of task={task_cfg.name} with p={p}"
        )
    order = torch.from_numpy(_rng(data_seed, SPLIT_STREAM).permutation(len(inputs)))
    return Dataset(inputs, labels, clean_labels, order[:n_train], order[n_train:], p + 1, p)
