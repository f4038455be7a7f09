"""Many runs trained together in one process: `hydra/launcher=batched` (README "Batched sweeps").

Runs whose models have the same shapes (architecture, vocabulary, classes, input length) and the
same loss form a group. Each parameter of a group is one tensor with a leading run dimension, and
torch.vmap runs the model of grok/model.py over it: one forward and one backward for the group.
Everything else of a run is its own, built by grok/run.py as when it runs alone: its data split,
labels and noise, its initial weights (its seed), its optimizer and schedule (its lr, weight decay,
Grokfast, ⊥Grad), its output directory, metrics.csv, checkpoints, W&B run and summary.json. Its
parameters are views into the group's tensors, so its own optimizer updates them in place and its
checkpoint is an ordinary one: `python train.py resume=<its dir>` continues it alone.

Runs of one group may have splits of different sizes (train_frac): each run's examples are padded
to the group's largest with the label IGNORE, which losses and accuracies leave out.

A run leaves its group when it stops (early stop, divergence, its last epoch); the group's tensors
shrink to the runs still training. A group is split into batches that fit the device's memory
(`members_that_fit`), and a batch that runs out of GPU memory anyway is halved, never lost.
"""

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from grok.config import validate
from grok.training.losses import IGNORE, LOSSES
from grok.training.memory import available_memory, check_data
from grok.run import Experiment, finish, record_failure, resolve_device, run, start
from grok.system.signals import Interrupted, stop_on_signals
from grok.system.speed import flush_denormals
from grok.data.tasks import make_dataset
from grok.system.threads import AdaptiveThreads, explicit_threads
from grok.training.loop import close_epoch, correct, epoch_rows, evaluation_due

MEMORY_SHARE = 0.5  # of the free memory, what a batch may plan to use


@dataclass
class Job:
    cfg: DictConfig  # resolved, as Hydra composed it for this job
    out_dir: Path
    run_name: str


Result = Union[Dict[str, Any], BaseException]  # a job's summary, or what stopped it


def batchable(cfg: DictConfig) -> bool:
    """Full-batch, fresh, uncompiled runs train together; the others (minibatches draw per-run
    orders, a resumed run has its own past, compiling is per model) run alone, one after another."""
    return cfg.batch_size is None and not cfg.resume and not cfg.compile


def group_key(cfg: DictConfig) -> Tuple[str, int]:
    """What runs of one group share (the shapes of the model, its inputs and outputs), and the
    run's larger split's size (what its memory scales with)."""
    check_data(cfg.task)
    data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
    shapes = {"model": OmegaConf.to_container(cfg.model), "n_ctx": data.inputs.shape[1], "n_vocab": data.n_vocab,
              "n_classes": data.n_classes, "sequences": data.labels.dim() == 2, "loss": cfg.loss.name,
              "clean_labels": data.clean_labels is not None,  # the same metrics: noisy tasks add acc_clean
              "device": str(resolve_device(cfg.device)), "threads": cfg.threads}
    return json.dumps(shapes, sort_keys=True), max(len(data.train_idx), len(data.test_idx))


def run_batched(jobs: Sequence[Job], max_members: Optional[int] = None) -> List[Result]:
    """Run every job; those that can share a batch do. Returns each job's summary or exception, in
    order. `max_members` caps a batch below what memory allows."""
    flush_denormals()  # before group_key's data sets start PyTorch's threads (grok/speed.py)
    results: List[Optional[Result]] = [None] * len(jobs)
    groups: Dict[str, List[int]] = {}
    rows: Dict[int, int] = {}
    for i, job in enumerate(jobs):
        try:
            validate(job.cfg)
            if batchable(job.cfg):
                key, rows[i] = group_key(job.cfg)
                groups.setdefault(key, []).append(i)
                continue
        except Exception as error:  # a bad config fails its own job only, as in a multirun
            record_failure(error, job.cfg, job.out_dir, None)
            results[i] = error
            continue
        results[i] = _run_alone(job)
    with stop_on_signals() as stop:
        for indices in groups.values():
            if len(indices) == 1:
                results[indices[0]] = _run_alone(jobs[indices[0]])
                continue
            capacity, batch = None, []  # members are started (W&B runs opened) one batch at a time
            for n, i in enumerate(indices):
                try:
                    batch.append(Member(i, start(jobs[i].cfg, jobs[i].out_dir, jobs[i].run_name, time.perf_counter())))
                except Exception as error:
                    record_failure(error, jobs[i].cfg, jobs[i].out_dir, None)
                    results[i] = error
                if capacity is None and batch:
                    largest = max(rows[j] for j in indices) / rows[batch[0].index]
                    fit = members_that_fit(batch[0].experiment, largest)
                    capacity = min(fit, max_members or fit)
                if batch and (len(batch) == capacity or n == len(indices) - 1):
                    train_together(batch, stop)
                    for member in batch:
                        results[member.index] = member.result
                    batch = []
    return results  # type: ignore[return-value]


def _run_alone(job: Job) -> Result:
    try:
        return run(job.cfg, job.out_dir, job.run_name)
    except Interrupted:
        raise  # a signal stops the whole sweep
    except Exception as error:  # recorded in the job's summary.json by run()
        return error


@dataclass
class Member:
    index: int  # the job's position in the sweep
    experiment: Experiment
    result: Optional[Result] = None


# ----------------------------------------------------------------------------- the stacked model
def _padded(splits: List[Tensor], fill: int) -> Tensor:
    """(K, N, ...) from K tensors of N_k <= N rows, the missing rows `fill`."""
    n = max(len(split) for split in splits)
    out = splits[0].new_full((len(splits), n, *splits[0].shape[1:]), fill)
    for k, split in enumerate(splits):
        out[k, : len(split)] = split
    return out


class Batch:
    """The members' parameters stacked along a leading run dimension, each member's parameters
    views into them; their train and test examples padded to common lengths."""

    def __init__(self, experiments: List[Experiment]):
        self.experiments = experiments
        self.model = experiments[0].model  # any member's module: torch.func.functional_call swaps in the stack
        self.params = {name: torch.stack([dict(e.model.named_parameters())[name].detach() for e in experiments])
                       for name, _ in self.model.named_parameters()}
        for stacked in self.params.values():
            stacked.requires_grad_()
        for k, experiment in enumerate(experiments):
            for name, param in experiment.model.named_parameters():
                param.data = self.params[name].data[k]  # the member's optimizer updates the stack in place
        self.loss_fn = LOSSES[experiments[0].cfg.loss.name]
        self.sequences = experiments[0].train.labels.dim() == 2
        self.train = self._examples([e.train for e in experiments])
        self.test = self._examples([e.test for e in experiments])

    def _examples(self, splits) -> Dict[str, Tensor]:
        examples = {"inputs": _padded([s.inputs for s in splits], 0), "labels": _padded([s.labels for s in splits], IGNORE),
                    "count": torch.tensor([len(s.labels) for s in splits], device=splits[0].labels.device)}
        examples["real"] = torch.arange(examples["inputs"].shape[1], device=examples["count"].device) < examples["count"][:, None]
        if len({split.clean_labels is None for split in splits}) > 1:
            raise ValueError("a batch's members must all have clean labels (noisy tasks) or none")
        if splits[0].clean_labels is not None:
            examples["clean_labels"] = _padded([s.clean_labels for s in splits], IGNORE)
        return examples

    def _logits(self, params: Dict[str, Tensor], inputs: Tensor) -> Tensor:
        call = lambda p, x: torch.func.functional_call(self.model, p, (x,), {"all_positions": self.sequences})
        return torch.vmap(call)(params, inputs)

    def _metrics(self, losses: Tensor, logits: Tensor, examples: Dict[str, Tensor]) -> List[Dict[str, Tensor]]:
        """Per member, what grok/training.py's train_epoch and evaluate return for a run alone."""
        keys = {"acc": "labels", "acc_clean": "clean_labels"}
        accuracy = {key: ((correct(logits, examples[labels], self.sequences) & examples["real"]).sum(-1).double()
                          / examples["count"]) for key, labels in keys.items() if labels in examples}
        return [{"loss": losses[k], **{key: acc[k] for key, acc in accuracy.items()}} for k in range(len(losses))]

    def backward(self) -> List[Dict[str, Tensor]]:
        """The forward and backward pass of every member's full-batch step; returns their train metrics.
        Each member's gradient is that of its own loss alone. Nothing is updated yet."""
        for stacked in self.params.values():
            stacked.grad = None
        logits = self._logits(self.params, self.train["inputs"])
        losses = torch.vmap(self.loss_fn)(logits, self.train["labels"])  # (K,)
        losses.sum().backward()
        return self._metrics(losses.detach(), logits.detach(), self.train)

    def step(self) -> None:
        """Each member's optimizer and schedule, on its own slice of the gradients."""
        for k, experiment in enumerate(self.experiments):
            for name, param in experiment.model.named_parameters():
                param.grad = self.params[name].grad[k]
            experiment.optimizer.step()
            experiment.scheduler.step()

    @torch.inference_mode()
    def evaluate(self, first: int = 0, end: Optional[int] = None) -> List[Dict[str, Tensor]]:
        """Test metrics of members first..end-1; halves the range when the GPU runs out of memory."""
        end = len(self.experiments) if end is None else end
        try:
            part = {name: stacked[first:end] for name, stacked in self.params.items()}
            test = {key: value[first:end] for key, value in self.test.items()}
            logits = self._logits(part, test["inputs"])
            return self._metrics(torch.vmap(self.loss_fn)(logits, test["labels"]), logits, test)
        except torch.cuda.OutOfMemoryError:
            if end - first == 1:
                raise
            torch.cuda.empty_cache()
            middle = (first + end) // 2
            return self.evaluate(first, middle) + self.evaluate(middle, end)

    def weight_norms(self) -> Tensor:
        """(K,): each member's grok.training.loop.weight_norm, from the stack."""
        norms = [stacked.detach().flatten(1).norm(dim=1) for stacked in self.params.values()]  # per tensor
        return torch.linalg.vector_norm(torch.stack(norms), dim=0)

    def release(self) -> None:
        """Give each member's parameters storage of their own again."""
        for experiment in self.experiments:
            for param in experiment.model.parameters():
                param.data = param.data.clone()


# ----------------------------------------------------------------------------- training together
def train_together(members: List[Member], stop) -> None:
    """Train the members (all at the same epoch) as one batch until each has stopped; each ends as
    run() would end it: finish() writes its summary, or record_failure() its failure."""
    from tqdm import tqdm

    starts = sorted({m.experiment.state.epoch for m in members})
    if len(starts) > 1:  # checkpoints of different epochs (a requeued job): one batch per epoch
        _one_after_another([[m for m in members if m.experiment.state.epoch == epoch] for epoch in starts], stop)
        return
    active = []
    for member in members:
        state, cfg = member.experiment.state, member.experiment.cfg
        if state.stopped_early or state.epoch >= cfg.epochs:  # trained to the end before: finish only
            member.result = finish(member.experiment)
        else:
            active.append(member)
    if not active:
        return
    first, last = active[0].experiment.state.epoch + 1, max(m.experiment.cfg.epochs for m in active)
    bar = tqdm(total=last, initial=first - 1, disable=not any(m.experiment.cfg.progress for m in active),
               unit="epoch", dynamic_ncols=True)
    batch = Batch([m.experiment for m in active])
    threads = AdaptiveThreads(explicit_threads(active[0].experiment.cfg))  # members share `threads` (group_key)
    tick = time.perf_counter()
    try:
        for epoch in range(first, last + 1):
            lrs = [m.experiment.optimizer.param_groups[0]["lr"] for m in active]
            try:
                train_metrics = batch.backward()
            except torch.cuda.OutOfMemoryError:
                if len(active) == 1:
                    raise
                batch.release()
                batch = None
                torch.cuda.empty_cache()
                half = len(active) // 2
                warnings.warn(f"a batch of {len(active)} runs ran out of GPU memory at epoch {epoch}: "
                              f"it goes on as two batches, of {half} and {len(active) - half}")
                _one_after_another([active[:half], active[half:]], stop)
                return
            batch.step()
            due = [evaluation_due(m.experiment.cfg, epoch) for m in active]
            rows = epoch_rows(train_metrics, batch.evaluate(), batch.weight_norms()) if any(due) else [None] * len(active)
            now = time.perf_counter()
            interrupted, stopped = None, []
            for member, lr, row, is_due in zip(active, lrs, rows, due):
                experiment = member.experiment
                try:
                    close_epoch(experiment, epoch, lr, now - tick, row if is_due else None, stop)
                    if experiment.state.stopped_early or epoch == experiment.cfg.epochs:
                        member.result = finish(experiment)
                        stopped.append(member)
                except Interrupted as error:  # every member checkpoints this epoch before the run stops
                    record_failure(error, experiment.cfg, experiment.run_dir, experiment)
                    interrupted = error
                except Exception as error:
                    record_failure(error, experiment.cfg, experiment.run_dir, experiment)
                    member.result = error
                    stopped.append(member)
            tick = now
            bar.update()
            threads.update()
            if interrupted is not None:
                raise interrupted
            if stopped:
                batch.release()
                active = [m for m in active if m not in stopped]
                batch = Batch([m.experiment for m in active]) if active else None
                bar.set_postfix(training=len(active), refresh=False)
            if not active:
                break
    except Interrupted:
        raise
    except Exception as error:  # the batch itself failed, not one member: each member still training fails
        for member in active:
            if member.result is None:
                record_failure(error, member.experiment.cfg, member.experiment.run_dir, member.experiment)
                member.result = error
    finally:
        if batch is not None:
            batch.release()
        threads.restore()
        bar.close()



def _one_after_another(batches: List[List[Member]], stop) -> None:
    """Train the batches in turn. A signal that stops one stops the sweep: the members of the batches
    after it, started but not trained, end as interrupted at their own (resumed) checkpoint."""
    for i, batch in enumerate(batches):
        try:
            train_together(batch, stop)
        except Interrupted as error:
            for member in (m for waiting in batches[i + 1:] for m in waiting):
                experiment = member.experiment
                record_failure(type(error)(error.signum, experiment.state.epoch), experiment.cfg,
                               experiment.run_dir, experiment)
            raise

# ----------------------------------------------------------------------------- memory
def free_memory(device: torch.device) -> int:
    """Bytes the device can still allocate: free GPU memory, or the machine's available memory."""
    available = available_memory(device)
    return 4 << 30 if available is None else available  # where it cannot be read, assume 4 GiB


def member_bytes(experiment: Experiment) -> int:
    """Memory one member of a batch needs: what autograd saves for a training step on its split
    (measured, on the member's own model), scaled up when its test split is larger, plus its
    parameters, gradients and optimizer state (four copies of the parameters)."""
    saved = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model, train, test = experiment.model, experiment.train, experiment.test
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(train.inputs, all_positions=train.labels.dim() == 2)
    saved += 2 * logits.numel() * 8  # the float64 loss' copy of the logits and its gradient
    del logits
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(saved * max(1.0, len(test.labels) / len(train.labels))) + 4 * params


def members_that_fit(experiment: Experiment, scale: float = 1.0) -> int:
    """How many members like `experiment`, with splits up to `scale` times its larger one, one batch
    may hold in MEMORY_SHARE of the device's free memory."""
    return max(1, int(MEMORY_SHARE * free_memory(experiment.device) // (scale * member_bytes(experiment))))
