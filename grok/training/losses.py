"""Losses, computed in float64 by default (in float32, confident logits round the loss to 0; seed 001).

- `cross_entropy`: log-softmax cross-entropy, the default.
- `cross_entropy32`: the same in float32, as most training code computes it: there, confident logits
  round the loss of a right answer to exactly 0 and its gradient with it (softmax collapse, Prieto et
  al. 2025), which the float64 default postpones.
- `stablemax` (Prieto et al. 2025): softmax's exp replaced by s(x) = x + 1 for x >= 0 and
  1 / (1 - x) below, which grows linearly instead of exponentially and so delays softmax collapse.
Each takes logits (..., C) and labels (...): one label per example, or per position for sequence
tasks, where positions labelled IGNORE are not scored. They average over the scored labels. Each is
a plug-in named by `loss._target_` (conf/loss/); a loss of your own is one such function.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from grok.data import IGNORE


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    flat = logits.reshape(-1, logits.shape[-1]).to(torch.float64)
    return F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE)


def cross_entropy32(logits: Tensor, labels: Tensor) -> Tensor:
    flat = logits.reshape(-1, logits.shape[-1]).to(torch.float32)
    return F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE)


def stablemax(logits: Tensor) -> Tensor:
    x = logits.to(torch.float64)
    s = torch.where(x >= 0, x + 1, 1 / (1 - x.clamp(max=0)))  # the clamp keeps the unused branch finite
    return s / s.sum(dim=-1, keepdim=True)


def stablemax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    # a mask, not boolean indexing: torch.vmap (grok/sweeps/batched.py) needs shapes that do not depend on values
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    kept = labels != IGNORE
    picked = stablemax(logits).gather(-1, labels.clamp(min=0)[:, None])[:, 0]
    return -torch.where(kept, picked.log(), 0).sum() / kept.sum()
