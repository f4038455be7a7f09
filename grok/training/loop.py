"""The training loop: one loop for K >= 1 runs, full-batch (or minibatch) steps, evaluation,
grokking detection, early stop.

A run alone (K = 1, `Alone`) trains its own model; runs of one shape trained together (K > 1,
grok/training/stacked.py) share one vmapped forward and backward. Everything after an epoch's step
and test pass (`close_epoch`: the row, the loggers, grokking detection, checkpoint, early stop, a
signal's stop) is each run's own, whatever K.

An epoch's train metrics come from that epoch's own forward pass(es), before the update, and its test
metrics from the weights after it (seeds 003/004 record them the same way). The loss (a plug-in of
grok/training/losses.py) is computed in float64. Every `analysis.every` evaluated epochs the progress
measures of grok/recording/analysis.py are taken on the train set.

Binary-operation tasks have one label per example, scored on the last position's logits. Sequence
tasks (grok/data/sequences.py) have a label per position, IGNORE where nothing is scored: the loss is
the mean over the scored positions, and an example is right only when all of its scored positions are.
"""

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from grok.models import fast
from grok.recording import Loggers
from grok.recording.analysis import progress_measures
from grok.system.signals import Interrupted, StopRequest
from grok.system.speed import for_training
from grok.system.threads import AdaptiveThreads, explicit_threads
from grok.training.checkpoint import save_checkpoint
from grok.training.losses import cross_entropy
from grok.training.metrics import split_metrics
from grok.training.stacked import Stack

MEMORIZED, GROKKED = 0.99, 0.99  # accuracy thresholds for memorize_epoch and grok_epoch
EVAL_TOKENS = 2**17  # evaluate in chunks of about this many tokens, so large test sets fit in memory


def generalization_key(row: Dict[str, Any]) -> str:
    """The test accuracy grokking is read from: on the clean labels where a task has noisy ones."""
    return "test_acc_clean" if "test_acc_clean" in row else "test_acc"


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
        test_acc = row[generalization_key(row)]
        if self.memorize_epoch is None and row["train_acc"] >= MEMORIZED:
            self.memorize_epoch = row["epoch"]
        if self.grok_epoch is None and test_acc >= GROKKED:
            self.grok_epoch = row["epoch"]
        hit = (stop_cfg.test_acc is not None and test_acc >= stop_cfg.test_acc) or (
            stop_cfg.test_loss is not None and row["test_loss"] < stop_cfg.test_loss
        )
        self.stop_streak = self.stop_streak + 1 if hit else 0
        self.stopped_early = hit and self.stop_streak >= stop_cfg.patience


@dataclass
class Experiment:
    """One run's live parts: what the loop reads and updates, and where it writes (built by
    grok/run.py's start)."""

    cfg: DictConfig  # validated: each plug-in's node typed (grok/config.py)
    run_dir: Path
    device: torch.device
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    fourier_sign: Optional[int]  # the task's, for the progress measures
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator  # minibatch order
    train: Split
    test: Split
    state: TrainState
    loggers: Loggers
    started: float  # perf_counter() when the run began
    startup_seconds: Optional[float]  # imports, Hydra, data, model, W&B: everything before the first epoch

    def save(self) -> None:
        cuda = self.device.type == "cuda"
        save_checkpoint(
            self.run_dir / "checkpoints",
            self.state.epoch,
            {
                # clone: a stacked run's parameters are views into the stack's tensors (grok/training/stacked.py)
                "model": {key: value.clone() for key, value in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "state": asdict(self.state),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "batches": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if cuda else [],
                },
                "config": OmegaConf.to_container(self.cfg, resolve=True),
            },
        )


# ----------------------------------------------------------------------------- one run's epoch
def train_epoch(
    model: nn.Module,
    split: Split,
    optimizer,
    scheduler,
    batch_size: Optional[int],
    generator,
    loss_fn: Callable = cross_entropy,
) -> Dict[str, Tensor]:
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
        metrics = split_metrics(loss.detach(), logits.detach(), labels, clean, labels.dim() == 2)
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
        metrics = split_metrics(loss_fn(logits, labels), logits, labels, clean, labels.dim() == 2)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0) + len(labels) / n * value
    return totals


def weight_norm(model: nn.Module) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in model.parameters()]))


class Alone:
    """K = 1: one run's epoch on its own model (through the table path, compiled with `compile`)."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.module = for_training(fast(experiment.model), experiment.cfg.compile, experiment.device)

    def train_epoch(self) -> List[Dict[str, Tensor]]:
        e = self.experiment
        return [train_epoch(self.module, e.train, e.optimizer, e.scheduler, e.cfg.batch_size, e.generator, e.loss_fn)]

    def evaluate(self) -> List[Dict[str, Tensor]]:
        return [evaluate(self.module, self.experiment.test, self.experiment.loss_fn)]

    def weight_norms(self) -> Tensor:
        return weight_norm(self.experiment.model)[None]

    def release(self) -> None:
        pass


# ----------------------------------------------------------------------------- after the epoch
def evaluation_due(cfg, epoch: int) -> bool:
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def epoch_rows(
    train_metrics: List[Dict[str, Tensor]], test_metrics: List[Dict[str, Tensor]], weight_norms: Tensor
) -> List[Dict[str, float]]:
    """The metrics of one epoch of K runs as K rows of numbers: train_*, test_*, weight_norm. One
    transfer from the device for all: on a GPU each .item() waits."""
    names = [f"train_{key}" for key in train_metrics[0]] + [f"test_{key}" for key in test_metrics[0]] + ["weight_norm"]
    values = torch.stack(
        [
            torch.stack([value.double() for value in [*train.values(), *test.values()]])
            for train, test in zip(train_metrics, test_metrics)
        ]
    )
    return [dict(zip(names, row)) for row in torch.cat([values, weight_norms.double()[:, None]], dim=1).tolist()]


class Diverged(FloatingPointError):
    """A loss that is no longer a finite number; the message is one line for the user."""


def check_finite(row: Dict[str, float]) -> None:
    bad = {key: value for key, value in row.items() if key.endswith("_loss") and not math.isfinite(value)}
    if bad:
        losses = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise Diverged(f"training diverged at epoch {row['epoch']}: {losses} (a lower optimizer.lr may help)")


def close_epoch(
    experiment: Experiment, epoch: int, lr: float, seconds: float, values: Optional[Dict[str, float]], stop
) -> Optional[Dict[str, float]]:
    """Everything after an epoch's step and test pass, for one run: its row (`values` from epoch_rows;
    None when the epoch was not evaluated) and progress measures to the loggers, grokking detection,
    checkpoint, early stop, a stop requested by a signal (`stop`, a grok.system.signals.StopRequest).
    Returns the logged row; raises Diverged when a loss is not finite."""
    cfg, state = experiment.cfg, experiment.state
    state.epoch, row = epoch, None
    state.train_seconds += seconds
    if values is not None:
        norm = values["weight_norm"]
        row = {
            "epoch": epoch,
            **{key: value for key, value in values.items() if key != "weight_norm"},
            "lr": lr,
            "weight_norm": norm,
        }
        measures = {}
        binary = experiment.train.labels.dim() == 1  # the measures are for binary operations
        if cfg.analysis.name != "none" and binary and epoch % cfg.analysis.every == 0:
            measures = progress_measures(
                experiment.model,
                cfg.task.get("p"),
                experiment.fourier_sign,
                experiment.train.inputs,
                experiment.train.labels,
                cfg.analysis.n_key_freqs,
            )
        experiment.loggers.log_epoch(row, measures)
        check_finite(row)
        state.update(row, cfg.stop)
    if epoch % cfg.save_every == 0 or state.stopped_early or stop.requested:
        experiment.save()
    if stop.requested:
        raise stop.stopped(epoch)
    return row


# ----------------------------------------------------------------------------- the loop
Ending = Callable[[Experiment, Optional[BaseException]], Any]  # (a run, None or what stopped it) -> its result


def train_runs(experiments: List[Experiment], stop, end: Ending) -> List[Any]:
    """Train the runs (K >= 1) from their checkpoint's epoch to their own last epoch or early stop,
    together where there are several; return each run's result, in order. A run that stops is ended
    at once by `end(experiment, None)` (its summary: its result), or `end(experiment, error)` when it
    failed (the error is its result). When `stop.requested` turns true (grok/system/signals.py) every run
    checkpoints the epoch it finished, is ended with grok.system.signals.Interrupted, which is raised."""
    results: Dict[int, Any] = {}
    starts = sorted({experiment.state.epoch for experiment in experiments})
    if len(starts) > 1:  # checkpoints of different epochs (requeued jobs): one batch per epoch
        _one_after_another([[e for e in experiments if e.state.epoch == epoch] for epoch in starts], stop, end, results)
    else:
        _train_together(experiments, stop, end, results)
    return [results[id(experiment)] for experiment in experiments]


def _end(experiment: Experiment, error: Optional[BaseException], end: Ending, results: Dict[int, Any]) -> None:
    if error is None:
        try:
            results[id(experiment)] = end(experiment, None)
            return
        except Exception as failure:  # finishing failed (a full disk): the run failed
            error = failure
    end(experiment, error)
    results[id(experiment)] = error


def _engine(experiments: List[Experiment]):
    """What trains the runs' epochs: a run alone on its own model, several as one stack."""
    return Alone(experiments[0]) if len(experiments) == 1 else Stack(experiments)


def _train_together(experiments: List[Experiment], stop, end: Ending, results: Dict[int, Any]) -> None:
    from tqdm import tqdm

    active = []
    for experiment in experiments:
        trained = experiment.state.stopped_early or experiment.state.epoch >= experiment.cfg.epochs
        if trained:  # to the end, before: finish only
            _end(experiment, None, end, results)
        else:
            active.append(experiment)
    if not active:
        return
    first, last = active[0].state.epoch + 1, max(experiment.cfg.epochs for experiment in active)
    bar = tqdm(
        total=last,
        initial=first - 1,
        disable=not any(experiment.cfg.progress for experiment in active),
        unit="epoch",
        dynamic_ncols=True,
    )
    engine = _engine(active)
    threads = AdaptiveThreads(explicit_threads(active[0].cfg))  # runs together share `threads`
    last_postfix, tick = 0.0, time.perf_counter()
    try:
        for epoch in range(first, last + 1):
            lrs = [experiment.optimizer.param_groups[0]["lr"] for experiment in active]
            try:
                train_metrics = engine.train_epoch()
            except torch.cuda.OutOfMemoryError:
                if len(active) == 1:
                    raise
                engine.release()
                engine = None
                torch.cuda.empty_cache()
                half = len(active) // 2
                warnings.warn(
                    f"a batch of {len(active)} runs ran out of GPU memory at epoch {epoch}: "
                    f"it goes on as two batches, of {half} and {len(active) - half}"
                )
                _one_after_another([active[:half], active[half:]], stop, end, results)
                return
            due = [evaluation_due(experiment.cfg, epoch) for experiment in active]
            rows = (
                epoch_rows(train_metrics, engine.evaluate(), engine.weight_norms())
                if any(due)
                else [None] * len(active)
            )
            now = time.perf_counter()
            interrupted, stopped, logged = None, [], None
            decided = StopRequest()  # the stop request as it stands now: every run of this epoch stops, or none
            decided.signum = stop.signum
            for experiment, lr, row, is_due in zip(active, lrs, rows, due):
                try:
                    logged = close_epoch(experiment, epoch, lr, now - tick, row if is_due else None, decided)
                    if experiment.state.stopped_early or epoch == experiment.cfg.epochs:
                        _end(experiment, None, end, results)
                        stopped.append(experiment)
                except Interrupted as error:  # every run checkpoints this epoch before the loop stops
                    _end(experiment, error, end, results)
                    interrupted = error
                except Exception as error:
                    _end(experiment, error, end, results)
                    stopped.append(experiment)
            tick = now
            if len(active) == 1 and logged is not None and time.perf_counter() - last_postfix > 0.5:
                last_postfix = time.perf_counter()
                bar.set_postfix(
                    train_loss=f"{logged['train_loss']:.3g}",
                    train_acc=f"{logged['train_acc']:.3f}",
                    test_loss=f"{logged['test_loss']:.3g}",
                    test_acc=f"{logged['test_acc']:.3f}",
                    refresh=False,
                )
            bar.update()
            threads.update()
            if interrupted is not None:
                raise interrupted
            if stopped:
                engine.release()
                active = [experiment for experiment in active if experiment not in stopped]
                engine = _engine(active) if active else None
                if active:
                    bar.set_postfix(training=len(active), refresh=False)
            if not active:
                break
    except Interrupted:
        raise
    except Exception as error:  # the batch itself failed, not one experiment: each experiment still training fails
        for experiment in active:
            if id(experiment) not in results:
                _end(experiment, error, end, results)
    except BaseException as error:  # raised past the experiments (KeyboardInterrupt outside stop_on_signals)
        for experiment in active:
            if id(experiment) not in results:
                _end(experiment, error, end, results)
        raise
    finally:
        if engine is not None:
            engine.release()
        threads.restore()
        bar.close()


def _one_after_another(batches: List[List[Experiment]], stop, end: Ending, results: Dict[int, Any]) -> None:
    """Train the batches in turn. A signal that stops one stops them all: the experiments of the batches
    after it, not trained since the split, checkpoint the epoch they reached and end as interrupted."""
    for i, batch in enumerate(batches):
        try:
            _train_together(batch, stop, end, results)
        except Interrupted as error:
            for experiment in (r for waiting in batches[i + 1 :] for r in waiting):
                try:
                    experiment.save()
                    _end(experiment, type(error)(error.signum, experiment.state.epoch), end, results)
                except Exception as failure:  # its checkpoint could not be written (a full disk)
                    _end(experiment, failure, end, results)
            raise
