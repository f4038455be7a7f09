"""The optimizer, its learning-rate schedule (a linear warmup, as in seed 001), and the gradient
transforms of grok/accelerators.py when configured."""

from typing import Iterable, Tuple

import torch
from torch.optim.lr_scheduler import LambdaLR

from grok.training.transforms import attach_gradient_transforms


class LinearWarmup:
    """lr factor step/warmup_steps, capped at 1; step 0 trains at lr 0 like Nanda et al.'s code."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter]) -> Tuple[torch.optim.Optimizer, LambdaLR]:
    params = list(params)
    fused = {"fused": True} if params and params[0].is_cuda else {}  # one kernel for all parameters on a GPU
    if cfg.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused)
    elif cfg.name == "adam":  # weight decay as an L2 term in the gradient
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused)
    elif cfg.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer.name={cfg.name}: must be one of adamw, adam, sgd")
    attach_gradient_transforms(optimizer, params, cfg)
    return optimizer, LambdaLR(optimizer, LinearWarmup(cfg.warmup_steps))
