"""One experiment, start to finish: config -> task data -> model -> training loop -> loggers -> outputs.

`start` assembles a run top to bottom (validated config, data, model, optimizer, checkpoint,
loggers); grok/training/loop.py trains it; `finish` writes its figures and summary, and
`record_failure` says why it did not finish.

Everything a run writes goes into its run directory (Hydra's output directory, or the directory
being resumed): config.yaml, metrics.csv, checkpoints/, the figures (curves.png, ...; not with
figures=false), wandb/ and, last of all, summary.json. A summary.json with status "completed" is
the one sign that a run finished; "interrupted" (a signal, grok/system/signals.py) and "failed" say
why it did not. One process at a time writes a run directory (grok/system/lock.py), and a command
refused before the run began writes nothing into it.
"""

import errno
import itertools
import os
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.utils.deterministic
from omegaconf import DictConfig, OmegaConf

from grok.config import run_dir_of, validate
from grok.data import make_dataset
from grok.errors import ConfigError, Refused
from grok.models import build_model
from grok.plugins import TARGET, plugin
from grok.recording import Loggers, WandbLogger
from grok.recording.analysis import embedding_spectrum, key_frequencies
from grok.recording.files import read_metrics, write_json
from grok.recording.plots import plot_curves, plot_fourier_spectrum, plot_progress
from grok.system.collector import skip_final_collections
from grok.system.lock import lock_run_dir, unlock_run_dir
from grok.system.signals import Interrupted, Preempted, stop_on_signals
from grok.system.slurm import requeued_checkpoint, stable_run_id
from grok.system.speed import flush_denormals, keep_freed_memory
from grok.system.threads import explicit_threads
from grok.training.checkpoint import load_checkpoint, remove_stale_temporaries
from grok.training.experiment import Experiment, Split, TrainState, restore_training
from grok.training.loop import Diverged, train_runs
from grok.training.memory import check_memory
from grok.training.optimizers import build_optimizer

# Everything that changes the math: a resumed run must agree with its checkpoint on all of these.
EXPERIMENT_KEYS = (
    "task",
    "model",
    "optimizer",
    "transforms",
    "loss",
    "train_frac",
    "seed",
    "data_seed",
    "init_scale",
    "batch_size",
    "eval_every",
)
# Keys added since some checkpoints were written: such a checkpoint trained with the default.
_DEFAULTS = {"transforms": {}, "init_scale": 1.0}
# The optimizer keys the gradient transforms had before they became the `transforms` group, at the
# values that meant "none": a checkpoint that holds them trained without transforms.
_LEGACY_OPTIMIZER = {"grokfast": None, "grokfast_alpha": 0.98, "grokfast_lamb": None, "grokfast_window": 100,
                     "grokfast_reduce": "mean", "grokfast_warmup": True, "orthograd": False}  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """The device named by `device=`; on a GPU, with PyTorch's deterministic kernels. CUDA's backward of
    a gather (index_select's, embedding's) sums with atomic adds, in an order that changes from call to
    call: on an H200 two runs of one command grokked at different epochs, a resumed run differed from
    the uninterrupted one, and a run stopped inside a block of epochs from one synced every epoch. The
    deterministic kernels sum in a fixed order (cuBLAS with a fixed workspace, as it asks). An operation
    that has none warns rather than stops the run. Memory PyTorch hands out uninitialized stays so
    (deterministic mode would fill it with NaN first: a kernel more per allocation); the models never
    read it before writing it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device is available here; use device=auto or device=cpu")
    if name.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    return torch.device(name)


def process_age() -> Optional[float]:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


_jobs_started = itertools.count()  # in this process, failed starts included


def startup_seconds(first_job: bool, job_started: float) -> Optional[float]:
    """The job's start-up, until now (its first epoch). A process's first job counts from the process's
    start, imports included; a later job in the same process (a joblib worker's next, the next of a
    sequential `-m`, a batched sweep's) from its own start, as the process's age would count the jobs
    before it."""
    age = process_age() if first_job else None
    return time.perf_counter() - job_started if age is None else age


_ABSENT = "(absent)"


def _first_difference(current: Any, saved: Any, field: str) -> Optional[str]:
    """The first leaf where two configs differ, as `field=current ... field=saved`; None when equal."""
    if isinstance(current, dict) and isinstance(saved, dict):
        for key in sorted((set(current) | set(saved)) - {TARGET}):  # the plug-in's name says which it is
            found = _first_difference(current.get(key, _ABSENT), saved.get(key, _ABSENT), f"{field}.{key}")
            if found:
                return found
        return None
    return None if current == saved else f"{field}={current} differs from the checkpoint's {field}={saved}"


def check_resumable(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """The checkpoint to resume from, when it holds the same experiment as `cfg`; else Refused."""
    checkpoint = load_checkpoint(run_dir)
    for key in EXPERIMENT_KEYS:
        current = OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
        saved = checkpoint["config"].get(key, _DEFAULTS.get(key, _ABSENT))  # a key newer than the checkpoint
        if key == "optimizer" and isinstance(saved, dict):
            saved = {k: v for k, v in saved.items() if k not in _LEGACY_OPTIMIZER or v != _LEGACY_OPTIMIZER[k]}
        difference = _first_difference(current, saved, key)
        if key == "transforms" and not difference and list(current) != list(saved):  # their order is the math's
            difference = f"transforms={list(current)} differ in order from the checkpoint's transforms={list(saved)}"
        if difference:
            raise Refused(f"resume: {difference}; resume with the run's own settings")
    return checkpoint


def run(cfg: DictConfig, out_dir: Path, run_name: str = "run") -> Dict[str, Any]:
    """Run one experiment; return its summary. Failures write a 'failed' summary, then re-raise; a
    run stopped by a signal checkpoints, closes its loggers, writes an 'interrupted' summary and
    raises grok.system.signals.Interrupted."""
    started = time.perf_counter()
    with stop_on_signals() as stop:
        try:
            experiment = start(cfg, out_dir, run_name, started)
        except BaseException as error:
            record_failure(error, cfg, out_dir, None)
            raise
        (result,) = train_runs([experiment], stop, end)
    if isinstance(result, BaseException):
        raise result
    return result


def end(experiment: Experiment, error: Optional[BaseException]) -> Any:
    """How the training loop ends a run: finished (its summary), or failed or interrupted by `error`."""
    if error is None:
        return finish(experiment)
    record_failure(error, experiment.cfg, experiment.run_dir, experiment)
    return error


def objective(summary: Dict[str, Any], cfg) -> float:
    """The value train.py returns to a sweeper: summary[cfg.objective]; an epoch never reached
    (never grokked, never memorized) scores as the whole epoch budget."""
    value = summary[cfg.objective]
    return float(cfg.epochs if value is None else value)


def start(cfg: DictConfig, out_dir: Path, run_name: str, started: float) -> Experiment:
    """Everything before the first epoch: validation, data, model, optimizer, checkpoint, loggers."""
    first_job = next(_jobs_started) == 0
    run_dir = run_dir_of(cfg, out_dir)
    flush_denormals()  # first, before anything starts PyTorch's threads (grok/system/speed.py)
    skip_final_collections()  # whatever runs it: train.py with any launcher, a SLURM job, a joblib worker
    cfg = validate(cfg)
    threads = explicit_threads(cfg)
    if threads is not None:  # set per job: jobs sharing a joblib worker set their own
        torch.set_num_threads(threads)
    resume = bool(cfg.resume) or requeued_checkpoint(run_dir)
    if resume and not run_dir.is_dir():
        raise ConfigError(f"resume: no run directory at {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)  # released by finish() or record_failure()
    for directory in (run_dir, run_dir / "checkpoints"):  # left by a writer killed mid-write
        remove_stale_temporaries(directory)
    checkpoint = check_resumable(cfg, run_dir) if resume else None
    device = resolve_device(cfg.device)
    check_memory(cfg, device)  # a run that would not fit is refused before anything is allocated
    keep_freed_memory()  # no page faults on every epoch's activations (grok/system/speed.py)
    run_id = checkpoint["state"]["wandb_run_id"] if checkpoint is not None else stable_run_id()
    wandb = None
    if cfg.logger.name == "wandb":  # now: W&B starts its run in its own process while the data and model are built
        wandb = WandbLogger(cfg.logger, OmegaConf.to_container(cfg, resolve=True), run_dir, run_id, run_name)
    try:
        data = make_dataset(cfg.task, cfg.train_frac, cfg.data_seed)
        clean = data.clean_labels
        to_split = lambda idx: Split(
            data.inputs[idx].to(device), data.labels[idx].to(device), None if clean is None else clean[idx].to(device)
        )
        train, test = to_split(data.train_idx), to_split(data.test_idx)

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1]).to(device)
        if cfg.init_scale != 1.0:
            with torch.no_grad():
                for param in model.parameters():
                    param.mul_(cfg.init_scale)
        optimizer, scheduler = build_optimizer(cfg.optimizer, cfg.transforms, model.parameters())
        generator = torch.Generator().manual_seed(cfg.seed)
        state = TrainState(wandb_run_id=run_id)
        if checkpoint is not None:
            state = restore_training(checkpoint, model, optimizer, scheduler, generator, device)

        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        loggers = Loggers(run_dir, state.epoch if checkpoint else None, wandb)
    except BaseException:
        if wandb is not None:
            wandb.finish(1)  # its W&B run began; record_failure() knows no experiment to close
        raise
    if checkpoint is not None:  # last: a resume that fails to start leaves the run's summary as it was
        (run_dir / "summary.json").unlink(missing_ok=True)  # the run is no longer finished
    return Experiment(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        model=model,
        loss_fn=plugin(cfg.loss, "loss"),
        fourier_sign=plugin(cfg.task, "task").fourier_sign,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=generator,
        train=train,
        test=test,
        state=state,
        loggers=loggers,
        started=started,
        startup_seconds=startup_seconds(first_job, started),
    )


FIGURES = ("curves", "progress", "fourier_spectrum")  # <name>.png in the run dir, <name> in W&B


def draw_figures(experiment: Experiment, rows: List[Dict[str, float]]) -> Dict[str, Path]:
    """The end-of-run figures, written into the run dir; returns their paths by W&B name. With
    `figures=false` none, and none left from before a resume (they would show fewer epochs)."""
    cfg, state, run_dir = experiment.cfg, experiment.state, experiment.run_dir
    paths = {name: run_dir / f"{name}.png" for name in FIGURES}
    if not cfg.figures:
        for path in paths.values():
            path.unlink(missing_ok=True)
        return {}
    images = {"curves": paths["curves"]}
    plot_curves(rows, state.memorize_epoch, state.grok_epoch, images["curves"])
    if (run_dir / "analysis.csv").exists():
        images["progress"] = paths["progress"]
        plot_progress(rows, read_metrics(run_dir / "analysis.csv"), images["progress"])
    spectrum = embedding_spectrum(experiment.model, cfg.task.get("p"))
    if spectrum is not None:
        images["fourier_spectrum"] = paths["fourier_spectrum"]
        frequencies = key_frequencies(spectrum, cfg.analysis.n_key_freqs)
        plot_fourier_spectrum(spectrum.tolist(), frequencies, images["fourier_spectrum"])
    return images


def finish(experiment: Experiment) -> Dict[str, Any]:
    """After the last epoch: the final checkpoint, the figures, summary.json; returns the summary."""
    cfg, state, run_dir, model = experiment.cfg, experiment.state, experiment.run_dir, experiment.model
    if state.epoch % cfg.save_every != 0 and not state.stopped_early:
        experiment.save()  # the final checkpoint; the loop already saved on a round epoch or an early stop

    rows = read_metrics(run_dir / "metrics.csv")
    images = draw_figures(experiment, rows)
    final = {key: value for key, value in rows[-1].items() if key != "epoch"}
    summary = {
        "status": "completed",
        "memorize_epoch": state.memorize_epoch,
        "grok_epoch": state.grok_epoch,
        "epochs": state.epoch,
        "stopped_early": state.stopped_early,
        **final,
        "n_train": len(experiment.train.labels),
        "n_test": len(experiment.test.labels),
        "n_params": sum(p.numel() for p in model.parameters()),
        "device": str(experiment.device),
        "threads": torch.get_num_threads(),
        "train_seconds": state.train_seconds,
        "wall_seconds": time.perf_counter() - experiment.started,
        "startup_seconds": experiment.startup_seconds,
        "epochs_per_second": state.epoch / max(state.train_seconds, 1e-9),
        "wandb_run_id": state.wandb_run_id if cfg.logger.name == "wandb" else None,
    }
    experiment.loggers.log_summary(summary, images)
    experiment.loggers.finish(0)
    write_json(run_dir / "summary.json", summary)
    unlock_run_dir(run_dir)
    return summary


def record_failure(error: BaseException, cfg: DictConfig, out_dir: Path, experiment: Optional[Experiment]) -> None:
    """A run that stops without finishing. Stopped by a signal, it has checkpointed its last epoch:
    its loggers close and summary.json says 'interrupted'. Any other error writes a 'failed'
    summary.json, except into an existing run when the command failed before it began (a bad
    config, a mismatched resume, a run directory in use): that run stays as it was."""
    run_dir = run_dir_of(cfg, out_dir)
    try:
        if experiment is not None:
            exit_code = 0 if isinstance(error, Preempted) else getattr(error, "exit_code", 1)  # 0: requeued, resumes
            experiment.loggers.finish(exit_code)
        if isinstance(error, Interrupted):
            write_json(
                run_dir / "summary.json",
                {"status": "interrupted", "signal": error.signum.name, "epochs": error.epoch, "error": str(error)},
            )
            return
        target = run_dir if experiment is not None else out_dir
        existing_run = any(
            (target / name).exists() for name in ("summary.json", "metrics.csv", "checkpoints", "config.yaml")
        )
        if (
            experiment is None
            and target.resolve() == run_dir.resolve()
            and (existing_run or isinstance(error, Refused))
        ):
            return  # refused before it began: another run's files are not this command's to change
        reason = failure_reason(error)
        write_json(target / "summary.json", {"status": "failed", "error": reason, "error_type": type(error).__name__})
    except OSError:
        pass  # a full disk: the error itself is what the user needs to see
    finally:
        unlock_run_dir(run_dir)


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def failure_reason(error: BaseException) -> str:
    """What went wrong, in one line where the user can act on it (a config value, divergence, a
    full disk); else the last frames of the traceback."""
    if isinstance(error, (ConfigError, Diverged)):
        return str(error)
    if isinstance(error, OSError) and error.errno in DISK_ERRORS:
        return f"cannot write {error.filename}: {error.strerror}" if error.filename else str(error)
    return "".join(traceback.format_exception(error, limit=-3)).strip()
