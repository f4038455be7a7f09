"""Binary operations: every pair (a, b) of the m elements, its label, and the train/test split.

Inputs are token sequences [a, b, =] with the '=' token numbered m. Each task below is one plug-in
entry, named by its config's `_target_` (conf/task/add.yaml: `_target_: grok.data.tasks.add`); a
new operation on Z_p is one `BinaryOperation(label)` and one yaml, here or in your own module. The
operations on S_n are in grok/data/permutations.py, the sequence tasks in grok/data/sequences.py.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from omegaconf import MISSING
from torch import Tensor

from grok.data import LABEL_NOISE_STREAM, NOISE_STREAM, TABLE_STREAM, Dataset, DataSize, rng, split
from grok.data.expr import evaluate_expr, parse_expr
from grok.errors import ConfigError

UNDEFINED = -1  # a label function's mark for a pair where the operation is undefined (left out)

LabelFn = Callable[[Tensor, Tensor, Any, int], Tensor]  # (a, b, task config, data_seed) -> labels


@dataclass
class ModularConfig:
    """A binary operation on Z_p; inputs [a, b, =], label in Z_p."""

    name: str = MISSING
    p: int = 97
    label_noise_frac: float = 0.0  # this fraction of the training labels replaced by uniform ones


@dataclass
class NoisyLabelConfig(ModularConfig):
    """(a + b) mod p with Binomial(noise, 1/2) - noise/2 added to the label before the mod."""

    noise: int = 4


@dataclass
class ExprConfig(ModularConfig):
    """A formula in x, y and p (grok/data/expr.py), taken mod p; pairs where it divides by 0 are left out."""

    expr: str = "(x**2 + 3*x*y) % p"


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class BinaryOperation:
    """A binary operation on Z_p (`task.p`): `label(a, b, cfg, data_seed)` gives the labels of the
    pairs (a, b) (int64 tensors of every pair), UNDEFINED where the operation is undefined."""

    label: LabelFn
    Config: type = ModularConfig
    needs_prime: bool = False
    nonzero_b: bool = False  # the operation is only defined for b != 0
    binomial_noise: bool = False  # labels get task.noise added before the mod
    fourier_sign: Optional[int] = None  # label (a + sign*b) mod p (grok/recording/analysis.py)
    extra_check: Optional[Callable[[Any], None]] = None  # the checks of the Config's own keys
    # make's peak memory over that of the tensors it returns, with the train/test copies grok/run.py
    # makes of them: measured (peak resident memory) at 0.5-9 million examples, ~10% to spare.
    peak: float = 3
    sequences = False

    def n_elements(self, cfg) -> int:
        """m, the operands and labels."""
        return cfg.p

    def labels(self, a: Tensor, b: Tensor, cfg, data_seed: int) -> Tensor:
        return self.label(a, b, cfg, data_seed)

    def size_key(self, cfg) -> Tuple[str, int]:
        return "p", 2

    def check(self, cfg) -> None:
        key, smallest = self.size_key(cfg)
        _require(cfg[key] >= smallest, f"task.{key}={cfg[key]}: must be >= {smallest}")
        if self.needs_prime:
            _require(is_prime(cfg.p), f"task.p={cfg.p}: task={cfg.name} needs a prime p")
        _require(0 <= cfg.label_noise_frac < 1, f"task.label_noise_frac={cfg.label_noise_frac}: must be in [0, 1)")
        if self.extra_check is not None:
            self.extra_check(cfg)

    def size(self, cfg) -> DataSize:
        m = self.n_elements(cfg)
        noisy = self.binomial_noise or cfg.label_noise_frac > 0
        return DataSize(m * (m - 1 if self.nonzero_b else m), 3, 1, m, noisy, self.peak)

    def make(self, cfg, train_frac: float, data_seed: int) -> Dataset:
        m = self.n_elements(cfg)
        a, b = torch.cartesian_prod(torch.arange(m), torch.arange(m)).unbind(1)
        if self.nonzero_b:
            a, b = a[b != 0], b[b != 0]
        labels = self.labels(a, b, cfg, data_seed)
        if (labels == UNDEFINED).any():
            a, b, labels = a[labels != UNDEFINED], b[labels != UNDEFINED], labels[labels != UNDEFINED]
        inputs = torch.stack([a, b, torch.full_like(a, m)], dim=1)

        clean_labels = None
        if self.binomial_noise:
            clean_labels = labels
            labels = (labels + binomial_noise(cfg.noise, len(labels), data_seed)) % m
        train_idx, test_idx = split(len(inputs), train_frac, data_seed, cfg.name)
        if cfg.label_noise_frac > 0:
            clean_labels = labels if clean_labels is None else clean_labels
            labels = uniform_label_noise(labels, train_idx, cfg.label_noise_frac, m, data_seed)
        return Dataset(inputs, labels, clean_labels, train_idx, test_idx, m + 1, m)


def binomial_noise(n: int, size: int, data_seed: int) -> Tensor:
    """Binomial(n, 1/2) - n//2: symmetric around 0 for even n (seed 004 uses n = 4)."""
    return torch.from_numpy(rng(data_seed, NOISE_STREAM).binomial(n, 0.5, size=size) - n // 2)


def uniform_label_noise(labels: Tensor, train_idx: Tensor, frac: float, n_classes: int, data_seed: int) -> Tensor:
    """openai/grok's `_noisy` model: round(frac * n_train) training labels, chosen at random, are
    replaced by labels drawn uniformly from the n_classes (which may by chance be the true one)."""
    generator = rng(data_seed, LABEL_NOISE_STREAM)
    chosen = torch.from_numpy(generator.choice(train_idx.numpy(), size=round(frac * len(train_idx)), replace=False))
    noisy = labels.clone()
    noisy[chosen] = torch.from_numpy(generator.integers(0, n_classes, size=len(chosen)))
    return noisy


def _divide(a: Tensor, b: Tensor, cfg, data_seed: int) -> Tensor:
    p = cfg.p  # read once: a config lookup costs ~20 µs
    reciprocal = torch.tensor([0] + [pow(k, -1, p) for k in range(1, p)])
    return a * reciprocal[b] % p


def _random_table(a: Tensor, b: Tensor, cfg, data_seed: int) -> Tensor:
    table = torch.from_numpy(rng(data_seed, TABLE_STREAM).integers(0, cfg.p, size=(cfg.p, cfg.p)))
    return table[a, b]


def _mix(a: Tensor, b: Tensor, cfg, data_seed: int) -> Tensor:
    """openai/grok's mix1: a/b when b is odd, else a-b."""
    return torch.where(b % 2 == 1, _divide(a, b, cfg, data_seed), (a - b) % cfg.p)


def _expression(a: Tensor, b: Tensor, cfg, data_seed: int) -> Tensor:
    values, defined = evaluate_expr(cfg.expr, a.numpy(), b.numpy(), cfg.p)
    return torch.from_numpy(np.where(defined, values, UNDEFINED))


def _check_noise(cfg) -> None:
    _require(cfg.noise >= 0, f"task.noise={cfg.noise}: must be >= 0")


add = BinaryOperation(lambda a, b, cfg, s: (a + b) % cfg.p, fourier_sign=1)
subtract = BinaryOperation(lambda a, b, cfg, s: (a - b) % cfg.p, fourier_sign=-1)
multiply = BinaryOperation(lambda a, b, cfg, s: a * b % cfg.p)
divide = BinaryOperation(_divide, needs_prime=True, nonzero_b=True)
x2xyy2 = BinaryOperation(lambda a, b, cfg, s: (a * a + a * b + b * b) % cfg.p)
random = BinaryOperation(_random_table)
noisy_label = BinaryOperation(
    lambda a, b, cfg, s: (a + b) % cfg.p,
    NoisyLabelConfig,
    binomial_noise=True,
    fourier_sign=1,
    extra_check=_check_noise,
)
# The rest of Power et al. (2022)'s operations, x = a and y = b.
x2y2 = BinaryOperation(lambda a, b, cfg, s: (a**2 + b**2) % cfg.p)
x2xyy2x = BinaryOperation(lambda a, b, cfg, s: (a**2 + a * b + b**2 + a) % cfg.p)
x3xy = BinaryOperation(lambda a, b, cfg, s: (a**3 + a * b) % cfg.p)
x3xy2y = BinaryOperation(lambda a, b, cfg, s: (a**3 + a * b**2 + b) % cfg.p)
a2b = BinaryOperation(lambda a, b, cfg, s: (a**2 + b) % cfg.p)
a3b = BinaryOperation(lambda a, b, cfg, s: (a**3 + b) % cfg.p)
mix = BinaryOperation(_mix, needs_prime=True, nonzero_b=True)
add_or_mul = BinaryOperation(lambda a, b, cfg, s: torch.where(a % 2 == 0, a + b, a * b) % cfg.p)
add_or_sub = BinaryOperation(lambda a, b, cfg, s: torch.where(a % 2 == 0, a + b, a - b) % cfg.p)
# Python integers, ~36 bytes each; more where values grow large
expr = BinaryOperation(_expression, ExprConfig, extra_check=lambda cfg: parse_expr(cfg.expr), peak=8)
