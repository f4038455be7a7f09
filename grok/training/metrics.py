"""What an epoch measures of a split: loss and accuracy (and on the clean labels, for noisy tasks),
for a run alone or for K stacked runs (grok/training/stacked.py)."""

from typing import Dict, Optional

import torch
from torch import Tensor

from grok.data import IGNORE


def correct(logits: Tensor, labels: Tensor, sequences: bool) -> Tensor:
    """Per example: whether its prediction is right; a sequence is right when every scored position is."""
    right = logits.argmax(dim=-1) == labels
    return (right | (labels == IGNORE)).all(dim=-1) if sequences else right


def split_metrics(
    loss: Tensor,
    logits: Tensor,
    labels: Tensor,
    clean_labels: Optional[Tensor],
    sequences: bool,
    real: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """Loss and accuracy, and for noisy tasks the accuracy on the clean labels. For K stacked runs
    (grok/training/stacked.py) each is (K,), and `real` (K, N) marks the examples that are not padding."""

    def accuracy(labels: Tensor) -> Tensor:
        right = correct(logits, labels, sequences)
        return right.to(torch.float64).mean(-1) if real is None else (right & real).sum(-1).double() / real.sum(-1)

    metrics = {"loss": loss, "acc": accuracy(labels)}
    if clean_labels is not None:
        metrics["acc_clean"] = accuracy(clean_labels)
    return metrics
