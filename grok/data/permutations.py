"""The symmetric group S_n and its binary-operation tasks (s5, s5conj, s5aba of Power et al. 2022).

Element k is the k-th tuple of `itertools.permutations(range(n))`, which is lexicographic order, so
element 0 is the identity; a permutation is stored as the tuple (a(0), ..., a(n-1)). Composition
(a∘b)(i) = a(b(i)): b acts first. Arrays of permutations have shape (N, n).
"""

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from omegaconf import MISSING
from torch import Tensor

from grok.data.tasks import BinaryOperation
from grok.errors import ConfigError


def elements(n: int) -> Tensor:
    """(n!, n): every permutation of range(n), in the token order."""
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int64)


def index(perms: Tensor) -> Tensor:
    """(N, n) -> (N,) token numbers: the lexicographic rank, read off the Lehmer code."""
    n = perms.shape[1]
    later = torch.ones(n, n, dtype=torch.bool).triu(1)  # later[i, j]: position j comes after i
    smaller_later = ((perms[:, None, :] < perms[:, :, None]) & later).sum(dim=2)  # (N, n)
    place_values = torch.tensor([math.factorial(n - 1 - i) for i in range(n)])
    return smaller_later @ place_values


def compose(a: Tensor, b: Tensor) -> Tensor:
    """(a∘b)(i) = a(b(i)) for each row."""
    return a.gather(1, b)


def inverse(a: Tensor) -> Tensor:
    return a.argsort(dim=1)


@dataclass
class PermutationConfig:
    """A binary operation on S_n: n! elements, token k the k-th of itertools.permutations(range(n))."""

    name: str = MISSING
    n: int = 5
    label_noise_frac: float = 0.0


@dataclass(frozen=True)
class PermutationOperation(BinaryOperation):
    """A task on S_n (`task.n`): the label of (a, b) is the element word(a, b), computed on the
    permutations' arrays. Building it compares every pair of positions (the Lehmer code, (N, n, n)):
    its peak memory, measured at n = 6, is larger."""

    label: Callable = None  # unused: the label comes from `word`
    word: Callable[[Tensor, Tensor], Tensor] = None
    Config: type = PermutationConfig
    peak: float = 15

    def n_elements(self, cfg) -> int:
        return math.factorial(cfg.n)

    def size_key(self, cfg) -> Tuple[str, int]:
        return "n", 2

    def check(self, cfg) -> None:
        if not 2 <= cfg.n <= 6:
            raise ConfigError(f"task.n={cfg.n}: must be in 2..6 (S_n has n! elements, (n!)^2 pairs)")
        super().check(cfg)

    def labels(self, a: Tensor, b: Tensor, cfg, data_seed: int) -> Tensor:
        perms = elements(cfg.n)
        return index(self.word(perms[a], perms[b]))


s5 = PermutationOperation(word=lambda a, b: compose(a, b))
s5conj = PermutationOperation(word=lambda a, b: compose(compose(a, b), inverse(a)))
s5aba = PermutationOperation(word=lambda a, b: compose(compose(a, b), a))
