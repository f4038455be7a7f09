"""The symmetric group S_n for the permutation tasks (s5, s5conj, s5aba of Power et al. 2022).

Element k is the k-th tuple of `itertools.permutations(range(n))`, which is lexicographic order, so
element 0 is the identity; a permutation is stored as the tuple (a(0), ..., a(n-1)). Composition
(a∘b)(i) = a(b(i)): b acts first. Arrays of permutations have shape (N, n).
"""

import itertools
import math

import torch
from torch import Tensor


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
