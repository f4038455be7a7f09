"""One run as the training loop (grok/training/loop.py) sees it: its splits, its progress, its
schedule, its live parts (`Experiment`, built by grok/run.py's start), and their training state as a
checkpoint holds it: saved, snapshotted in memory, restored."""

from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from grok.config import StopConfig
from grok.recording import Loggers
from grok.training.checkpoint import save_checkpoint

MEMORIZED, GROKKED = 0.99, 0.99  # accuracy thresholds for memorize_epoch and grok_epoch


def generalization_key(row: Dict[str, Any]) -> str:
    """The test accuracy grokking is read from: on the clean labels where a task has noisy ones."""
    return "test_acc_clean" if "test_acc_clean" in row else "test_acc"


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
    startup_seconds: Optional[float]  # everything before the first epoch (grok.run.startup_seconds)

    @cached_property
    def schedule(self) -> "Schedule":
        return Schedule.of(self)

    def training_state(self) -> Dict[str, Any]:
        """What a checkpoint holds besides the config: weights, optimizer (the gradient transforms'
        state rides in it), schedule, progress and RNG states. The weights are copies; the optimizer's
        state is the live one (torch.save writes it as it is; snapshot() copies it)."""
        cuda = self.device.type == "cuda"
        return {
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
        }

    def save(self) -> None:
        config = OmegaConf.to_container(self.cfg, resolve=True)
        save_checkpoint(self.run_dir / "checkpoints", self.state.epoch, {**self.training_state(), "config": config})

    def snapshot(self) -> Dict[str, Any]:
        """The training state copied into host memory (a GPU's memory may have no room for a second
        copy of every run's), for restore() to go back to."""
        return _copied_to_cpu(self.training_state())

    def restore(self, checkpoint: Dict[str, Any]) -> None:
        self.state = restore_training(
            checkpoint, self.model, self.optimizer, self.scheduler, self.generator, self.device
        )


def _copied_to_cpu(value: Any) -> Any:
    """`value` with each tensor in it copied into host memory, and its dicts, lists and tuples new."""
    if isinstance(value, Tensor):
        return value.to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copied_to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied_to_cpu(item) for item in value)
    return value


def restore_training(checkpoint: Dict[str, Any], model, optimizer, scheduler, generator, device) -> TrainState:
    """Load a checkpoint's (or a snapshot's) training state into the run's parts; returns its progress."""
    model.load_state_dict(checkpoint["model"])  # copied in place: a stacked run's parameters stay views
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    generator.set_state(checkpoint["rng"]["batches"])
    if device.type == "cuda" and checkpoint["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return TrainState(**checkpoint["state"])


@dataclass(frozen=True)
class Schedule:
    """A run's epoch counts from its config as plain numbers: the loop reads them every epoch, where
    an OmegaConf lookup costs ~10 µs."""

    epochs: int
    eval_every: int
    save_every: int
    analysis_every: Optional[int]  # None: no progress measures
    stop: StopConfig
    sync_seconds: float

    @staticmethod
    def of(experiment: "Experiment") -> "Schedule":
        cfg = experiment.cfg
        binary = experiment.train.labels.dim() == 1  # the progress measures are for binary operations
        return Schedule(
            epochs=cfg.epochs,
            eval_every=cfg.eval_every,
            save_every=cfg.save_every,
            analysis_every=cfg.analysis.every if cfg.analysis.name != "none" and binary else None,
            stop=StopConfig(**OmegaConf.to_container(cfg.stop)),
            sync_seconds=cfg.sync_seconds,
        )

    def evaluated(self, epoch: int) -> bool:
        return epoch % self.eval_every == 0 or epoch == self.epochs

    def last_epoch_of_block(self, epoch: int) -> int:
        """The first epoch from `epoch` on after which the run needs its weights as they are then: a
        checkpoint, progress measures, its last epoch. A block of epochs trained before the metrics
        come to the host ends there at the latest."""
        at = lambda every: -(-epoch // every) * every  # the first multiple of `every` >= epoch
        ends = [self.epochs, at(self.save_every)] + ([at(self.analysis_every)] if self.analysis_every else [])
        return min(ends)

    @property
    def may_stop_early(self) -> bool:
        return self.stop.test_acc is not None or self.stop.test_loss is not None
