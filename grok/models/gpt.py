"""Seed 002's decoder, `gpt`: token embedding (no position embedding: rotary attention places tokens),
`n_layers` pre-LayerNorm blocks, a final LayerNorm, unembedding; GPT-2's initialisation.

Shapes: B batch, T positions, D d_model, H heads, E d_head = D / H, M d_mlp, C classes.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grok.models.hooks import HookPoint
from grok.models.layers import ACTIVATIONS, check_layers_and_heads, check_widths, require


@dataclass
class GPTConfig:
    name: str = "gpt"
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act: str = "gelu"


def rotate(x: Tensor) -> Tensor:
    """Rotary position embedding (Su et al. 2021) of queries or keys x (B, H, T, E): at position t
    the pair (x[i], x[i + E/2]) turns by the angle t * 10000^(-2i/E), so q·k sees only t_q - t_k."""
    T, half = x.shape[-2], x.shape[-1] // 2
    freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)  # (E/2,)
    angle = torch.arange(T, device=x.device, dtype=x.dtype)[:, None] * freq  # (T, E/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RotaryAttention(nn.Module):
    """Causal multi-head attention; one q/k/v projection without bias, rotary q and k."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # q, k after rotation
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, T, D) -> (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, E)
        q, k, v = self.hook_q(rotate(q)), self.hook_k(rotate(k)), self.hook_v(v)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(future, float("-inf"))
        scores = self.hook_attn_scores(scores)  # (B, H, T, T)
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(pattern @ v)  # (B, H, T, E)
        return self.out(z.transpose(1, 2).reshape(B, T, D))


class GPTMLP(nn.Module):
    """fc_in, act, fc_out: (B, T, D) -> (B, T, M) -> (B, T, D)."""

    def __init__(self, d_model: int, d_mlp: int, act: str):
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(d_model, d_mlp), nn.Linear(d_mlp, d_model)
        self.act = ACTIVATIONS[act]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.hook_post(self.act(self.hook_pre(self.fc_in(x))))  # (B, T, M)
        return self.fc_out(hidden)


class GPTBlock(nn.Module):
    """Pre-LayerNorm: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = RotaryAttention(cfg.d_model, cfg.n_heads)
        self.mlp = GPTMLP(cfg.d_model, cfg.d_mlp, cfg.act)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()
        self.register_load_state_dict_pre_hook(_mlp_moved_into_its_module)

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)  # (B, T, D)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x))))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


def _mlp_moved_into_its_module(block, state_dict, prefix, *args) -> None:
    """Checkpoints written before the MLP had a module of its own name its weights `<block>.fc_in.*`
    and `<block>.fc_out.*`; they load as `<block>.mlp.fc_in.*` and `<block>.mlp.fc_out.*`."""
    for key in [key for key in state_dict if key.startswith((f"{prefix}fc_in.", f"{prefix}fc_out."))]:
        state_dict[f"{prefix}mlp.{key[len(prefix) :]}"] = state_dict.pop(key)


class GPT(nn.Module):
    """GPT-2 initialisation: weights N(0, 0.02), the two projections that write into the residual
    stream (attn.out, mlp.fc_out) N(0, 0.02 / sqrt(2 n_layers)), biases 0, LayerNorm gains 1."""

    Config = GPTConfig
    reads_sequences = True

    @staticmethod
    def check(cfg) -> None:
        check_widths(cfg)
        check_layers_and_heads(cfg)
        require(
            cfg.d_model // cfg.n_heads % 2 == 0,
            f"model.d_model={cfg.d_model}: d_model / n_heads must be even for rotary positions",
        )

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int):
        super().__init__()
        self.n_ctx = n_ctx  # the input length it is built for; rotary positions would run past it
        self.embed = nn.Embedding(n_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, n_classes)
        self.hook_embed = HookPoint()
        for name, param in self.named_parameters():  # in creation order: the draws depend on it
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif ".ln" not in name and not name.startswith("ln"):
                residual_writer = name.endswith(("attn.out.weight", "fc_out.weight"))
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * cfg.n_layers) if residual_writer else 0.02)

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        # tokens: (B, T) -> logits (B, C), or (B, T, C) with all_positions
        x = self.hook_embed(self.embed(tokens))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x if all_positions else x[:, -1]))
