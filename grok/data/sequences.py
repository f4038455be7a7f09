"""Sequence tasks (seed 002): arithmetic written out character by character, learned as next-token
prediction, and `generate`, the greedy decoder that answers a typed problem.

A problem is the text `a+b=c.`: operands zero-padded to `task.digits` digits (so that a position
means one place value), the answer's digits reversed when `task.reverse` (the order in which
schoolbook addition produces them: 226+336=265.), and '.' closing the answer and padding every row
to one length. Each character is one token of VOCAB, shared by all sequence tasks so that
`generate` can read and write any of them; a digit's token is its value.

The model reads tokens[:-1] and is scored on predicting tokens[1:] at the answer's positions only
(its characters and the closing '.', which tells `generate` where to stop); positions that would
predict the problem or the padding carry the label IGNORE, so they add nothing to loss or accuracy.
An example counts as right only when its whole answer is.

`calculator` writes + - * and / (the floor division a // b) as operator tokens. Rules: a negative
result (only from -) is written '-' followed by its digits, the digits reversed with task.reverse
(03-17=-41. for -14); a/0 is undefined, so those problems are left out, as `divide` leaves out b = 0.

Data: every problem (10^(2·digits) operand pairs per operator) split by train_frac as in the
binary-operation tasks, or with `task.n_problems` that many problems drawn at random and split by a
hash of the problem, so a problem drawn twice never sits on both sides of the split.
"""

import operator
from collections import defaultdict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import MISSING
from torch import Tensor, nn

from grok.data import IGNORE, PROBLEM_STREAM, Dataset, DataSize, rng, split
from grok.errors import ConfigError

VOCAB = "0123456789+-*/=."
EQUALS, END = VOCAB.index("="), VOCAB.index(".")
MAX_LISTED = 10**6  # more problems than this must be sampled: set task.n_problems
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}

_TOKEN_OF_BYTE = np.full(256, -1, dtype=np.int64)
_TOKEN_OF_BYTE[np.frombuffer(VOCAB.encode("ascii"), dtype=np.uint8)] = np.arange(len(VOCAB))


def encode(texts: Sequence[str]) -> Tensor:
    """(N, L) tokens of texts that all have length L."""
    flat = _TOKEN_OF_BYTE[np.frombuffer("".join(texts).encode("ascii", errors="replace"), dtype=np.uint8)]
    if (flat < 0).any():
        bad = sorted({c for text in texts for c in text if c not in VOCAB})
        raise ValueError(f"characters {bad} are not tokens; the vocabulary is {VOCAB!r}")
    return torch.from_numpy(flat.reshape(len(texts), -1))


def decode(tokens: Tensor) -> str:
    return "".join(VOCAB[t] for t in tokens.tolist())


def problem_text(a: int, op: str, b: int, width: int, reverse: bool) -> str:
    c = OPERATIONS[op](a, b)
    digits = str(abs(c))[::-1] if reverse else str(abs(c))
    return f"{a:0{width}d}{op}{b:0{width}d}={'-' if c < 0 else ''}{digits}."


def count_problems(operators: str, digits: int) -> int:
    """How many distinct problems there are (a/0 excluded)."""
    base = 10**digits
    return len(operators) * base * base - ("/" in operators) * base


def input_length(operators: str, digits: int) -> int:
    """T, the tokens a row of inputs holds: the longest problem's text but its closing '.', read only
    as a label. Every listed problem set reaches it; a sample that misses the longest problems is
    narrower (make_problems pads to the longest it drew)."""
    largest = 10**digits - 1
    # |a op b| is largest at the corners: + and * at (largest, largest), - at (0, largest), / at b = 1
    return (
        max(len(problem_text(a, op, b, digits, False)) for op in operators for a in (0, largest) for b in (1, largest))
        - 1
    )


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that scrambles every bit (wraps on purpose)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_unit(op: np.ndarray, a: np.ndarray, b: np.ndarray, salt: int) -> Tensor:
    """A number in [0, 1) that depends on the problem (op, a, b) and the salt alone."""
    h = _mix64(np.full(len(a), salt, dtype=np.uint64) ^ op.astype(np.uint64))
    h = _mix64(h ^ a.astype(np.uint64))
    h = _mix64(h ^ b.astype(np.uint64))
    return torch.from_numpy((h >> np.uint64(11)).astype(np.float64) / 2.0**53)


def _operands(
    operators: str, task_cfg, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[Tensor]]:
    """(operator index, a, b, split hash or None) for every problem, or for n_problems drawn ones."""
    base = 10**task_cfg.digits
    divide = operators.find("/")
    if task_cfg.n_problems is None:
        op, a, b = (
            g.ravel() for g in np.meshgrid(np.arange(len(operators)), np.arange(base), np.arange(base), indexing="ij")
        )
        keep = (op != divide) | (b != 0)
        return op[keep], a[keep], b[keep], None
    n = task_cfg.n_problems
    op, a, b = rng.integers(0, len(operators), n), rng.integers(0, base, n), rng.integers(0, base, n)
    if divide >= 0:
        b = np.where(op == divide, rng.integers(1, base, n), b)  # a divisor is never 0
    return op, a, b, _hash_unit(op, a, b, int(rng.integers(0, 2**63)))


def make_problems(operators: str, task_cfg, rng: np.random.Generator) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(inputs (N, T), labels (N, T) with IGNORE off the answer, split hash (N,) or None)."""
    op, a, b, split_hash = _operands(operators, task_cfg, rng)
    digits, reverse = task_cfg.digits, task_cfg.reverse  # read once: a config lookup costs ~20 µs
    texts = [problem_text(x, operators[o], y, digits, reverse) for o, x, y in zip(op.tolist(), a.tolist(), b.tolist())]
    width = max(map(len, texts))
    tokens = encode([text.ljust(width, ".") for text in texts])  # (N, L)
    equals = (tokens == EQUALS).int().argmax(dim=1, keepdim=True)  # (N, 1)
    end = (tokens == END).int().argmax(dim=1, keepdim=True)  # the answer's closing '.'
    position = torch.arange(width - 1)[None, :]  # input position j predicts token j + 1
    labels = tokens[:, 1:].masked_fill((position < equals) | (position >= end), IGNORE)
    return tokens[:, :-1].contiguous(), labels, split_hash


@dataclass
class DigitConfig:
    """Arithmetic written out character by character; `digits` per operand."""

    name: str = MISSING
    digits: int = 2
    reverse: bool = True  # answer digits least significant first
    n_problems: Optional[int] = None  # None: every problem; a number: that many drawn, split by hash


@dataclass(frozen=True)
class SequenceTask:
    """A sequence task: problems `a op b` for each op of `operators`, one plug-in entry each."""

    operators: str
    Config = DigitConfig
    sequences = True
    needs_prime = False
    fourier_sign = None
    peak = 3.5  # each problem's text as a Python string first

    def check(self, cfg) -> None:
        if not 1 <= cfg.digits <= 18:
            raise ConfigError(f"task.digits={cfg.digits}: must be in 1..18")
        if cfg.n_problems is not None and cfg.n_problems < 2:
            raise ConfigError(f"task.n_problems={cfg.n_problems}: must be >= 2, or null for every problem")
        if cfg.n_problems is None and count_problems(self.operators, cfg.digits) > MAX_LISTED:
            raise ConfigError(
                f"task.n_problems=null: task={cfg.name} with digits={cfg.digits} has "
                f"{count_problems(self.operators, cfg.digits)} problems, more than {MAX_LISTED} "
                "to list; set task.n_problems to sample"
            )

    def size_key(self, cfg) -> Tuple[str, int]:
        return ("digits", 1) if cfg.n_problems is None else ("n_problems", 2)

    def size(self, cfg) -> DataSize:
        n = count_problems(self.operators, cfg.digits) if cfg.n_problems is None else cfg.n_problems
        width = input_length(self.operators, cfg.digits)
        return DataSize(n, width, width, len(VOCAB), False, self.peak)

    def make(self, cfg, train_frac: float, data_seed: int) -> Dataset:
        inputs, labels, split_hash = make_problems(self.operators, cfg, rng(data_seed, PROBLEM_STREAM))
        train_idx, test_idx = split(len(inputs), train_frac, data_seed, cfg.name, split_hash)
        return Dataset(inputs, labels, None, train_idx, test_idx, len(VOCAB), len(VOCAB))


digit_add = SequenceTask("+")
calculator = SequenceTask("+-*/")


def _context_length(model: nn.Module) -> int:
    """Learned positions end at the model's n_ctx; the gpt model records the length it trained on."""
    return model.W_pos.shape[0] if hasattr(model, "W_pos") else model.n_ctx


@torch.inference_mode()
def generate(model: nn.Module, prompts: Union[str, List[str]], max_new_tokens: Optional[int] = None):
    """Greedy decoding: extend each prompt ("226+336=") by its most likely next token until the model
    writes '.', and return what it wrote before that, as the task writes answers ("265", reversed).
    A list of prompts gives a list of answers; prompts of one length are decoded as one batch."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    device = next(model.parameters()).device
    answers: List[str] = [""] * len(texts)
    by_length = defaultdict(list)
    for i, text in enumerate(texts):
        by_length[len(text)].append(i)
    for length, rows in by_length.items():
        tokens = encode([texts[i] for i in rows]).to(device)  # (G, length)
        steps = _context_length(model) - length + 1
        for _ in range(steps if max_new_tokens is None else min(steps, max_new_tokens)):
            tokens = torch.cat([tokens, model(tokens).argmax(dim=-1, keepdim=True)], dim=1)
            if (tokens[:, length:] == END).any(dim=1).all():
                break
        for i, written in zip(rows, tokens[:, length:].cpu()):
            answers[i] = decode(written).split(".")[0]
    return answers[0] if isinstance(prompts, str) else answers
