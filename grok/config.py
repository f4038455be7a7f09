"""The typed configuration: schemas registered in Hydra's ConfigStore, and the checks of values.

Each option of a group (`task/add.yaml`, `model/mlp.yaml`, ...) extends one of the schemas below,
so a misspelled key fails at start-up. `validate` then checks what types cannot: ranges, primes,
shapes. It raises `ConfigError` with one line naming the field and what is allowed.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class ConfigError(ValueError):
    """A config value outside what is allowed; the message is one line for the user."""


class Refused(ConfigError):
    """A command refused before it changed anything: a resume that does not match its checkpoint, a
    run directory another process is writing. It writes nothing into the run it refused."""


# ----------------------------------------------------------------------------- task
@dataclass
class ModularTaskConfig:
    """A binary operation on Z_p; inputs [a, b, =], label in Z_p."""

    name: str = MISSING
    p: int = 97
    label_noise_frac: float = 0.0  # this fraction of the training labels replaced by uniform ones


@dataclass
class NoisyLabelTaskConfig(ModularTaskConfig):
    """(a + b) mod p with Binomial(noise, 1/2) - noise/2 added to the label before the mod."""

    noise: int = 4


@dataclass
class ExprTaskConfig(ModularTaskConfig):
    """A formula in x, y and p (grok/expr.py), taken mod p; pairs where it divides by 0 are left out."""

    expr: str = "(x**2 + 3*x*y) % p"


@dataclass
class PermutationTaskConfig:
    """A binary operation on S_n: n! elements, token k the k-th of itertools.permutations(range(n))."""

    name: str = MISSING
    n: int = 5
    label_noise_frac: float = 0.0


@dataclass
class DigitTaskConfig:
    """Arithmetic written out character by character (grok/sequences.py); `digits` per operand."""

    name: str = MISSING
    digits: int = 2
    reverse: bool = True  # answer digits least significant first
    n_problems: Optional[int] = None  # None: every problem; a number: that many drawn, split by hash


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
class GPTConfig:
    name: str = "gpt"
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act: str = "gelu"


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
    # Grokking accelerators (grok/accelerators.py), off by default.
    grokfast: Optional[str] = None  # null | ema | ma: Grokfast gradient filter (Lee et al. 2024)
    grokfast_alpha: float = 0.98  # ema: decay of the moving average
    grokfast_lamb: Optional[float] = None  # amplification; null: 2.0 for ema, 5.0 for ma
    grokfast_window: int = 100  # ma: number of past gradients
    grokfast_reduce: str = "mean"  # ma: mean | sum of the window
    grokfast_warmup: bool = True  # ma: filter only once the window is full
    orthograd: bool = False  # ⊥Grad: gradient orthogonal to the weights (Prieto et al. 2025)


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


# ----------------------------------------------------------------------------- loss, analysis
@dataclass
class LossConfig:
    name: str = MISSING  # cross_entropy | stablemax (grok/losses.py)


@dataclass
class ProgressAnalysisConfig:
    name: str = "progress"
    every: int = 100  # epochs between progress measures (grok/analysis.py)
    n_key_freqs: int = 5


@dataclass
class NoAnalysisConfig:
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
    loss: Any = MISSING
    analysis: Any = MISSING
    train_frac: float = 0.3
    epochs: int = 30000
    seed: int = 0  # model initialisation (and minibatch order)
    data_seed: int = 0  # the train/test split, random tables and label noise
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the model for training; CUDA graphs on a GPU (grok/speed.py)
    batch_size: Optional[int] = None  # None: full batch
    eval_every: int = 1
    save_every: int = 5000
    stop: StopConfig = field(default_factory=StopConfig)
    resume: Any = False  # true: this output dir; a path: that run dir
    progress: bool = True
    threads: Optional[int] = None  # torch threads; None: SLURM's cpus_per_task, else PyTorch's default
    objective: str = "grok_epoch"  # the summary field train.py returns, for hydra/sweeper=optuna


def register_configs() -> None:
    """Schemas live in `schema/<group>`; each option file in conf/<group>/ extends one of them."""
    from grok.system.slurm import cluster_gpus
    from grok.sweeps.named import sweep_group

    OmegaConf.register_new_resolver("grok_slurm_gpus", cluster_gpus, replace=True)
    OmegaConf.register_new_resolver("grok_sweep_group", sweep_group, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, name, node in (
        ("task", "modular", ModularTaskConfig),
        ("task", "noisy_label", NoisyLabelTaskConfig),
        ("task", "expr", ExprTaskConfig),
        ("task", "permutation", PermutationTaskConfig),
        ("task", "digits", DigitTaskConfig),
        ("model", "gpt", GPTConfig),
        ("model", "transformer", TransformerConfig),
        ("model", "mlp", MLPConfig),
        ("optimizer", "adam", AdamConfig),
        ("optimizer", "sgd", SGDConfig),
        ("logger", "wandb", WandbLoggerConfig),
        ("logger", "none", NoLoggerConfig),
        ("loss", "loss", LossConfig),
        ("analysis", "progress", ProgressAnalysisConfig),
        ("analysis", "none", NoAnalysisConfig),
    ):
        cs.store(group=f"schema/{group}", name=name, node=node)


# ----------------------------------------------------------------------------- checks
ACTIVATIONS = ("relu", "gelu")
WANDB_MODES = ("offline", "online", "disabled")
# Summary fields a sweeper can optimize; an epoch never reached counts as the whole budget.
OBJECTIVES = ("grok_epoch", "memorize_epoch", "test_loss", "test_acc", "train_loss", "train_acc")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_task(task: Any, kind: Any) -> None:
    """The keys of each task schema: p (Z_p), n (S_n), expr, noise levels, digits (sequence tasks)."""
    from grok.data.expr import parse_expr
    from grok.data.sequences import MAX_LISTED, count_problems

    if "p" in task:
        _require(task.p >= 2, f"task.p={task.p}: must be >= 2")
    if kind.needs_prime:
        _require(is_prime(task.p), f"task.p={task.p}: task={task.name} needs a prime p")
    if "n" in task:
        _require(2 <= task.n <= 6, f"task.n={task.n}: must be in 2..6 (S_n has n! elements, (n!)^2 pairs)")
    if "expr" in task:
        parse_expr(task.expr)
    if "noise" in task:
        _require(task.noise >= 0, f"task.noise={task.noise}: must be >= 0")
    if "label_noise_frac" in task:
        _require(0 <= task.label_noise_frac < 1, f"task.label_noise_frac={task.label_noise_frac}: must be in [0, 1)")
    if "digits" in task:
        _require(1 <= task.digits <= 18, f"task.digits={task.digits}: must be in 1..18")
        _require(
            task.n_problems is None or task.n_problems >= 2,
            f"task.n_problems={task.n_problems}: must be >= 2, or null for every problem",
        )
        _require(
            task.n_problems is not None or count_problems(task) <= MAX_LISTED,
            f"task.n_problems=null: task={task.name} with digits={task.digits} has {count_problems(task)} "
            f"problems, more than {MAX_LISTED} to list; set task.n_problems to sample",
        )


def validate(cfg: Any) -> None:
    """Check the values that types cannot; raise ConfigError naming the first bad field."""
    from grok.data.tasks import TASKS  # the task registry owns which tasks exist and what they need

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
    _require(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: must be >= 1, or null")
    _require(cfg.objective in OBJECTIVES, f"objective={cfg.objective}: must be one of {', '.join(OBJECTIVES)}")

    _require(task.name in TASKS, f"task.name={task.name}: must be one of {', '.join(TASKS)}")
    _validate_task(task, TASKS[task.name])
    _require(
        model.name != "mlp" or not TASKS[task.name].sequence,
        f"model=mlp: reads two operands and cannot learn the sequence task={task.name}; use model=gpt or transformer",
    )

    _require(model.d_model >= 1, f"model.d_model={model.d_model}: must be >= 1")
    _require(model.d_mlp >= 1, f"model.d_mlp={model.d_mlp}: must be >= 1")
    _require(model.act in ACTIVATIONS, f"model.act={model.act}: must be one of {', '.join(ACTIVATIONS)}")
    if model.name in ("transformer", "gpt"):
        _require(model.n_layers >= 1, f"model.n_layers={model.n_layers}: must be >= 1")
        _require(model.n_heads >= 1, f"model.n_heads={model.n_heads}: must be >= 1")
        _require(
            model.d_model % model.n_heads == 0,
            f"model.d_model={model.d_model}: must be divisible by model.n_heads={model.n_heads}",
        )
    if model.name == "gpt":
        _require(
            model.d_model // model.n_heads % 2 == 0,
            f"model.d_model={model.d_model}: d_model / n_heads must be even for rotary positions",
        )

    _require(opt.lr > 0, f"optimizer.lr={opt.lr}: must be > 0")
    _require(opt.weight_decay >= 0, f"optimizer.weight_decay={opt.weight_decay}: must be >= 0")
    _require(opt.warmup_steps >= 0, f"optimizer.warmup_steps={opt.warmup_steps}: must be >= 0")
    _require(opt.grokfast in (None, "ema", "ma"), f"optimizer.grokfast={opt.grokfast}: must be ema, ma or null")
    _require(0 <= opt.grokfast_alpha < 1, f"optimizer.grokfast_alpha={opt.grokfast_alpha}: must be in [0, 1)")
    _require(opt.grokfast_window >= 1, f"optimizer.grokfast_window={opt.grokfast_window}: must be >= 1")
    _require(opt.grokfast_reduce in ("mean", "sum"), f"optimizer.grokfast_reduce={opt.grokfast_reduce}: must be mean or sum")
    if "betas" in opt:
        _require(
            len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
            f"optimizer.betas={list(opt.betas)}: must be two numbers in [0, 1)",
        )

    from grok.training.losses import LOSSES

    _require(cfg.loss.name in LOSSES, f"loss.name={cfg.loss.name}: must be one of {', '.join(LOSSES)}")
    if cfg.analysis.name == "progress":
        _require(cfg.analysis.every >= 1, f"analysis.every={cfg.analysis.every}: must be >= 1")
        _require(cfg.analysis.n_key_freqs >= 1, f"analysis.n_key_freqs={cfg.analysis.n_key_freqs}: must be >= 1")

    if cfg.logger.name == "wandb":
        _require(
            cfg.logger.mode in WANDB_MODES,
            f"logger.mode={cfg.logger.mode}: must be one of {', '.join(WANDB_MODES)}",
        )
