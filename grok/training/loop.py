"""The training loop: full-batch (or minibatch) steps, evaluation, grokking detection, early stop.

An epoch's train metrics come from that epoch's own forward pass(es), before the update, and its test
metrics from the weights after it (seeds 003/004 record them the same way). The loss (grok/losses.py,
`loss=cross_entropy|stablemax`) is computed in float64. Every `analysis.every` evaluated epochs the
progress measures of grok/analysis.py are taken on the train set.

Binary-operation tasks have one label per example, scored on the last position's logits. Sequence
tasks (grok/sequences.py) have a label per position, IGNORE where nothing is scored: the loss is the
mean over the scored positions, and an example is right only when all of its scored positions are.
"""

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from grok.recording.analysis import progress_measures
from grok.training.losses import IGNORE, LOSSES, cross_entropy
from grok.system.speed import for_training
from grok.system.threads import AdaptiveThreads, explicit_threads

MEMORIZED, GROKKED = 0.99, 0.99  # accuracy thresholds for memorize_epoch and grok_epoch
EVAL_TOKENS = 2**17  # evaluate in chunks of about this many tokens, so large test sets fit in memory


def predict(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    """The logits the labels score: the last position's (B, C), or every position's (B, T, C)."""
    return model(inputs, all_positions=labels.dim() == 2)


@dataclass
class Split:
    inputs: Tensor  # (N, T)
    labels: Tensor  # (N,), or (N, T) for sequence tasks
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


def correct(logits: Tensor, labels: Tensor, sequences: bool) -> Tensor:
    """Per example: whether its prediction is right; a sequence is right when every scored position is."""
    right = logits.argmax(dim=-1) == labels
    return (right | (labels == IGNORE)).all(dim=-1) if sequences else right


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return correct(logits, labels, labels.dim() == 2).to(torch.float64).mean()


def _metrics(loss: Tensor, logits: Tensor, labels: Tensor, clean_labels: Optional[Tensor]) -> Dict[str, Tensor]:
    metrics = {"loss": loss, "acc": _accuracy(logits, labels)}
    if clean_labels is not None:
        metrics["acc_clean"] = _accuracy(logits, clean_labels)
    return metrics


def train_epoch(model: nn.Module, split: Split, optimizer, scheduler, batch_size: Optional[int], generator,
                loss_fn: Callable = cross_entropy) -> Dict[str, Tensor]:
    """One pass over the train split; returns loss and accuracies averaged over its examples."""
    model.train()
    n = len(split.labels)
    order = None if batch_size is None or batch_size >= n else torch.randperm(n, generator=generator)
    batches = [slice(None)] if order is None else order.to(split.labels.device).split(batch_size)
    totals: Dict[str, Tensor] = {}
    for batch in batches:
        inputs, labels = split.inputs[batch], split.labels[batch]
        logits = predict(model, inputs, labels)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        weight = len(labels) / n
        clean = None if split.clean_labels is None else split.clean_labels[batch]
        metrics = _metrics(loss.detach(), logits.detach(), labels, clean)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0) + weight * value
    return totals


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, loss_fn: Callable = cross_entropy) -> Dict[str, Tensor]:
    """Loss and accuracies over the split, in chunks of EVAL_TOKENS weighted by their examples."""
    model.eval()
    n, chunk = len(split.labels), max(1, EVAL_TOKENS // split.inputs.shape[1])
    totals: Dict[str, Tensor] = {}
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        labels = split.labels[part]
        logits = predict(model, split.inputs[part], labels)
        clean = None if split.clean_labels is None else split.clean_labels[part]
        metrics = _metrics(loss_fn(logits, labels), logits, labels, clean)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0) + len(labels) / n * value
    return totals


def weight_norm(model: nn.Module) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in model.parameters()]))


def evaluation_due(cfg, epoch: int) -> bool:
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def epoch_rows(train_metrics: List[Dict[str, Tensor]], test_metrics: List[Dict[str, Tensor]],
               weight_norms: Tensor) -> List[Dict[str, float]]:
    """The metrics of one epoch of K runs (K = 1 but in a batch, grok/batched.py) as K rows of numbers:
    train_*, test_*, weight_norm. One transfer from the device for all: on a GPU each .item() waits."""
    names = [f"train_{key}" for key in train_metrics[0]] + [f"test_{key}" for key in test_metrics[0]] + ["weight_norm"]
    values = torch.stack([torch.stack([value.double() for value in [*train.values(), *test.values()]])
                          for train, test in zip(train_metrics, test_metrics)])
    return [dict(zip(names, row)) for row in torch.cat([values, weight_norms.double()[:, None]], dim=1).tolist()]


class Diverged(FloatingPointError):
    """A loss that is no longer a finite number; the message is one line for the user."""


def check_finite(row: Dict[str, float]) -> None:
    bad = {key: value for key, value in row.items() if key.endswith("_loss") and not math.isfinite(value)}
    if bad:
        losses = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise Diverged(f"training diverged at epoch {row['epoch']}: {losses} (a lower optimizer.lr may help)")


def close_epoch(run, epoch: int, lr: float, seconds: float, values: Optional[Dict[str, float]],
                stop) -> Optional[Dict[str, float]]:
    """Everything after an epoch's step and test pass, for one run (grok/run.py's Experiment): its row
    (`values` from epoch_rows; None when the epoch was not evaluated) and progress measures to the
    loggers, grokking detection, checkpoint, early stop, a stop requested by a signal (`stop`, a
    grok.system.signals.StopRequest). Returns the logged row; raises Diverged when a loss is not finite."""
    cfg, state = run.cfg, run.state
    state.epoch, row = epoch, None
    state.train_seconds += seconds
    if values is not None:
        norm = values["weight_norm"]
        row = {"epoch": epoch, **{key: value for key, value in values.items() if key != "weight_norm"},
               "lr": lr, "weight_norm": norm}
        measures = {}
        binary = run.train.labels.dim() == 1  # the measures are for binary operations
        if cfg.analysis.name != "none" and binary and epoch % cfg.analysis.every == 0:
            measures = progress_measures(run.model, cfg.task.name, cfg.task.get("p"), run.train.inputs,
                                         run.train.labels, cfg.analysis.n_key_freqs)
        run.loggers.log_epoch(row, measures)
        check_finite(row)
        state.update(row, cfg.stop)
    if epoch % cfg.save_every == 0 or state.stopped_early or stop.requested:
        run.save()
    if stop.requested:
        raise stop.stopped(epoch)
    return row


def train_loop(run, stop) -> None:
    """Train `run` (grok/run.py's Experiment) from state.epoch + 1 to cfg.epochs, or to the early stop.
    When `stop.requested` turns true (grok/signals.py), the loop checkpoints the epoch it finished and
    raises grok.system.signals.Interrupted."""
    from tqdm import tqdm

    cfg, state = run.cfg, run.state
    bar = tqdm(total=cfg.epochs, initial=state.epoch, disable=not cfg.progress, unit="epoch", dynamic_ncols=True)
    last_postfix = 0.0
    loss_fn = LOSSES[cfg.loss.name]
    trained = for_training(run.model, cfg.compile, next(run.model.parameters()).device)  # compiled where it pays
    threads = AdaptiveThreads(explicit_threads(cfg))  # fewer while other processes hold CPUs (grok/threads.py)
    tick = time.perf_counter()
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            lr = run.optimizer.param_groups[0]["lr"]
            train_metrics = train_epoch(trained, run.train, run.optimizer, run.scheduler, cfg.batch_size,
                                        run.generator, loss_fn)
            values = None
            if evaluation_due(cfg, epoch):
                test_metrics = evaluate(trained, run.test, loss_fn)
                (values,) = epoch_rows([train_metrics], [test_metrics], weight_norm(run.model)[None])
            now = time.perf_counter()
            row = close_epoch(run, epoch, lr, now - tick, values, stop)
            tick = now
            if row is not None and time.perf_counter() - last_postfix > 0.5:
                last_postfix = time.perf_counter()
                bar.set_postfix(train_loss=f"{row['train_loss']:.3g}", train_acc=f"{row['train_acc']:.3f}",
                                test_loss=f"{row['test_loss']:.3g}", test_acc=f"{row['test_acc']:.3f}", refresh=False)
            bar.update()
            threads.update()
            if state.stopped_early:
                break
    finally:
        threads.restore()
        bar.close()
