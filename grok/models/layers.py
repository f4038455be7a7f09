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


# On a GPU, the gradients of tables of at most this many rows are summed by a one-hot product
# (gather_rows): every task's vocabulary up to p = 509; its cost grows with the rows, index_add_'s does not
ONE_HOT_ROWS = 512


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """table[index] (index of any shape, table (N, ...)), through index_select. Its gradient sums into
    each row in the same order in every call: on a CPU index_select's backward (index_add_) does, where
    advanced indexing's took another order from run to run on two threads, so that one command gave
    other numbers (docs/runs.md). On a GPU (tables of at most ONE_HOT_ROWS rows) the gradient is a
    product with the index's one-hot matrix, one_hot.T @ grad (N, n) @ (n, ...): it sums in a fixed
    order as fast as a small product runs, where index_select's deterministic CUDA backward sorts the
    index and then adds each row's entries one after another (1.3 ms of the default experiment's 2.1 ms
    captured epoch on an H200; docs/performance.md)."""
    flat = index.flatten()
    if _by_one_hot(table):
        rows = _RowsSummedByOneHot.apply(table.flatten(1), flat)
    else:
        rows = table.index_select(0, flat)
    return rows.view(*index.shape, *table.shape[1:])


def _by_one_hot(table: Tensor) -> bool:
    return table.is_cuda and table.shape[0] <= ONE_HOT_ROWS


class _RowsSummedByOneHot(torch.autograd.Function):
    """table.index_select(0, flat), (N, W) -> (n, W); the table's gradient one_hot(flat).T @ grad,
    exact with float32 products (PyTorch's default; TF32 would round the gradient's rows), each sum's
    terms in a fixed order. The forward is not a product with the one-hot matrix too: that product
    costs a product's time, index_select a copy's (the captured epoch 5% faster on an H200;
    docs/performance.md). torch.compile takes this backward where it differentiates the Function
    itself (the captured epoch); around torch.vmap (runs trained together, never compiled) it
    differentiates index_select instead. No forward mode (torch.func.jvp): Dynamo does not trace a
    Function that defines its own jvp."""

    generate_vmap_rule = True  # runs trained together: torch.vmap over the table and the index

    @staticmethod
    def forward(table: Tensor, flat: Tensor) -> Tensor:
        return table.index_select(0, flat)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        table, flat = inputs
        ctx.save_for_backward(flat)
        ctx.n_rows = table.shape[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (flat,) = ctx.saved_tensors
        one_hot = (flat[:, None] == torch.arange(ctx.n_rows, device=flat.device)).to(grad.dtype)  # (n, N)
        return one_hot.T @ grad, None


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
