"""The typed configuration: schemas registered in Hydra's ConfigStore, and the checks of values.

Each option of a group (`task/add.yaml`, `model/mlp.yaml`, ...) extends one of the schemas below,
so a misspelled key fails at start-up. `validate` then checks what types cannot: ranges, primes,
shapes. It raises `ConfigError` with one line naming the field and what is allowed.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value outside what is allowed; the message is one line for the user."""


# ----------------------------------------------------------------------------- task
@dataclass
class ModularTaskConfig:
    """A binary operation on Z_p; inputs [a, b, =], label in Z_p."""

    name: str = MISSING
    p: int = 97


@dataclass
class NoisyLabelTaskConfig(ModularTaskConfig):
    """(a + b) mod p with Binomial(noise, 1/2) - noise/2 added to the label before the mod."""

    noise: int = 4


# ----------------------------------------------------------------------------- model
@dataclass
class TransformerConfig:
    name: str = "transformer"
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act: str = "relu"
    layer_norm: bool = False


@dataclass
class MLPConfig:
    name: str = "mlp"
    d_model: int = 128
    d_mlp: int = 512
    act: str = "relu"


# ----------------------------------------------------------------------------- optimizer
@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 1.0
    warmup_steps: int = 10  # linear warmup from 0, as in seed 001


@dataclass
class AdamConfig(OptimizerConfig):
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = 0.9


# ----------------------------------------------------------------------------- logger
@dataclass
class WandbLoggerConfig:
    name: str = "wandb"
    project: str = "grok"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled; WANDB_MODE in the environment wins
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    job_type: str = "train"


@dataclass
class NoLoggerConfig:
    name: str = "none"


# ----------------------------------------------------------------------------- top level
@dataclass
class StopConfig:
    """Early stop once a threshold has held for `patience` consecutive evaluations."""

    test_acc: Optional[float] = None  # stop when test accuracy >= this
    test_loss: Optional[float] = None  # stop when test loss < this
    patience: int = 1


@dataclass
class Config:
    task: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    logger: Any = MISSING
    train_frac: float = 0.3
    epochs: int = 30000
    seed: int = 0  # model initialisation (and minibatch order)
    data_seed: int = 0  # the train/test split, random tables and label noise
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N
    batch_size: Optional[int] = None  # None: full batch
    eval_every: int = 1
    save_every: int = 5000
    stop: StopConfig = field(default_factory=StopConfig)
    resume: Any = False  # true: this output dir; a path: that run dir
    progress: bool = True


def register_configs() -> None:
    """Schemas live in `schema/<group>`; each option file in conf/<group>/ extends one of them."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, name, node in (
        ("task", "modular", ModularTaskConfig),
        ("task", "noisy_label", NoisyLabelTaskConfig),
        ("model", "transformer", TransformerConfig),
        ("model", "mlp", MLPConfig),
        ("optimizer", "adam", AdamConfig),
        ("optimizer", "sgd", SGDConfig),
        ("logger", "wandb", WandbLoggerConfig),
        ("logger", "none", NoLoggerConfig),
    ):
        cs.store(group=f"schema/{group}", name=name, node=node)


# ----------------------------------------------------------------------------- checks
ACTIVATIONS = ("relu", "gelu")
WANDB_MODES = ("offline", "online", "disabled")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Any) -> None:
    """Check the values that types cannot; raise ConfigError naming the first bad field."""
    from grok.tasks import TASKS  # the task registry owns which tasks exist and what they need

    task, model, opt = cfg.task, cfg.model, cfg.optimizer
    _require(0 < cfg.train_frac < 1, f"train_frac={cfg.train_frac}: must be in (0, 1)")
    _require(cfg.epochs >= 1, f"epochs={cfg.epochs}: must be >= 1")
    _require(cfg.eval_every >= 1, f"eval_every={cfg.eval_every}: must be >= 1")
    _require(cfg.save_every >= 1, f"save_every={cfg.save_every}: must be >= 1")
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
        isinstance(cfg.resume, (bool, str)),
        f"resume={cfg.resume}: must be true, false or a run directory",
    )

    _require(task.name in TASKS, f"task.name={task.name}: must be one of {', '.join(TASKS)}")
    _require(task.p >= 2, f"task.p={task.p}: must be >= 2")
    if TASKS[task.name].needs_prime:
        _require(is_prime(task.p), f"task.p={task.p}: task={task.name} needs a prime p")
    if "noise" in task:
        _require(task.noise >= 0, f"task.noise={task.noise}: must be >= 0")

    _require(model.d_model >= 1, f"model.d_model={model.d_model}: must be >= 1")
    _require(model.d_mlp >= 1, f"model.d_mlp={model.d_mlp}: must be >= 1")
    _require(model.act in ACTIVATIONS, f"model.act={model.act}: must be one of {', '.join(ACTIVATIONS)}")
    if model.name == "transformer":
        _require(model.n_layers >= 1, f"model.n_layers={model.n_layers}: must be >= 1")
        _require(model.n_heads >= 1, f"model.n_heads={model.n_heads}: must be >= 1")
        _require(
            model.d_model % model.n_heads == 0,
            f"model.d_model={model.d_model}: must be divisible by model.n_heads={model.n_heads}",
        )

    _require(opt.lr > 0, f"optimizer.lr={opt.lr}: must be > 0")
    _require(opt.weight_decay >= 0, f"optimizer.weight_decay={opt.weight_decay}: must be >= 0")
    _require(opt.warmup_steps >= 0, f"optimizer.warmup_steps={opt.warmup_steps}: must be >= 0")
    if "betas" in opt:
        _require(
            len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
            f"optimizer.betas={list(opt.betas)}: must be two numbers in [0, 1)",
        )

    if cfg.logger.name == "wandb":
        _require(
            cfg.logger.mode in WANDB_MODES,
            f"logger.mode={cfg.logger.mode}: must be one of {', '.join(WANDB_MODES)}",
        )
