"""The decoder-only transformer of seeds 001/003: token + learned position embedding, `n_layers`
blocks of causal attention and an MLP on the residual stream (LayerNorm optional, off by default),
unembedding. Weights in TransformerLens's layout (W_Q: (H, D, E), ...), seed 001's initialisation.

Shapes: B batch, T positions, Q query positions, D d_model, H heads, E d_head = D / H, M d_mlp,
V vocabulary, C classes.

Only the last position's logits enter the loss of a binary operation, so the last block computes its
queries, its MLP and the unembedding for the last position alone (Q = 1); keys and values still see
every position. `all_positions=True` computes every position (sequence tasks, `run_with_cache`).

This is the plain path: every activation passes its hook point. For large batches on a CPU,
grok/models/tables.py computes the first block of the same model, without LayerNorm, from tables of
its V x T distinct inputs.
"""

import math
from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor, nn

from grok.models.hooks import HookPoint
from grok.models.layers import ACTIVATIONS, LayerNorm, _init, check_layers_and_heads, check_widths, gather_rows


@dataclass
class TransformerConfig:
    name: str = "transformer"
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act: str = "relu"
    layer_norm: bool = False


class Attention(nn.Module):
    """Causal multi-head attention without biases; queries from the last `n_queries` positions."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        d_head = d_model // n_heads
        self.W_Q = _init(n_heads, d_model, d_head, fan_in=d_model)  # (H, D, E)
        self.W_K = _init(n_heads, d_model, d_head, fan_in=d_model)
        self.W_V = _init(n_heads, d_model, d_head, fan_in=d_model)
        self.W_O = _init(n_heads, d_head, d_model, fan_in=d_model)  # (H, E, D)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, n_queries: int) -> Tensor:
        # x: (B, T, D) -> (B, Q, D), Q = n_queries
        T = x.shape[1]
        q = self.hook_q(torch.einsum("btd,hde->bhte", x[:, T - n_queries :], self.W_Q))  # (B, H, Q, E)
        k = self.hook_k(torch.einsum("btd,hde->bhte", x, self.W_K))  # (B, H, T, E)
        v = self.hook_v(torch.einsum("btd,hde->bhte", x, self.W_V))  # (B, H, T, E)
        # One query: the two batched products would be matrix-vector products, one per (example, head),
        # slow on a GPU (cuBLAS's gemv: 35 us each on an H200); multiplied and summed, they fuse with
        # their neighbours (the captured epoch 1.4x faster; docs/performance.md)
        one_query = n_queries == 1
        if one_query:
            scores = (q[:, :, :, None] * k[:, :, None]).sum(-1)  # (B, H, 1, T, E) -> (B, H, 1, T)
        else:
            scores = torch.einsum("bhqe,bhke->bhqk", q, k)  # (B, H, Q, T)
        query_pos = torch.arange(T - n_queries, T, device=x.device)
        future = torch.arange(T, device=x.device)[None, :] > query_pos[:, None]  # (Q, T)
        scores = self.hook_attn_scores((scores / math.sqrt(q.shape[-1])).masked_fill(future, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # (B, H, Q, T)
        if one_query:
            z = (pattern[..., None] * v[:, :, None]).sum(-2)  # (B, H, 1, T, E) -> (B, H, 1, E)
        else:
            z = torch.einsum("bhqk,bhke->bhqe", pattern, v)  # (B, H, Q, E)
        return torch.einsum("bhqe,hed->bqd", self.hook_z(z), self.W_O)


class MLP(nn.Module):
    """One hidden layer: (..., d_in) -> (..., M) -> act -> (..., d_out)."""

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
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    """x + attn(ln1(x)) at the query positions, then x + mlp(ln2(x)); ln1, ln2 identities by default."""

    def __init__(self, cfg):
        super().__init__()
        norm = LayerNorm if cfg.layer_norm else nn.Identity
        self.ln1, self.ln2 = norm(cfg.d_model), norm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.d_model, cfg.act)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: Tensor, n_queries: int) -> Tensor:
        # x: (B, T, D) -> (B, Q, D)
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.ln1(x), n_queries))  # (B, Q, D)
        x = self.hook_resid_mid(x[:, x.shape[1] - n_queries :] + attn_out)
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class Transformer(nn.Module):
    """Token + learned position embedding, `n_layers` blocks, optional final LayerNorm, unembed."""

    Config = TransformerConfig
    reads_sequences = True

    @staticmethod
    def check(cfg) -> None:
        check_widths(cfg)
        check_layers_and_heads(cfg)

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int):
        super().__init__()
        self.W_E = _init(n_vocab, cfg.d_model, fan_in=cfg.d_model)  # (V, D)
        self.W_pos = _init(n_ctx, cfg.d_model, fan_in=cfg.d_model)  # (T, D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.W_U = _init(cfg.d_model, n_classes, fan_in=n_classes)  # (D, C); seed 001's scale
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()

    def n_queries(self, T: int, all_positions: bool) -> List[int]:
        """Per block, how many positions it computes: all T, but the last block 1 unless all_positions."""
        return [T] * (len(self.blocks) - 1) + [T if all_positions else 1]

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        # tokens: (B, T) -> logits (B, C), or (B, T, C) with all_positions
        T = tokens.shape[1]
        x = self.hook_embed(gather_rows(self.W_E, tokens)) + self.hook_pos_embed(self.W_pos[:T])  # (B, T, D)
        for block, n_queries in zip(self.blocks, self.n_queries(T, all_positions)):
            x = block(x, n_queries)  # (B, Q, D)
        logits = self.ln_final(x) @ self.W_U  # (B, Q, C)
        return logits if all_positions else logits[:, -1]
