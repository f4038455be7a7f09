"""What the models share: the activations a config may name, seed 001's initialisation, LayerNorm,
the gather of table rows, and the checks of the config fields they have in common."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grok.errors import ConfigError

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}  # model.act


def _init(*shape: int, fan_in: int) -> nn.Parameter:
    """A weight drawn from N(0, 1 / fan_in) (seed 001)."""
    return nn.Parameter(torch.randn(*shape) / math.sqrt(fan_in))


class LayerNorm(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w, self.b)


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """table[index] (index of any shape, table (N, ...)) through index_select: its backward
    (index_add_) sums into each row in the same order in every process, where advanced indexing's
    took another order from run to run on two threads, so that one command gave other numbers
    (docs/runs.md)."""
    return table.index_select(0, index.flatten()).view(*index.shape, *table.shape[1:])


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_widths(cfg) -> None:
    """d_model, d_mlp and act: every model has them."""
    require(cfg.d_model >= 1, f"model.d_model={cfg.d_model}: must be >= 1")
    require(cfg.d_mlp >= 1, f"model.d_mlp={cfg.d_mlp}: must be >= 1")
    require(cfg.act in ACTIVATIONS, f"model.act={cfg.act}: must be one of {', '.join(ACTIVATIONS)}")


def check_layers_and_heads(cfg) -> None:
    """n_layers and n_heads, of the models with attention."""
    require(cfg.n_layers >= 1, f"model.n_layers={cfg.n_layers}: must be >= 1")
    require(cfg.n_heads >= 1, f"model.n_heads={cfg.n_heads}: must be >= 1")
    require(
        cfg.d_model % cfg.n_heads == 0,
        f"model.d_model={cfg.d_model}: must be divisible by model.n_heads={cfg.n_heads}",
    )
