"""Gradient transforms: what a trick does to the gradients between backward and the optimizer step.

Each is one class, selected by `transforms=[...]` (conf/transforms/, several at once, applied in the
order given) and named there by `_target_`. A transform is built as `Transform(params, cfg)`, called
with no arguments to edit each `p.grad` in place, and carries its history in `state_dict()` /
`load_state_dict()`, which ride in the optimizer's state_dict: a checkpoint holds them and a resumed
run continues exactly.

- Grokfast (Lee et al. 2024) amplifies the slow component of the gradient: `GrokfastEMA` adds lamb
  times an exponential moving average (alpha) of past gradients; `GrokfastMA` adds lamb times the
  mean (or sum) of the last `window` gradients, from the step the window is full when `warmup` is on.
- ⊥Grad (Prieto et al. 2025), `OrthoGrad`, removes the gradient's component along the weights (the
  direction that only scales the logits up, towards softmax collapse) and rescales it to its norm.
"""

from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional

import torch
from omegaconf import MISSING
from torch import Tensor

from grok.errors import ConfigError
from grok.plugins import plugin

STATE_KEY = "transforms"  # the transforms' states in the optimizer's state_dict, by their key in cfg.transforms


class GrokfastEMA:
    @dataclass
    class Config:
        name: str = MISSING
        alpha: float = 0.98  # decay of the moving average
        lamb: float = 2.0  # amplification (Lee et al.'s default)

    @staticmethod
    def check(cfg) -> None:
        if not 0 <= cfg.alpha < 1:
            raise ConfigError(f"transforms.{cfg.name}.alpha={cfg.alpha}: must be in [0, 1)")

    def __init__(self, params: List[torch.nn.Parameter], cfg):
        self.params, self.alpha, self.lamb = params, cfg.alpha, cfg.lamb
        self.ema: List[Optional[Tensor]] = [None] * len(params)

    def __call__(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.ema[i] is None:
                self.ema[i] = p.grad.detach().clone()
            else:
                self.ema[i].mul_(self.alpha).add_(p.grad, alpha=1 - self.alpha)
            p.grad.add_(self.ema[i], alpha=self.lamb)

    def state_dict(self) -> dict:
        return {"ema": list(self.ema)}

    def load_state_dict(self, state: dict) -> None:  # a checkpoint is read onto the CPU
        self.ema = [None if ema is None else ema.to(p.device) for ema, p in zip(state["ema"], self.params)]


class GrokfastMA:
    @dataclass
    class Config:
        name: str = MISSING
        window: int = 100  # number of past gradients
        lamb: float = 5.0  # amplification (Lee et al.'s default)
        reduce: str = "mean"  # mean | sum of the window
        warmup: bool = True  # filter only once the window is full

    @staticmethod
    def check(cfg) -> None:
        if cfg.window < 1:
            raise ConfigError(f"transforms.{cfg.name}.window={cfg.window}: must be >= 1")
        if cfg.reduce not in ("mean", "sum"):
            raise ConfigError(f"transforms.{cfg.name}.reduce={cfg.reduce}: must be mean or sum")

    def __init__(self, params: List[torch.nn.Parameter], cfg):
        self.params, self.window, self.lamb, self.reduce, self.warmup = (
            params,
            cfg.window,
            cfg.lamb,
            cfg.reduce,
            cfg.warmup,
        )
        self.history: List[Deque[Tensor]] = [deque(maxlen=cfg.window) for _ in params]

    def __call__(self) -> None:
        for p, history in zip(self.params, self.history):
            if p.grad is None:
                continue
            history.append(p.grad.detach().clone())
            if self.warmup and len(history) < self.window:
                continue
            total = torch.stack(tuple(history)).sum(0)
            p.grad.add_(total / len(history) if self.reduce == "mean" else total, alpha=self.lamb)

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [
            deque((g.to(p.device) for g in h), maxlen=self.window) for h, p in zip(state["history"], self.params)
        ]


class OrthoGrad:
    """⊥Grad: g <- (g - (g.w / w.w) w) * |g| / |g - (g.w / w.w) w|, per parameter tensor."""

    @dataclass
    class Config:
        name: str = MISSING
        eps: float = 1e-30

    def __init__(self, params: List[torch.nn.Parameter], cfg):
        self.params, self.eps = params, cfg.eps

    def __call__(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            w, g = p.detach().flatten(), p.grad.flatten()
            orthogonal = g - (w @ g) / (w @ w + self.eps) * w
            p.grad.copy_((orthogonal * (g.norm() / (orthogonal.norm() + self.eps))).view_as(p.grad))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def attach_transforms(
    optimizer: torch.optim.Optimizer, params: List[torch.nn.Parameter], nodes: Dict[str, Any]
) -> Dict[str, Any]:
    """Build the transforms of `nodes` (cfg.transforms) and run them, in order, before each of
    `optimizer`'s steps; their states ride in its state_dict. Returns them by key."""
    transforms = {key: plugin(node, f"transforms.{key}")(params, node) for key, node in nodes.items()}
    if not transforms:
        return transforms

    def before_step(opt, args, kwargs):
        for transform in transforms.values():
            transform()

    def save(opt, state):
        return {**state, STATE_KEY: {key: transform.state_dict() for key, transform in transforms.items()}}

    def load(opt, state):
        for key, transform in transforms.items():
            transform.load_state_dict(state[STATE_KEY][key])
        return {key: value for key, value in state.items() if key != STATE_KEY}

    optimizer.register_step_pre_hook(before_step)
    optimizer.register_state_dict_post_hook(save)
    optimizer.register_load_state_dict_pre_hook(load)
    return transforms
