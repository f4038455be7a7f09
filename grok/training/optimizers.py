"""The optimizers (torch.optim's, without the import that costs its first call 1.4-1.7 s), their
learning-rate schedule (a linear warmup, as in seed 001), and the gradient transforms of
grok/training/transforms.py. Each optimizer is one plug-in entry, named by
`optimizer._target_` (conf/optimizer/adamw.yaml: `_target_: grok.training.optimizers.adamw`)."""

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from omegaconf import MISSING
from torch.optim.adam import adam as adam_update  # the functional form of Adam's and AdamW's step
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from grok.errors import ConfigError
from grok.plugins import plugin
from grok.training.transforms import attach_transforms


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


@dataclass(frozen=True)
class TorchOptimizer:
    """One of torch.optim's optimizers: `make(params, cfg)` builds it."""

    make: Callable[[List[torch.nn.Parameter], Any], torch.optim.Optimizer]
    Config: type = OptimizerConfig

    def check(self, cfg) -> None:
        if cfg.lr <= 0:
            raise ConfigError(f"optimizer.lr={cfg.lr}: must be > 0")
        if cfg.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay={cfg.weight_decay}: must be >= 0")
        if cfg.warmup_steps < 0:
            raise ConfigError(f"optimizer.warmup_steps={cfg.warmup_steps}: must be >= 0")
        if "betas" in cfg and not (len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas)):
            raise ConfigError(f"optimizer.betas={list(cfg.betas)}: must be two numbers in [0, 1)")


# what torch.optim.Optimizer wraps in torch._disable_dynamo (torch 2.13), besides each optimizer's step;
# taken from the optimizer's own class, in case it overrides one
_WRAPPED = ("zero_grad", "add_param_group", "state_dict", "load_state_dict")
# torch's own wrappers of those methods, (file, function): the dynamo guard, step's grad-mode switch,
# and what Optimizer.__init__ puts around step to call its hooks (each optimizer class gets its own)
_TORCH_WRAPPERS = {("_compile.py", "inner"), ("optim/optimizer.py", "_use_grad"), ("optim/optimizer.py", "wrapper")}
_TORCH_DIR = Path(torch.__file__).parent


def _is_torch_wrapper(function) -> bool:
    code = getattr(function, "__code__", None)
    if code is None or not Path(code.co_filename).is_relative_to(_TORCH_DIR):
        return False
    return (Path(code.co_filename).relative_to(_TORCH_DIR).as_posix(), code.co_name) in _TORCH_WRAPPERS


def _without_torch_wrappers(method):
    """`method` without torch's own wrappers; a wrapper of anyone else's stays, with all it wraps."""
    return inspect.unwrap(method, stop=lambda function: not _is_torch_wrapper(function))


def without_dynamo_import(optimizer_class: type) -> type:
    """`optimizer_class` (a torch.optim optimizer) with the same math, but whose methods do not import
    torch._dynamo. torch.optim wraps its optimizers' step, zero_grad, add_param_group, state_dict and
    load_state_dict so that a compiled caller cannot trace into them, and the wrapper imports
    torch._dynamo on the first call: 1.4-1.7 s, 40% of a run's start-up (docs/performance.md), for a
    run that compiles nothing. Here they run without torch's wrappers. grok's compiled epoch never
    calls them (compile=true writes the update out, grok/training/captured.py), and it imports
    torch._dynamo itself. A step also bumps the weights' autograd versions, as unfused kernels do."""
    raw_step = _without_torch_wrappers(optimizer_class.step)

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):  # as torch.optim's wrapper does
            loss = raw_step(self, closure)
        # the fused kernels change the weights in place without telling autograd (their versions stay):
        # this does, so that what is keyed by a weight's version (grok/models/tables.py) sees the step
        torch.autograd.graph.increment_version([p for group in self.param_groups for p in group["params"]])
        return loss

    methods = {name: _without_torch_wrappers(getattr(optimizer_class, name)) for name in _WRAPPED}
    name = optimizer_class.__name__
    return type(name, (optimizer_class,), {**methods, "step": step, "__module__": __name__, "__qualname__": name})


AdamW, Adam, SGD = (without_dynamo_import(c) for c in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD))

# Adam's fused kernels: one per parameter tensor, on a GPU and on a CPU alike; there a step takes a
# third to a quarter of the time of PyTorch's default loop over the tensors (docs/performance.md)
adamw = TorchOptimizer(
    lambda params, cfg: AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=True),
    AdamConfig,
)
# weight decay as an L2 term in the gradient
adam = TorchOptimizer(
    lambda params, cfg: Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=True),
    AdamConfig,
)
sgd = TorchOptimizer(
    lambda params, cfg: SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
    SGDConfig,
)


def step_hooks(optimizer: torch.optim.Optimizer) -> Optional[str]:
    """What hooks run around the optimizer's steps (a step grok writes out or joins with others' would
    run them at the wrong time, or not at all), or None."""
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return "hooks are attached to the optimizer's step"
    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        return "hooks are attached to every optimizer's step"
    return None


def _joint_step_key(optimizer: torch.optim.Optimizer) -> Optional[Tuple]:
    """What an optimizer's step must share with others' to run in one fused call with them; None
    where it takes its own: not grok's fused Adam or AdamW, more than one parameter group, an option
    the joint call does not pass on (or a torch without it), a hook around its steps (gradient
    transforms), or a state that its first step has yet to create (as torch creates it)."""
    if type(optimizer) not in (AdamW, Adam) or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    # torch before 2.7 has no decoupled_weight_decay (AdamW a class apart): there each steps alone
    options = (
        group["fused"]
        and "decoupled_weight_decay" in group
        and not (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"])
    )
    params = group["params"]
    started = len(optimizer.state) == len(params) and all(param.grad is not None for param in params)
    if not (options and isinstance(group["lr"], float) and step_hooks(optimizer) is None and started):
        return None
    return group["lr"], tuple(group["betas"]), group["weight_decay"], group["eps"], group["decoupled_weight_decay"]


def step_together(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Each optimizer's step. Those of grok's fused Adam and AdamW whose hyperparameters agree step in
    one fused call (its kernel is elementwise: the same numbers as their own steps), not in one
    Python step each: for 64 runs of a stack those steps held a GPU idle (docs/performance.md). The
    others (_joint_step_key) take their own step."""
    together: Dict[Tuple, List[torch.optim.Optimizer]] = {}
    for optimizer in optimizers:
        key = _joint_step_key(optimizer)
        if key is None:
            optimizer.step()
        else:
            together.setdefault(key, []).append(optimizer)
    for (lr, (beta1, beta2), weight_decay, eps, decoupled), members in together.items():
        params = [param for optimizer in members for param in optimizer.param_groups[0]["params"]]
        states = [optimizer.state[param] for optimizer in members for param in optimizer.param_groups[0]["params"]]
        with torch.no_grad():  # as torch.optim's step: in place on the weights, not recorded
            adam_update(
                params,
                [param.grad for param in params],
                [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states],
                [],
                [state["step"] for state in states],
                fused=True,
                decoupled_weight_decay=decoupled,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=lr,
                weight_decay=weight_decay,
                eps=eps,
                maximize=False,
            )
        torch.autograd.graph.increment_version(params)  # as grok's own step does


class LinearWarmup:
    """lr factor step/warmup_steps, capped at 1; step 0 trains at lr 0 like Nanda et al.'s code."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0


def build_optimizer(
    cfg, transforms: Dict[str, Any], params: Iterable[torch.nn.Parameter]
) -> Tuple[torch.optim.Optimizer, LambdaLR]:
    """The optimizer of `cfg` (cfg.optimizer) over `params`, the gradient transforms of `transforms`
    (cfg.transforms) before each of its steps, and its warmup schedule."""
    params = list(params)
    optimizer = plugin(cfg, "optimizer").make(params, cfg)
    attach_transforms(optimizer, params, transforms)
    return optimizer, LambdaLR(optimizer, LinearWarmup(cfg.warmup_steps))
