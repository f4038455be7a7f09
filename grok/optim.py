"""The optimizer and its learning-rate schedule (a linear warmup, as in seed 001)."""

from typing import Iterable, Tuple

import torch
from torch.optim.lr_scheduler import LambdaLR


class LinearWarmup:
    """lr factor step/warmup_steps, capped at 1; step 0 trains at lr 0 like Nanda et al.'s code."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter]) -> Tuple[torch.optim.Optimizer, LambdaLR]:
    params = list(params)
    if cfg.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":  # weight decay as an L2 term in the gradient
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer.name={cfg.name}: must be one of adamw, adam, sgd")
    return optimizer, LambdaLR(optimizer, LinearWarmup(cfg.warmup_steps))
