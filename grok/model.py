"""The models: a small decoder-only transformer (seeds 001/003) and an operand MLP (seed 004).

Every intermediate activation passes through a named `HookPoint`, an identity module, so standard
PyTorch forward hooks can read or edit it; `run_with_cache` collects them all. Shapes use
B = batch, T = positions, D = d_model, H = heads, E = d_head, M = d_mlp, V = vocab, C = classes.

Only the last position's logits enter the loss, so by default the last block computes queries,
the MLP and the unembedding for the last position alone; keys and values still see every position.
`all_positions=True` computes every position (what `run_with_cache` uses).
"""

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class HookPoint(nn.Identity):
    """Names an activation: attach hooks with `register_forward_hook` to cache or patch it."""


def _init(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / math.sqrt(fan_in))


class LayerNorm(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w, self.b)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        d_head = d_model // n_heads
        self.W_Q = _init(n_heads, d_model, d_head, fan_in=d_model)  # (H, D, E)
        self.W_K = _init(n_heads, d_model, d_head, fan_in=d_model)
        self.W_V = _init(n_heads, d_model, d_head, fan_in=d_model)
        self.W_O = _init(n_heads, d_head, d_model, fan_in=d_model)  # (H, E, D)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, n_queries: int) -> Tensor:
        # x: (B, T, D); queries come from the last n_queries positions -> (B, n_queries, D)
        T = x.shape[1]
        q = self.hook_q(torch.einsum("btd,hde->bhte", x[:, T - n_queries :], self.W_Q))
        k = self.hook_k(torch.einsum("btd,hde->bhte", x, self.W_K))
        v = self.hook_v(torch.einsum("btd,hde->bhte", x, self.W_V))
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(q.shape[-1])
        query_pos = torch.arange(T - n_queries, T, device=x.device)
        future = torch.arange(T, device=x.device)[None, :] > query_pos[:, None]  # (Q, T)
        scores = self.hook_scores(scores.masked_fill(future, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # (B, H, Q, T)
        z = self.hook_z(torch.einsum("bhqk,bhke->bhqe", pattern, v))
        return torch.einsum("bhqe,hed->bqd", z, self.W_O)


class MLPBlock(nn.Module):
    def __init__(self, d_in: int, d_mlp: int, d_out: int, act: str):
        super().__init__()
        self.W_in = _init(d_in, d_mlp, fan_in=d_in)  # (D, M)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = _init(d_mlp, d_out, fan_in=d_in)  # (M, D); seed 001's scale
        self.b_out = nn.Parameter(torch.zeros(d_out))
        self.act = ACTIVATIONS[act]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)  # (..., M)
        post = self.hook_post(self.act(pre))
        return post @ self.W_out + self.b_out  # (..., D)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = LayerNorm if cfg.layer_norm else nn.Identity
        self.ln1, self.ln2 = norm(cfg.d_model), norm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.mlp = MLPBlock(cfg.d_model, cfg.d_mlp, cfg.d_model, cfg.act)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: Tensor, n_queries: int) -> Tensor:
        x = self.hook_resid_pre(x)  # (B, T, D)
        attn_out = self.hook_attn_out(self.attn(self.ln1(x), n_queries))  # (B, Q, D)
        x = self.hook_resid_mid(x[:, x.shape[1] - n_queries :] + attn_out)
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class Transformer(nn.Module):
    """Token + learned position embedding, `n_layers` blocks, optional final LayerNorm, unembed."""

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int):
        super().__init__()
        self.W_E = _init(n_vocab, cfg.d_model, fan_in=cfg.d_model)  # (V, D)
        self.W_pos = _init(n_ctx, cfg.d_model, fan_in=cfg.d_model)  # (T, D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.W_U = _init(cfg.d_model, n_classes, fan_in=n_classes)  # (D, C); seed 001's scale
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        # tokens: (B, T) -> logits (B, C), or (B, T, C) with all_positions
        T = tokens.shape[1]
        x = self.hook_embed(self.W_E[tokens]) + self.hook_pos_embed(self.W_pos[:T])
        for i, block in enumerate(self.blocks):
            last_block = i == len(self.blocks) - 1
            x = block(x, n_queries=1 if last_block and not all_positions else T)
        logits = self.ln_final(x) @ self.W_U
        return logits if all_positions else logits[:, -1]


class OperandMLP(nn.Module):
    """Seed 004: embed each operand (the '=' token is dropped), concatenate, one hidden layer."""

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int):
        super().__init__()
        n_operands = n_ctx - 1
        self.W_E = _init(n_vocab, cfg.d_model, fan_in=cfg.d_model)  # (V, D)
        self.mlp = MLPBlock(n_operands * cfg.d_model, cfg.d_mlp, cfg.d_model, cfg.act)
        self.W_U = _init(cfg.d_model, n_classes, fan_in=n_classes)  # (D, C)
        self.hook_embed = HookPoint()

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        # tokens: (B, T) -> logits (B, C); an MLP has no per-position outputs
        x = self.hook_embed(self.W_E[tokens[:, :-1]].flatten(1))  # (B, (T-1)*D)
        return self.mlp(x) @ self.W_U


MODELS = {"transformer": Transformer, "mlp": OperandMLP}


def build_model(cfg, n_vocab: int, n_classes: int, n_ctx: int) -> nn.Module:
    return MODELS[cfg.name](cfg, n_vocab, n_classes, n_ctx)


def run_with_cache(model: nn.Module, tokens: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Run every position and return (logits, {hook name: activation}) for all hook points."""
    cache: Dict[str, Tensor] = {}
    handles = [
        module.register_forward_hook(lambda mod, inp, out, name=name: cache.__setitem__(name, out.detach()))
        for name, module in model.named_modules()
        if isinstance(module, HookPoint)
    ]
    try:
        logits = model(tokens, all_positions=True)
    finally:
        for handle in handles:
            handle.remove()
    return logits, cache
