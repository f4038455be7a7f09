"""Gradient transforms that make grokking happen sooner, applied between backward and the step.

- Grokfast (Lee et al. 2024) amplifies the slow component of the gradient: `ema` adds lamb times an
  exponential moving average (alpha) of past gradients; `ma` adds lamb times the mean (or sum) of
  the last `window` gradients, from the step the window is full when `warmup` is on.
- ⊥Grad (Prieto et al. 2025) removes the gradient's component along the weights (the direction
  that only scales the logits up, towards softmax collapse) and rescales it to its original norm.

They run as an optimizer step pre-hook, and the filters' history rides in the optimizer's
state_dict, so a checkpoint holds it and a resumed run continues exactly.
"""

from collections import deque
from typing import Deque, List, Optional

import torch
from torch import Tensor


class GrokfastEMA:
    def __init__(self, params: List[torch.nn.Parameter], alpha: float, lamb: float):
        self.params, self.alpha, self.lamb = params, alpha, lamb
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

    def load_state_dict(self, state: dict) -> None:
        self.ema = list(state["ema"])


class GrokfastMA:
    def __init__(self, params: List[torch.nn.Parameter], window: int, lamb: float, reduce: str, warmup: bool):
        self.params, self.window, self.lamb, self.reduce, self.warmup = params, window, lamb, reduce, warmup
        self.history: List[Deque[Tensor]] = [deque(maxlen=window) for _ in params]

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
        self.history = [deque(h, maxlen=self.window) for h in state["history"]]


def orthogonalize_gradients(params: List[torch.nn.Parameter], eps: float = 1e-30) -> None:
    """⊥Grad: g <- (g - (g.w / w.w) w) * |g| / |g - (g.w / w.w) w|, per parameter tensor."""
    for p in params:
        if p.grad is None:
            continue
        w, g = p.detach().flatten(), p.grad.flatten()
        orthogonal = g - (w @ g) / (w @ w + eps) * w
        p.grad.copy_((orthogonal * (g.norm() / (orthogonal.norm() + eps))).view_as(p.grad))


GROKFAST_LAMB = {"ema": 2.0, "ma": 5.0}  # Lee et al.'s defaults
STATE_KEY = "grokfast"


def attach_gradient_transforms(optimizer: torch.optim.Optimizer, params: List[torch.nn.Parameter], cfg) -> None:
    """Install the configured transforms (Grokfast, then ⊥Grad) on `optimizer`."""
    grokfast = None
    if cfg.grokfast == "ema":
        grokfast = GrokfastEMA(params, cfg.grokfast_alpha, cfg.grokfast_lamb or GROKFAST_LAMB["ema"])
    elif cfg.grokfast == "ma":
        grokfast = GrokfastMA(params, cfg.grokfast_window, cfg.grokfast_lamb or GROKFAST_LAMB["ma"],
                              cfg.grokfast_reduce, cfg.grokfast_warmup)
    if grokfast is None and not cfg.orthograd:
        return

    def before_step(opt, args, kwargs):
        if grokfast is not None:
            grokfast()
        if cfg.orthograd:
            orthogonalize_gradients(params)

    optimizer.register_step_pre_hook(before_step)
    if grokfast is not None:
        optimizer.register_state_dict_post_hook(lambda opt, state: {**state, STATE_KEY: grokfast.state_dict()})

        def load(opt, state):
            grokfast.load_state_dict(state[STATE_KEY])
            return {key: value for key, value in state.items() if key != STATE_KEY}

        optimizer.register_load_state_dict_pre_hook(load)
