"""An example gradient transform (README "Extending"): annealed Gaussian gradient noise.

Neelakantan et al. (2015), "Adding Gradient Noise Improves Learning for Very Deep Networks": at step
t every gradient gets N(0, sigma_t^2) noise added, sigma_t^2 = eta / (1 + t)^gamma. The noise comes
from a generator of its own, seeded by `seed`, so a run repeats; its state and t are the transform's
state_dict, so a checkpoint holds them and a resumed run draws the same noise as an uninterrupted one.
"""

from dataclasses import dataclass

import torch
from omegaconf import MISSING

from grok.errors import ConfigError


class GradNoise:
    @dataclass
    class Config:  # the schema of conf/transforms/grad_noise.yaml
        name: str = MISSING
        eta: float = 0.01
        gamma: float = 0.55
        seed: int = 0

    @staticmethod
    def check(cfg) -> None:
        if cfg.eta < 0:
            raise ConfigError(f"transforms.{cfg.name}.eta={cfg.eta}: must be >= 0")

    def __init__(self, params: list[torch.nn.Parameter], cfg):
        self.params, self.eta, self.gamma = params, cfg.eta, cfg.gamma
        self.generator = torch.Generator().manual_seed(cfg.seed)  # on the CPU, whatever the device
        self.t = 0

    def __call__(self) -> None:
        """Between backward and the optimizer step: add the noise to each p.grad in place."""
        std = (self.eta / (1 + self.t) ** self.gamma) ** 0.5
        for p in self.params:
            if p.grad is not None:
                noise = torch.randn(p.grad.shape, generator=self.generator, dtype=p.grad.dtype)
                p.grad.add_(noise.to(p.grad.device), alpha=std)
        self.t += 1

    def state_dict(self) -> dict:
        return {"t": self.t, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        self.generator.set_state(state["generator"])
