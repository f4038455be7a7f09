"""The top-level configuration: its schema (registered in Hydra's ConfigStore as `base_config`, so a
misspelled top-level key fails at composition) and `validate`, which checks what types cannot.

The task, model, optimizer, loss and gradient transforms are plug-ins (grok/plugins.py): this module
knows none of them by name. `validate` merges each over its plug-in's own schema and runs its own
checks; every failure is a ConfigError with one line naming the field and what is allowed.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from grok.errors import ConfigError
from grok.plugins import TARGET, check, plugin, typed

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"  # the built-in options
PLUGIN_GROUPS = ("task", "model", "optimizer", "loss")
WANDB_MODES = ("offline", "online", "disabled")
# Summary fields a sweeper can optimize; an epoch never reached counts as the whole budget.
OBJECTIVES = ("grok_epoch", "memorize_epoch", "test_loss", "test_acc", "train_loss", "train_acc")


@dataclass
class LoggerConfig:
    """`logger=wandb` (offline by default: no account or network) or `logger=none` (metrics.csv only)."""

    name: str = "wandb"  # wandb | none
    project: str = "grok"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled; WANDB_MODE in the environment wins
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    job_type: str = "train"


@dataclass
class AnalysisConfig:
    """`analysis=progress`: progress measures every `every` epochs (grok/recording/analysis.py); `none`: off."""

    name: str = "progress"  # progress | none
    every: int = 100
    n_key_freqs: int = 5


@dataclass
class StopConfig:
    """Early stop once a threshold has held for `patience` consecutive evaluations."""

    test_acc: Optional[float] = None  # stop when test accuracy >= this
    test_loss: Optional[float] = None  # stop when test loss < this
    patience: int = 1


@dataclass
class Config:
    task: Any = MISSING  # plug-ins: each node's `_target_` names its implementation
    model: Any = MISSING
    optimizer: Any = MISSING
    loss: Any = MISSING
    transforms: Dict[str, Any] = field(default_factory=dict)  # gradient transforms, applied in this order
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    train_frac: float = 0.3
    epochs: int = 30000
    seed: int = 0  # model initialisation (and minibatch order)
    init_scale: float = 1.0  # every initial weight times this (Liu et al. 2023, Omnigrok: the initial weight norm)
    data_seed: int = 0  # the train/test split, random tables and label noise
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N
    compile: bool = False  # the whole epoch as one compiled graph; CUDA graphs on a GPU (grok/training/captured.py)
    tables: Optional[bool] = None  # the first layer from tables (grok/models/tables.py): None: on a CPU only
    batch_size: Optional[int] = None  # None: full batch
    eval_every: int = 1
    save_every: int = 5000
    sync_seconds: float = 0.5  # metrics stay on the device this long, then come to the host at once; 0: every epoch
    stop: StopConfig = field(default_factory=StopConfig)
    resume: Any = False  # true: this output dir; a path: that run dir
    progress: bool = True
    figures: bool = True  # curves.png, progress.png, fourier_spectrum.png as the run ends (and to W&B)
    threads: Optional[int] = None  # torch threads; None: SLURM's cpus_per_task, else PyTorch's default
    objective: str = "grok_epoch"  # the summary field train.py returns, for hydra/sweeper=optuna


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_top_level(cfg: Any) -> None:
    _require(0 < cfg.train_frac < 1, f"train_frac={cfg.train_frac}: must be in (0, 1)")
    _require(cfg.epochs >= 1, f"epochs={cfg.epochs}: must be >= 1")
    _require(cfg.eval_every >= 1, f"eval_every={cfg.eval_every}: must be >= 1")
    _require(cfg.save_every >= 1, f"save_every={cfg.save_every}: must be >= 1")
    _require(cfg.sync_seconds >= 0, f"sync_seconds={cfg.sync_seconds}: must be >= 0")
    _require(
        cfg.batch_size is None or cfg.batch_size >= 1,
        f"batch_size={cfg.batch_size}: must be >= 1, or null for full batch",
    )
    _require(cfg.stop.patience >= 1, f"stop.patience={cfg.stop.patience}: must be >= 1")
    _require(
        cfg.stop.test_acc is None or 0 < cfg.stop.test_acc <= 1,
        f"stop.test_acc={cfg.stop.test_acc}: must be in (0, 1], or null",
    )
    _require(
        cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"),
        f"device={cfg.device}: must be auto, cpu, cuda or cuda:N",
    )
    _require(
        isinstance(cfg.resume, bool) or (isinstance(cfg.resume, str) and cfg.resume != ""),
        f"resume={cfg.resume}: must be true, false or a run directory",
    )
    _require(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: must be >= 1, or null")
    _require(cfg.init_scale > 0, f"init_scale={cfg.init_scale}: must be > 0")
    _require(cfg.objective in OBJECTIVES, f"objective={cfg.objective}: must be one of {', '.join(OBJECTIVES)}")
    if cfg.analysis.name == "progress":
        _require(cfg.analysis.every >= 1, f"analysis.every={cfg.analysis.every}: must be >= 1")
        _require(cfg.analysis.n_key_freqs >= 1, f"analysis.n_key_freqs={cfg.analysis.n_key_freqs}: must be >= 1")
    if cfg.logger.name == "wandb":
        _require(
            cfg.logger.mode in WANDB_MODES, f"logger.mode={cfg.logger.mode}: must be one of {', '.join(WANDB_MODES)}"
        )


def _check_name(node: DictConfig, group: str) -> None:
    """`name` labels a run's outputs and `_target_` chooses its code: where the name is a built-in
    option's, the two must agree (`task.name=multiply` alone would train add, labelled multiply)."""
    option = CONF_DIR / group / f"{node.name}.yaml"
    target = OmegaConf.load(option).get(TARGET) if option.is_file() else node[TARGET]
    _require(
        target == node[TARGET],
        f"{group}.name={node.name}: names the option {group}={node.name} (code {target}), not "
        f"{group}._target_={node[TARGET]}; choose an option with {group}=NAME",
    )


def validate(cfg: DictConfig) -> DictConfig:
    """The config the run uses: each plug-in's node merged over its own schema (defaults filled in,
    `_target_` kept); raises ConfigError naming the first bad field."""
    _check_top_level(cfg)
    checked = OmegaConf.create(
        {
            key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg
            if key != "hydra"
        }
    )
    for group in PLUGIN_GROUPS:
        checked[group] = typed(cfg[group], group)
        _check_name(checked[group], group)
        check(checked[group], group)
    for key, node in (cfg.get("transforms") or {}).items():
        checked.transforms[key] = typed(node, f"transforms.{key}")
        _require(node.name == key, f"transforms.{key}.name={node.name}: must be its key in transforms, {key}")
        check(checked.transforms[key], f"transforms.{key}")
    task, model = plugin(checked.task, "task"), plugin(checked.model, "model")
    _require(
        model.reads_sequences or not task.sequences,
        f"model={checked.model.name}: cannot learn the sequence task={checked.task.name}: it reads a fixed number "
        "of operands, not sequences (its reads_sequences is false)",
    )
    OmegaConf.set_struct(checked, True)
    return checked


def run_dir_of(cfg: DictConfig, out_dir: Path) -> Path:
    """Where the run writes: the directory it resumes (resume=<dir>), else Hydra's output directory."""
    return Path(cfg.resume) if isinstance(cfg.resume, str) else out_dir
