"""One experiment, start to finish: config -> task data -> model -> training loop -> loggers -> outputs.

Everything a run writes goes into its run directory (Hydra's output directory, or the directory
being resumed): config.yaml, metrics.csv, checkpoints/, curves.png, wandb/ and, last of all,
summary.json. A summary.json with status "completed" is the one sign that a run finished.
"""

import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from grok.checkpoint import load_checkpoint, save_checkpoint
from grok.config import ConfigError, ProgressAnalysisConfig, validate
from grok.analysis import embedding_spectrum, key_frequencies
from grok.loggers import Loggers, WandbLogger, read_metrics
from grok.model import build_model
from grok.optim import build_optimizer
from grok.plots import plot_curves, plot_fourier_spectrum, plot_progress
from grok.slurm import (Preempted, PreemptionFlag, checkpoint_on_preemption, requeued_checkpoint, slurm_cpus,
                        stable_run_id)
from grok.speed import keep_freed_memory
from grok.tasks import make_dataset
from grok.training import Split, TrainState, train_loop

# What defines an experiment: a resumed run must agree with its checkpoint on all of these.
EXPERIMENT_KEYS = ("task", "model", "optimizer", "train_frac", "seed", "data_seed", "batch_size", "eval_every")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device is available here; use device=auto or device=cpu")
    return torch.device(name)


def write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def process_age() -> Optional[float]:
    """Seconds since this process started (Linux /proc; None elsewhere): the per-job start-up cost."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _check_same_experiment(cfg: DictConfig, saved: Dict[str, Any]) -> None:
    current = OmegaConf.to_container(cfg, resolve=True)
    for key in EXPERIMENT_KEYS:
        if current[key] != saved.get(key):
            raise ConfigError(f"resume: {key}={current[key]} differs from the checkpoint's {key}={saved.get(key)}")


def run(cfg: DictConfig, out_dir: Path, run_name: str = "run") -> Dict[str, Any]:
    """Run one experiment; return its summary. Failures write a 'failed' summary, then re-raise;
    a preempted run checkpoints, closes its loggers and hands the signal on (grok/slurm.py)."""
    with checkpoint_on_preemption() as preemption:
        return _run(cfg, out_dir, run_name, preemption)


def _run(cfg: DictConfig, out_dir: Path, run_name: str, preemption: PreemptionFlag) -> Dict[str, Any]:
    started = time.perf_counter()
    run_dir = Path(cfg.resume) if isinstance(cfg.resume, str) else out_dir
    loggers: Optional[Loggers] = None
    try:
        validate(cfg)
        threads = cfg.threads or slurm_cpus()
        if threads is not None:  # set per job: jobs sharing a joblib worker set their own
            torch.set_num_threads(threads)
        resume = bool(cfg.resume) or requeued_checkpoint(run_dir)
        checkpoint = load_checkpoint(run_dir) if resume else None
        if checkpoint is not None:
            _check_same_experiment(cfg, checkpoint["config"])
            (run_dir / "summary.json").unlink(missing_ok=True)  # the run is no longer finished
        device = resolve_device(cfg.device)
        keep_freed_memory()  # no page faults on every epoch's activations (grok/speed.py)

        data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
        clean = data.clean_labels
        to_split = lambda idx: Split(data.inputs[idx].to(device), data.labels[idx].to(device),
                                     None if clean is None else clean[idx].to(device))
        train, test = to_split(data.train_idx), to_split(data.test_idx)

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1]).to(device)
        optimizer, scheduler = build_optimizer(cfg.optimizer, model.parameters())
        generator = torch.Generator().manual_seed(cfg.seed)  # minibatch order
        state = TrainState(wandb_run_id=stable_run_id())
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            state = TrainState(**checkpoint["state"])
            torch.set_rng_state(checkpoint["rng"]["torch"])
            generator.set_state(checkpoint["rng"]["batches"])
            if device.type == "cuda" and checkpoint["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])

        config = OmegaConf.to_container(cfg, resolve=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        wandb = WandbLogger(cfg.logger, config, run_dir, state.wandb_run_id, run_name) if cfg.logger.name == "wandb" else None
        loggers = Loggers(run_dir, state.epoch if checkpoint else None, wandb)

        def save() -> None:
            save_checkpoint(run_dir / "checkpoints", state.epoch, {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": asdict(state),
                "rng": {"torch": torch.get_rng_state(), "batches": generator.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
                "config": config,
            })

        startup_seconds = process_age()  # imports, Hydra, data, model, W&B: everything before the first epoch
        train_loop(cfg, model, optimizer, scheduler, train, test, state, generator, loggers.log_epoch, save, preemption)
        if state.epoch % cfg.save_every != 0 and not state.stopped_early:
            save()  # the final checkpoint; the loop already saved on a round epoch or an early stop

        rows = read_metrics(run_dir / "metrics.csv")
        images = {"curves": run_dir / "curves.png"}
        plot_curves(rows, state.memorize_epoch, state.grok_epoch, images["curves"])
        if (run_dir / "analysis.csv").exists():
            images["progress"] = run_dir / "progress.png"
            plot_progress(rows, read_metrics(run_dir / "analysis.csv"), images["progress"])
        spectrum = embedding_spectrum(model, cfg.task.get("p"))
        if spectrum is not None:
            images["fourier_spectrum"] = run_dir / "fourier_spectrum.png"
            n_key = cfg.analysis.get("n_key_freqs", ProgressAnalysisConfig.n_key_freqs)
            plot_fourier_spectrum(spectrum.tolist(), key_frequencies(spectrum, n_key), images["fourier_spectrum"])
        final = {key: value for key, value in rows[-1].items() if key != "epoch"}
        summary = {
            "status": "completed",
            "memorize_epoch": state.memorize_epoch,
            "grok_epoch": state.grok_epoch,
            "epochs": state.epoch,
            "stopped_early": state.stopped_early,
            **final,
            "n_train": len(train.labels),
            "n_test": len(test.labels),
            "n_params": sum(p.numel() for p in model.parameters()),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "train_seconds": state.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "startup_seconds": startup_seconds,
            "epochs_per_second": state.epoch / max(state.train_seconds, 1e-9),
            "wandb_run_id": state.wandb_run_id if cfg.logger.name == "wandb" else None,
        }
        loggers.log_summary(summary, images)
        loggers.finish(False)
        write_json(run_dir / "summary.json", summary)
        return summary
    except Preempted:
        loggers.finish(False)  # the requeued job resumes this W&B run under the same id
        raise
    except BaseException as error:
        if loggers is not None:
            loggers.finish(True)
        reason = str(error) if isinstance(error, ConfigError) else traceback.format_exc(limit=-3).strip()
        target = run_dir if run_dir.is_dir() and not isinstance(error, ConfigError) else out_dir
        write_json(target / "summary.json", {"status": "failed", "error": reason, "error_type": type(error).__name__})
        raise
