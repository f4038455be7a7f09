"""Task data: the examples of a task, their labels and the train/test split.

A task is a plug-in (grok/plugins.py) named by `task._target_`: a binary operation on Z_p or S_n
(grok/data/tasks.py, grok/data/permutations.py) or arithmetic written out character by character
(grok/data/sequences.py). Every task provides what `Task` lists. Everything random here (the
split, the `random` task's table, label noise, sampled problems) is drawn from `data_seed` alone,
each from its own stream, so changing the model seed never changes the data and vice versa.

grok/training/memory.py checks, before make_dataset runs, that the data set and its training fit
in memory; it sizes them with each task's `size`.
"""

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Tuple

import numpy as np
import torch
from torch import Tensor

from grok.errors import ConfigError
from grok.plugins import plugin, typed

IGNORE = -100  # the label of a position that is not scored (torch's default ignore_index)
# Independent random streams derived from data_seed.
SPLIT_STREAM, TABLE_STREAM, NOISE_STREAM, LABEL_NOISE_STREAM, PROBLEM_STREAM = 0, 1, 2, 3, 4


@dataclass
class Dataset:
    inputs: Tensor  # (N, 3) int64 tokens [a, b, =]; sequence tasks: (N, T) characters
    labels: Tensor  # (N,) int64, the labels trained and tested on; sequence tasks: (N, T) next tokens
    clean_labels: Optional[Tensor]  # (N,) noiseless labels, for noisy tasks only
    train_idx: Tensor  # indices into inputs
    test_idx: Tensor
    n_vocab: int  # input tokens: the m elements and '=' (sequence tasks: sequences.VOCAB)
    n_classes: int  # output classes: the m elements (sequence tasks: sequences.VOCAB)


@dataclass(frozen=True)
class DataSize:
    """What a task's `make` will build for a config, computed from the config alone."""

    examples: int  # N; for expr every pair, those the formula leaves undefined included
    width: int  # T, input tokens per example
    scored: int  # logits per example: 1, or T for sequence tasks
    n_classes: int
    clean_labels: bool
    peak: float  # building the data takes this times the finished tensors' memory, at most

    def split_bytes(self) -> int:
        """The int64 inputs and labels (and clean labels) of every example: what the splits hold."""
        return 8 * self.examples * (self.width + self.scored + self.clean_labels)

    def tensor_bytes(self) -> int:
        """The Dataset's tensors: the splits' contents, and train_idx and test_idx (int64, one per example)."""
        return self.split_bytes() + 8 * self.examples

    def build_bytes(self) -> int:
        return int(self.peak * self.tensor_bytes())


class Task(Protocol):
    """What grok reads off a task plug-in (besides `Config` and `check`, grok/plugins.py)."""

    sequences: bool  # labels per position (N, T), scored where not IGNORE; else one label per example
    needs_prime: bool  # its size key must be a prime
    fourier_sign: Optional[int]  # label (a + sign*b) mod p: the progress measures' restricted loss applies

    def make(self, cfg: Any, train_frac: float, data_seed: int) -> Dataset: ...

    def size(self, cfg: Any) -> DataSize: ...

    def size_key(self, cfg: Any) -> Tuple[str, int]:
        """The key of cfg that sets how many examples there are, and its smallest allowed value."""
        ...


def make_dataset(task_cfg: Any, train_frac: float, data_seed: int) -> Dataset:
    """The task's examples; `task_cfg` is typed first (its schema's defaults filled in)."""
    task_cfg = typed(task_cfg, "task")
    return plugin(task_cfg, "task").make(task_cfg, train_frac, data_seed)


def rng(data_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([data_seed, stream])


def split(
    n: int, train_frac: float, data_seed: int, name: str, split_hash: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """A random train_frac of the n examples; with split_hash (in [0, 1)), those below train_frac."""
    if split_hash is None:
        order = torch.from_numpy(rng(data_seed, SPLIT_STREAM).permutation(n))
        train_idx, test_idx = order[: int(train_frac * n)], order[int(train_frac * n) :]
    else:
        train_idx, test_idx = (split_hash < train_frac).nonzero()[:, 0], (split_hash >= train_frac).nonzero()[:, 0]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ConfigError(
            f"train_frac={train_frac}: leaves an empty train or test set of the {n} examples of task={name}"
        )
    return train_idx, test_idx
