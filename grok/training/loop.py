"""The training loop: one loop for K >= 1 runs, full-batch (or minibatch) steps, evaluation,
grokking detection, early stop.

A run alone (K = 1, `Alone`) trains its own model; runs of one shape trained together (K > 1,
grok/training/stacked.py) share one vmapped forward and backward. Everything after an epoch's step
and test pass (`close_epoch`: the row, the loggers, grokking detection, checkpoint, early stop, a
signal's stop) is each run's own, whatever K.

Epochs are trained in blocks (`sync_seconds`, 0.5 s by default): their metrics stay on the device
until the block ends and then come to the host in one transfer, so that the loop does not make the
host wait for a GPU between epochs. Closing the block's epochs afterwards gives the rows, detections
and stops that closing each epoch at once would (tests/test_blocks.py).

An epoch's train metrics come from that epoch's own forward pass(es), before the update, and its test
metrics from the weights after it (seeds 003/004 record them the same way). The loss (a plug-in of
grok/training/losses.py) is computed in float64. Every `analysis.every` evaluated epochs the progress
measures of grok/recording/analysis.py are taken on the train set.

Binary-operation tasks have one label per example, scored on the last position's logits. Sequence
tasks (grok/data/sequences.py) have a label per position, IGNORE where nothing is scored: the loss is
the mean over the scored positions, and an example is right only when all of its scored positions are.
"""

import copy
import functools
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from grok.models import fast
from grok.models.hooks import submodules
from grok.recording.analysis import progress_measures
from grok.system.collector import start_collections
from grok.system.signals import Interrupted, StopRequest
from grok.system.threads import AdaptiveThreads, explicit_threads
from grok.training.captured import CompileFailed, captured_epoch
from grok.training.experiment import Experiment, Split
from grok.training.losses import cross_entropy
from grok.training.metrics import measure_split, measured, predict, split_metrics
from grok.training.stacked import Stack


# ----------------------------------------------------------------------------- one run's epoch
def set_mode(model: nn.Module, training: bool) -> None:
    """model.train(training). Module.train sets `training` on every module through Module.__setattr__:
    ~100 µs for the default transformer's 24 modules, twice an epoch. Where every module switches as
    Module.train would switch it on its own, the same attributes are set directly (~25 µs)."""
    modules = submodules(model)
    if not all(map(_switches_plainly, modules)):
        model.train(training)
        return
    for module in modules:
        object.__setattr__(module, "training", training)  # where Module.__setattr__ puts a bool


def _switches_plainly(module: nn.Module) -> bool:
    """Nothing of its own in how its mode is set: `training` a plain attribute, no train or eval of
    its own (nor of its class), nor attribute setting (a ScriptModule keeps `training` in C++) or
    children (what Module.train walks) of its class's own."""
    attributes = module.__dict__
    return (
        _plain_kind(type(module)) and "training" in attributes and not ("train" in attributes or "eval" in attributes)
    )


@functools.cache
def _plain_kind(kind: type) -> bool:
    return all(
        getattr(kind, name) is getattr(nn.Module, name) for name in ("train", "eval", "__setattr__", "named_children")
    )


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
    set_mode(model, True)
    n = len(split.labels)
    full_batch = batch_size is None or batch_size >= n
    order = None if full_batch else torch.randperm(n, generator=generator, device=generator.device)
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
    """Loss and accuracies over the split (grok.training.metrics.measure_split), in eval mode, no gradients."""
    set_mode(model, False)
    return measure_split(model, split, loss_fn)


@torch.no_grad()
def weight_norm(model: nn.Module) -> Tensor:
    """The norm of all parameters together: the norm of their norms, one kernel for all of them."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(model.parameters()))))


def trained_through(model: nn.Module, tables: Optional[bool], train: Split, test: Split) -> nn.Module:
    """The module a run trains and evaluates `model` through: fast(model, tables), whose test pass's
    tables serve the next step, with rows for the (token, position) pairs of the two splits."""
    return fast(model, shares_tables=True, tables=tables, inputs=torch.cat([train.inputs, test.inputs]))


class Alone:
    """K = 1: one run's epoch on its own model, through fast(model, tables) (grok/models/tables.py: on
    a CPU the table path); with `compile`, as one compiled graph (grok/training/captured.py) where it
    can be."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.batch_size = experiment.cfg.batch_size  # read once: the epoch needs it, a config lookup costs ~10 µs
        self.module = trained_through(experiment.model, experiment.cfg.tables, experiment.train, experiment.test)
        self.captured = captured_epoch(experiment, self.module) if experiment.cfg.compile else None

    def epoch(self, evaluated: bool) -> Optional[Tuple[List[str], Tensor]]:
        """Train one epoch; where `evaluated`, test too and return grok.training.metrics.measured's
        row names and (1, M) values."""
        if self.captured is not None:
            try:
                return self.captured.epoch(evaluated)
            except CompileFailed as error:
                warnings.warn(f"torch.compile failed, the run trains uncompiled: {error}", stacklevel=2)
                self.captured = None
        train_metrics = self.train_epoch()
        return measured(train_metrics, self.evaluate(), self.weight_norms()) if evaluated else None

    def train_epoch(self) -> Dict[str, Tensor]:
        e = self.experiment
        return train_epoch(self.module, e.train, e.optimizer, e.scheduler, self.batch_size, e.generator, e.loss_fn)

    def evaluate(self) -> Dict[str, Tensor]:
        return evaluate(self.module, self.experiment.test, self.experiment.loss_fn)

    def weight_norms(self) -> Tensor:
        return weight_norm(self.experiment.model)

    def release(self) -> None:
        pass


# ----------------------------------------------------------------------------- after the epoch
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
    """Everything after an epoch's step and test pass, for one run: its row (`values` named by metrics.row_names;
    None when the epoch was not evaluated) and progress measures to the loggers, grokking detection,
    checkpoint, early stop, a stop requested by a signal (`stop`, a grok.system.signals.StopRequest).
    Returns the logged row; raises Diverged when a loss is not finite."""
    schedule, state = experiment.schedule, experiment.state
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
        if schedule.analysis_every and epoch % schedule.analysis_every == 0:
            measures = progress_measures(
                experiment.model,
                experiment.cfg.task.get("p"),
                experiment.fourier_sign,
                experiment.train.inputs,
                experiment.train.labels,
                experiment.cfg.analysis.n_key_freqs,
                experiment.cfg.tables,
            )
        experiment.loggers.log_epoch(row, measures)
        check_finite(row)
        state.update(row, schedule.stop)
    if epoch % schedule.save_every == 0 or state.stopped_early or stop.requested:
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
    start_collections()  # the process's start is over (train.py deferred them)
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


@dataclass
class Block:
    """Epochs trained one after another while their metrics stay on the device: each epoch's number,
    the runs' learning rates in it, and where evaluated their measured values."""

    epochs: List[int]
    lrs: List[List[float]]
    values: List[Optional[Tensor]]
    names: Optional[List[str]] = None  # the rows' names, once an epoch was evaluated
    out_of_memory: bool = False  # a batch of runs ran out of GPU memory in the epoch after the last

    def rows(self) -> List[List[Optional[Dict[str, float]]]]:
        """Per epoch, each run's values by name (None where not evaluated): one transfer for all."""
        evaluated = [values for values in self.values if values is not None]
        numbers = iter(torch.stack(evaluated).tolist() if evaluated else [])
        runs = len(self.lrs[0]) if self.lrs else 0
        return [
            [None] * runs if values is None else [dict(zip(self.names, row)) for row in next(numbers)]
            for values in self.values
        ]


def _train_block(engine, active: List[Experiment], first: int, last: int, seconds: float, stop) -> Block:
    """Train epochs first..last, fewer when `seconds` have passed or a stop is requested (a signal).
    Nothing comes to the host in between: on a GPU the host queues the epochs' work without waiting."""
    block, started = Block([], [], []), time.perf_counter()
    for epoch in range(first, last + 1):
        lrs = [experiment.optimizer.param_groups[0]["lr"] for experiment in active]
        evaluated = any(experiment.schedule.evaluated(epoch) for experiment in active)
        try:
            measured_epoch = engine.epoch(evaluated)
        except torch.cuda.OutOfMemoryError:
            if len(active) == 1:
                raise
            block.out_of_memory = True  # the runs are as the block's last epoch left them
            break
        values = None
        if measured_epoch is not None:
            block.names, values = measured_epoch
        block.epochs.append(epoch)
        block.lrs.append(lrs)
        block.values.append(values)
        if stop.requested or time.perf_counter() - started >= seconds:
            break
    return block


def _first_early_stop(active: List[Experiment], block: Block, rows) -> Optional[int]:
    """The block's earliest epoch at which one of the runs stops early (stop.*), going by copies of
    their progress; None if none does."""
    stops = []
    for k, experiment in enumerate(active):
        if not experiment.schedule.may_stop_early:
            continue
        state = copy.copy(experiment.state)
        for epoch, epoch_rows in zip(block.epochs, rows):
            values = epoch_rows[k]
            if values is not None and experiment.schedule.evaluated(epoch):
                state.update({"epoch": epoch, **values}, experiment.schedule.stop)
                if state.stopped_early:
                    stops.append(epoch)
                    break
    return min(stops, default=None)


def _close_block(active: List[Experiment], block: Block, rows, seconds: float, stop, end: Ending, results):
    """Each run closes the block's epochs in order (close_epoch), as it would have after each; a run
    that stops, finishes or fails is ended there. A stop requested by a signal (`stop`, as it stands
    now) applies to the block's last epoch: every run checkpoints it. Returns the Interrupted error
    if any, the runs ended, and the last row logged."""
    interrupted, stopped, logged = None, [], None
    decided = StopRequest()  # every run of the block stops after it, or none
    decided.signum = stop.signum
    for epoch, lrs, epoch_rows in zip(block.epochs, block.lrs, rows):
        request = decided if epoch == block.epochs[-1] else StopRequest()
        for experiment, lr, values in zip(active, lrs, epoch_rows):
            if id(experiment) in results:  # ended at an earlier epoch of the block
                continue
            try:
                evaluated = experiment.schedule.evaluated(epoch)
                logged = close_epoch(experiment, epoch, lr, seconds, values if evaluated else None, request)
                if experiment.state.stopped_early or epoch == experiment.schedule.epochs:
                    _end(experiment, None, end, results)
                    stopped.append(experiment)
            except Interrupted as error:  # every run checkpoints this epoch before the loop stops
                _end(experiment, error, end, results)
                interrupted = error
            except Exception as error:
                _end(experiment, error, end, results)
                stopped.append(experiment)
    return interrupted, stopped, logged


def _train_together(experiments: List[Experiment], stop, end: Ending, results: Dict[int, Any]) -> None:
    """Train the runs in blocks of epochs (`sync_seconds` long, ending where a run saves, takes its
    progress measures or ends). After each block its metrics come to the host at once and each run
    closes the block's epochs in order, as it would have after each. A run that stops early inside a
    block stops at that epoch exactly: the runs go back to their snapshot from the block's start and
    train again to that epoch (the same math, so the same numbers), and the epochs after it are not
    kept."""
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
        epoch = first  # the next block's first
        while active:
            limit = min(experiment.schedule.last_epoch_of_block(epoch) for experiment in active)
            sync = min(experiment.schedule.sync_seconds for experiment in active)
            may_stop = sync > 0 and any(experiment.schedule.may_stop_early for experiment in active)
            snapshots = [experiment.snapshot() for experiment in active] if may_stop else None
            block = _train_block(engine, active, epoch, limit, sync, stop)
            rows = block.rows()
            stop_at = _first_early_stop(active, block, rows) if snapshots else None
            while stop_at is not None and stop_at < block.epochs[-1]:  # again, to the epoch of the stop only
                for experiment, snapshot in zip(active, snapshots):
                    experiment.restore(copy.deepcopy(snapshot))  # restored state is trained in place
                block = _train_block(engine, active, epoch, stop_at, math.inf, StopRequest())
                rows = block.rows()
                stop_at = _first_early_stop(active, block, rows)  # the same, unless a kernel rounds anew
            now = time.perf_counter()
            per_epoch = (now - tick) / max(1, len(block.epochs))  # since the last block began to close
            interrupted, stopped, logged = _close_block(active, block, rows, per_epoch, stop, end, results)
            if len(active) == 1 and logged is not None and time.perf_counter() - last_postfix > 0.5:
                last_postfix = time.perf_counter()
                bar.set_postfix(
                    train_loss=f"{logged['train_loss']:.3g}",
                    train_acc=f"{logged['train_acc']:.3f}",
                    test_loss=f"{logged['test_loss']:.3g}",
                    test_acc=f"{logged['test_acc']:.3f}",
                    refresh=False,
                )
            bar.update(len(block.epochs))
            threads.update()  # between blocks: a block trained again runs on the threads it ran on
            tick = now  # closing this block counts towards the next one's time, as an epoch's did
            if interrupted is not None:
                raise interrupted
            epoch += len(block.epochs)
            if stopped:
                engine.release()
                active = [experiment for experiment in active if id(experiment) not in results]
                engine = _engine(active) if active else None
                if active:
                    bar.set_postfix(training=len(active), refresh=False)
            if block.out_of_memory and active:
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
