"""The training loop: full-batch (or minibatch) steps, evaluation, grokking detection, early stop.

An epoch's train metrics come from that epoch's own forward pass(es), before the update, and its test
metrics from the weights after it (seeds 003/004 record them the same way). The loss is a float64
cross-entropy: in float32, log_softmax of confident logits rounds to multiples of ~1.2e-7, which
gives loss spikes and bad gradients late in training (seed 001).
"""

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEMORIZED, GROKKED = 0.99, 0.99  # accuracy thresholds for memorize_epoch and grok_epoch


def cross_entropy_f64(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.to(torch.float64), labels)


@dataclass
class Split:
    inputs: Tensor  # (N, T)
    labels: Tensor  # (N,)
    clean_labels: Optional[Tensor] = None  # (N,), noisy tasks only


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must carry besides weights and optimizer."""

    epoch: int = 0
    memorize_epoch: Optional[int] = None
    grok_epoch: Optional[int] = None
    stop_streak: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    wandb_run_id: Optional[str] = None

    def update(self, row: Dict[str, float], stop_cfg) -> None:
        """Record memorization/grokking; count evaluations in a row that meet the stop threshold."""
        test_acc = row.get("test_acc_clean", row["test_acc"])  # noisy tasks grok on clean labels
        if self.memorize_epoch is None and row["train_acc"] >= MEMORIZED:
            self.memorize_epoch = row["epoch"]
        if self.grok_epoch is None and test_acc >= GROKKED:
            self.grok_epoch = row["epoch"]
        hit = (stop_cfg.test_acc is not None and test_acc >= stop_cfg.test_acc) or (
            stop_cfg.test_loss is not None and row["test_loss"] < stop_cfg.test_loss
        )
        self.stop_streak = self.stop_streak + 1 if hit else 0
        self.stopped_early = hit and self.stop_streak >= stop_cfg.patience


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == labels).to(torch.float64).mean()


def train_epoch(model: nn.Module, split: Split, optimizer, scheduler, batch_size: Optional[int], generator) -> Dict[str, Tensor]:
    """One pass over the train split; returns loss and accuracies averaged over its examples."""
    model.train()
    n = len(split.labels)
    order = None if batch_size is None or batch_size >= n else torch.randperm(n, generator=generator)
    batches = [slice(None)] if order is None else order.to(split.labels.device).split(batch_size)
    totals: Dict[str, Tensor] = {}
    for batch in batches:
        inputs, labels = split.inputs[batch], split.labels[batch]
        logits = model(inputs)
        loss = cross_entropy_f64(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        weight = len(labels) / n
        metrics = {"loss": loss.detach(), "acc": _accuracy(logits.detach(), labels)}
        if split.clean_labels is not None:
            metrics["acc_clean"] = _accuracy(logits.detach(), split.clean_labels[batch])
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0) + weight * value
    return totals


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split) -> Dict[str, Tensor]:
    model.eval()
    logits = model(split.inputs)
    metrics = {"loss": cross_entropy_f64(logits, split.labels), "acc": _accuracy(logits, split.labels)}
    if split.clean_labels is not None:
        metrics["acc_clean"] = _accuracy(logits, split.clean_labels)
    return metrics


def weight_norm(model: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in model.parameters()])).item()


def train_loop(cfg, model, optimizer, scheduler, train: Split, test: Split, state: TrainState, generator,
               log_epoch: Callable[[Dict], None], save: Callable[[], None]) -> None:
    """Train from state.epoch + 1 to cfg.epochs, or to the early stop; `save` writes a checkpoint."""
    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs, initial=state.epoch, disable=not cfg.progress, unit="epoch", dynamic_ncols=True)
    last_postfix = 0.0
    tick = time.perf_counter()
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            train_metrics = train_epoch(model, train, optimizer, scheduler, cfg.batch_size, generator)
            state.epoch = epoch
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                test_metrics = evaluate(model, test)
                row = {"epoch": epoch}
                row.update({f"train_{key}": value.item() for key, value in train_metrics.items()})
                row.update({f"test_{key}": value.item() for key, value in test_metrics.items()})
                row.update(lr=lr, weight_norm=weight_norm(model))
                log_epoch(row)
                if not math.isfinite(row["train_loss"]):
                    raise FloatingPointError(f"training diverged at epoch {epoch}: train_loss={row['train_loss']}")
                state.update(row, cfg.stop)
                if time.perf_counter() - last_postfix > 0.5:
                    last_postfix = time.perf_counter()
                    bar.set_postfix(train_loss=f"{row['train_loss']:.3g}", train_acc=f"{row['train_acc']:.3f}",
                                    test_loss=f"{row['test_loss']:.3g}", test_acc=f"{row['test_acc']:.3f}", refresh=False)
            bar.update()
            if epoch % cfg.save_every == 0 or state.stopped_early:
                now = time.perf_counter()
                state.train_seconds += now - tick
                tick = now
                save()
            if state.stopped_early:
                break
    finally:
        state.train_seconds += time.perf_counter() - tick
        bar.close()
