"""A run or a sweep read back into a notebook: `grok.load_run(path)`, `grok.load_sweep(path)`.

Everything comes from the run directory alone (config.yaml, checkpoints/, metrics.csv, analysis.csv,
summary.json), so a copy made elsewhere (rsync'ed from a cluster) loads as well as the original. The
data set is rebuilt from the config (it depends on `task` and `data_seed` only, never on the machine),
the model from the chosen checkpoint, on the CPU. A plug-in of your own must be importable here too.

    run = grok.load_run("outputs/runs/2026-12-02/10-00-00")
    run.metrics["test_acc"][-1], run.summary["grok_epoch"]
    logits = run.model(run.data.inputs[run.data.test_idx])
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import nn

from grok.config import CONF_DIR
from grok.data import Dataset, make_dataset
from grok.errors import ConfigError
from grok.models import build_model
from grok.plugins import TARGET
from grok.recording.files import read_metrics
from grok.sweeps.named import job_dirs
from grok.sweeps.summary import sweep_table
from grok.training.checkpoint import checkpoint_epochs, read_checkpoint


class NotARun(ConfigError):
    """A path that is not a run (or sweep) directory; the message is one line."""


@dataclass
class Run:
    path: Path
    config: DictConfig  # as the run used it: config.yaml, every plug-in's node typed
    data: Dataset  # every example, its labels, and the run's split: data.train_idx, data.test_idx
    model: Optional[nn.Module]  # at `epoch`, in eval mode on the CPU; None before the first checkpoint
    epoch: Optional[int]  # the checkpoint's epoch
    checkpoints: List[int]  # the epochs of the checkpoints the run has
    metrics: Dict[str, np.ndarray]  # metrics.csv by column: metrics["test_acc"][i] at metrics["epoch"][i]
    measures: Dict[str, np.ndarray]  # analysis.csv by column (progress measures); {} without
    summary: Dict[str, Any] = field(default_factory=dict)  # summary.json; {} while the run is going


@dataclass
class Sweep:
    path: Path
    runs: List[Run]  # in job order; a job that never began is in `problems` instead
    table: List[Dict[str, Any]]  # a row per job: its swept values and outcome (sweep_summary.csv's)
    keys: List[str]  # the swept keys, the table's first columns
    problems: List[str]  # jobs missing, damaged or never started
    over_seeds: Optional[List[Dict[str, Any]]]  # where seeds are swept: a row per setting (sweep_over_seeds.csv's)


def load_run(path: Union[str, Path], epoch: Optional[int] = None) -> Run:
    """The run in `path`, its model at checkpoint `epoch` (default: the last). NotARun, one line, for
    a path that is not a run directory or an epoch it has no checkpoint of."""
    path = Path(path)
    config = _config(path)
    data = make_dataset(config.task, config.train_frac, config.data_seed)
    epochs = checkpoint_epochs(path / "checkpoints")
    model = None
    if epoch is not None and epoch not in epochs:
        available = ", ".join(map(str, epochs)) or "none yet"
        raise NotARun(f"{path}: no checkpoint of epoch {epoch}; the run has checkpoints of epochs {available}")
    if epochs:
        epoch = epochs[-1] if epoch is None else epoch
        checkpoint = read_checkpoint(path / "checkpoints" / f"epoch_{epoch:06d}.pt")
        model = build_model(config.model, data.n_vocab, data.n_classes, data.inputs.shape[1])
        model.load_state_dict(checkpoint["model"])
        model.eval()
    return Run(
        path=path,
        config=config,
        data=data,
        model=model,
        epoch=epoch if epochs else None,
        checkpoints=epochs,
        metrics=_columns(path / "metrics.csv"),
        measures=_columns(path / "analysis.csv"),
        summary=_summary(path),
    )


def load_sweep(path: Union[str, Path]) -> Sweep:
    """Every run of the sweep in `path` (each at its last checkpoint) and the sweep's table."""
    path = Path(path)
    if not path.is_dir() or not job_dirs(path):
        raise NotARun(f"{path}: not a sweep directory (no job directories with .hydra/, summary.json or metrics.csv)")
    summary, _ = sweep_table(path)
    runs, problems = [], list(summary.problems)
    for record in summary.records:
        try:
            runs.append(load_run(path / record["job"]))
        except ConfigError as error:  # a job that failed before it began, or has not begun yet
            problems.append(f"job {record['job']}: {error}")
    return Sweep(path, runs, summary.records, summary.keys, problems, summary.seed_table)


def _config(path: Path) -> DictConfig:
    if not path.is_dir():
        raise NotARun(f"{path}: no such run directory")
    if not (path / "config.yaml").is_file():
        raise NotARun(f"{path}: not a run directory (no config.yaml, which a run writes when it starts)")
    config = OmegaConf.load(path / "config.yaml")
    for group in ("task", "model"):  # runs made before plug-ins named their implementation: the built-in one
        if TARGET not in config[group]:
            option = CONF_DIR / group / f"{config[group].name}.yaml"
            config[group][TARGET] = OmegaConf.load(option)[TARGET] if option.is_file() else None
    return config


def _columns(path: Path) -> Dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    rows = read_metrics(path)
    return {key: np.array([row[key] for row in rows]) for key in (rows[0] if rows else {})}


def _summary(path: Path) -> Dict[str, Any]:
    try:
        return json.loads((path / "summary.json").read_text())
    except (FileNotFoundError, ValueError):  # still running, or cut short
        return {}
