"""An example model plug-in (README "Extending"; the interface: the Model protocol in grok/models/__init__.py).

Bilinear: embed both operands, project each, multiply elementwise, unembed:
    logits = ((W_E[a] @ W_L) * (W_E[b] @ W_R)) @ W_U
It reads [a, b, =] only, so it trains on the binary operations, not the sequence tasks. Its token
embedding is called W_E, so the progress measures find it (the Fourier spectrum over Z_p).
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grok.errors import ConfigError


class Bilinear(nn.Module):
    @dataclass
    class Config:  # the schema of conf/model/bilinear.yaml: a misspelled key fails at start-up
        name: str = "bilinear"
        d_model: int = 64
        d_hidden: int = 256

    reads_sequences = False  # it reads two operands: grok refuses it for digit_add and calculator

    @staticmethod
    def check(cfg) -> None:
        for key in ("d_model", "d_hidden"):
            if cfg[key] < 1:
                raise ConfigError(f"model.{key}={cfg[key]}: must be >= 1")

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(n_vocab, cfg.d_model) / cfg.d_model**0.5)  # (V, D)
        self.W_L = nn.Parameter(torch.randn(cfg.d_model, cfg.d_hidden) / cfg.d_model**0.5)  # (D, H)
        self.W_R = nn.Parameter(torch.randn(cfg.d_model, cfg.d_hidden) / cfg.d_model**0.5)  # (D, H)
        self.W_U = nn.Parameter(torch.randn(cfg.d_hidden, n_classes) / cfg.d_hidden**0.5)  # (H, C)

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        # tokens (B, 3) = [a, b, =] -> logits (B, C); a model without positions ignores all_positions
        a, b = self.W_E[tokens[:, 0]], self.W_E[tokens[:, 1]]
        return ((a @ self.W_L) * (b @ self.W_R)) @ self.W_U
