"""Many runs trained together in one process: `hydra/launcher=batched` (docs/sweeps.md).

Jobs whose models have the same shapes (architecture, vocabulary, classes, input length) and the
same loss form a group; each group trains in batches as one stacked model (grok/training/stacked.py),
through the same loop as a run alone (grok/training/loop.py). Everything else of a run is its own,
built by grok/run.py as when it runs alone: its data split, labels and noise, its initial weights
(its seed), its optimizer, schedule and gradient transforms, its output directory, metrics.csv,
checkpoints, W&B run and summary.json; `python train.py resume=<its dir>` continues it alone.

A run leaves its batch when it stops (early stop, divergence, its last epoch); the stack shrinks to
the runs still training. A group is split into batches that fit the device's memory
(`members_that_fit`), and a batch that runs out of GPU memory anyway is halved, never lost.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from grok.config import validate
from grok.data import make_dataset
from grok.models.tables import takes_tables
from grok.run import end, record_failure, resolve_device, run, start
from grok.system.signals import Interrupted, stop_on_signals
from grok.system.speed import flush_denormals
from grok.training.loop import train_runs
from grok.training.memory import check_data, members_that_fit


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
    device = resolve_device(cfg.device)
    shapes = {
        "model": OmegaConf.to_container(cfg.model),
        "n_ctx": data.inputs.shape[1],
        "n_vocab": data.n_vocab,
        "n_classes": data.n_classes,
        "sequences": data.labels.dim() == 2,
        "loss": cfg.loss.name,
        "clean_labels": data.clean_labels is not None,  # the same metrics: noisy tasks add acc_clean
        "device": str(device),
        "threads": cfg.threads,
        "tables": takes_tables(device, cfg.tables),  # a stack runs every member through the first's path
    }
    return json.dumps(shapes, sort_keys=True), max(len(data.train_idx), len(data.test_idx))


def run_batched(jobs: Sequence[Job], max_members: Optional[int] = None) -> List[Result]:
    """Run every job; those that can share a batch do. Returns each job's summary or exception, in
    order. `max_members` caps a batch below what memory allows."""
    flush_denormals()  # before group_key's data sets start PyTorch's threads (grok/system/speed.py)
    results: List[Optional[Result]] = [None] * len(jobs)
    groups: Dict[str, List[int]] = {}
    rows: Dict[int, int] = {}
    for i, job in enumerate(jobs):
        try:
            cfg = validate(job.cfg)
            if batchable(cfg):
                key, rows[i] = group_key(cfg)
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
            capacity, batch, members = None, [], []  # runs are started (W&B runs opened) one batch at a time
            for n, i in enumerate(indices):
                try:
                    batch.append(start(jobs[i].cfg, jobs[i].out_dir, jobs[i].run_name, time.perf_counter()))
                    members.append(i)
                except Exception as error:
                    record_failure(error, jobs[i].cfg, jobs[i].out_dir, None)
                    results[i] = error
                if capacity is None and batch:
                    largest = max(rows[j] for j in indices) / rows[members[0]]
                    fit = members_that_fit(batch[0], largest)
                    capacity = min(fit, max_members or fit)
                if batch and (len(batch) == capacity or n == len(indices) - 1):
                    for i, result in zip(members, train_runs(batch, stop, end)):
                        results[i] = result
                    batch, members = [], []
    return results  # type: ignore[return-value]


def _run_alone(job: Job) -> Result:
    try:
        return run(job.cfg, job.out_dir, job.run_name)
    except Interrupted:
        raise  # a signal stops the whole sweep
    except Exception as error:  # recorded in the job's summary.json by run()
        return error
