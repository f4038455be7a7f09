"""What an epoch measures of a split: loss and accuracy (and on the clean labels, for noisy tasks),
for a run alone or for K stacked runs (grok/training/stacked.py)."""

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from grok.data import IGNORE

if TYPE_CHECKING:  # splits are the experiment's
    from grok.training.experiment import Split

EVAL_TOKENS = 2**17  # evaluate in chunks of about this many tokens, so large test sets fit in memory


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


def predict(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    """The logits the labels score: the last position's (B, C), or every position's (B, T, C)."""
    return model(inputs, all_positions=labels.dim() == 2)


def measure_split(model: nn.Module, split: "Split", loss_fn: Callable) -> Dict[str, Tensor]:
    """Loss and accuracies over the split, in chunks of EVAL_TOKENS weighted by their examples; the
    caller chooses the model's mode and whether gradients are recorded."""
    n, chunk = len(split.labels), max(1, EVAL_TOKENS // split.inputs.shape[1])
    totals: Dict[str, Tensor] = {}
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        labels = split.labels[part]
        logits = predict(model, split.inputs[part], labels)
        clean = None if split.clean_labels is None else split.clean_labels[part]
        metrics = split_metrics(loss_fn(logits, labels), logits, labels, clean, labels.dim() == 2)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0) + len(labels) / n * value
    return totals


def row_names(train_metrics: Dict[str, Tensor], test_metrics: Dict[str, Tensor]) -> List[str]:
    return [f"train_{key}" for key in train_metrics] + [f"test_{key}" for key in test_metrics] + ["weight_norm"]


def measured(
    train_metrics: Dict[str, Tensor], test_metrics: Dict[str, Tensor], weight_norms: Tensor
) -> Tuple[List[str], Tensor]:
    """One evaluated epoch of K runs (each value (K,); a number for a run alone): its row names and
    its metrics as one (K, M) float64 tensor, on the device, in their order. The tensor comes to the
    host with the block's other epochs, in one transfer (on a GPU each transfer waits for the work
    queued before it)."""
    values = [*train_metrics.values(), *test_metrics.values(), weight_norms]
    return row_names(train_metrics, test_metrics), torch.stack([v.double() for v in values], -1).view(-1, len(values))
