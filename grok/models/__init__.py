"""The models: a small decoder-only transformer (seeds 001/003), an operand MLP (seed 004) and `gpt`,
a pre-LayerNorm decoder with rotary positions (seed 002).

Every intermediate activation passes through a named `HookPoint`, an identity module, so standard
PyTorch forward hooks can read or edit it; `run_with_cache` collects them all. Shapes use
B = batch, T = positions, D = d_model, H = heads, E = d_head, M = d_mlp, V = vocab, C = classes.

Only the last position's logits enter the loss, so by default the last block computes queries,
the MLP and the unembedding for the last position alone; keys and values still see every position.
`all_positions=True` computes every position (what `run_with_cache` uses).

The first layer only ever sees V x T distinct inputs (a token at a position). So for a large batch
with no hook attached, `Transformer` (without LayerNorm) computes its first block from tables of those
rows, and `OperandMLP` its hidden layer's input; each example then sums a few table rows. The same
math, grouped differently (README "Performance"). A hook attached anywhere switches to the plain
path, where every HookPoint sees its activation.
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grok.system.speed import embedding_bag

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class HookPoint(nn.Identity):
    """Names an activation: attach hooks with `register_forward_hook` to cache or patch it."""


def _init(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / math.sqrt(fan_in))


def hooks_attached(model: nn.Module) -> bool:
    """Whether a hook waits on any submodule (or globally): then only the plain path calls it."""
    from torch.nn.modules import module as registry

    kinds = ("forward_hooks", "forward_pre_hooks", "backward_hooks", "backward_pre_hooks")
    if any(getattr(registry, f"_global_{kind}") for kind in kinds):
        return True
    return any(getattr(m, f"_{kind}") for m in model.modules() if m is not model for kind in kinds)


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
        return self.from_pre(x @ self.W_in + self.b_in)

    def from_pre(self, pre: Tensor) -> Tensor:
        # pre-activations (..., M) -> (..., D)
        post = self.hook_post(self.act(self.hook_pre(pre)))
        return post @ self.W_out + self.b_out


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
        n_queries = [T] * (len(self.blocks) - 1) + [T if all_positions else 1]  # per block
        V, Q = self.W_E.shape[0], n_queries[0]
        # the tables pay when the batch's B*Q rows through W_in outnumber theirs: (T + Q) * V of width D
        tables = isinstance(self.ln_final, nn.Identity) and len(tokens) * Q >= (T + Q) * V
        if tables and not hooks_attached(self):
            if len(self.blocks) == 1:  # W_U alone reads the block's output: the tables fold it in
                logits = self._first_block_by_tables(tokens, Q, readout=self.W_U)
                return logits if all_positions else logits[:, -1]
            x, start = self._first_block_by_tables(tokens, Q), 1
        else:
            x, start = self.hook_embed(self.W_E[tokens]) + self.hook_pos_embed(self.W_pos[:T]), 0
        for block, n in zip(self.blocks[start:], n_queries[start:]):
            x = block(x, n)
        logits = self.ln_final(x) @ self.W_U
        return logits if all_positions else logits[:, -1]

    def _first_block_by_tables(self, tokens: Tensor, Q: int, readout: Optional[Tensor] = None) -> Tensor:
        """Block 0 at the last Q positions, without hooks or LayerNorm: Block.forward's math, grouped
        by table rows. Its input W_E[token] + W_pos[position] is one of V x T rows, so q, k, v are
        computed once per row and the attention scores once per (query row, key row) pair. After the
        softmax, all up to the MLP's activation is linear: the residual stream and the pre-activations
        are pattern-weighted sums of value rows (through W_O), plus the query's own row. embedding_bag
        forms such sums without gathering the rows; its backward scatters gradients into the tables.
        Returns the residual stream after the block (B, Q, D), or with `readout` (D, C) that stream
        times readout: what is linear in the stream (value rows, own rows, W_out) is multiplied by
        readout once per row instead of once per example, and (B, M) @ (M, D) @ (D, C) becomes
        (B, M) @ (M, C)."""
        attn, mlp = self.blocks[0].attn, self.blocks[0].mlp
        (B, T), V, (H, _, E) = tokens.shape, self.W_E.shape[0], attn.W_Q.shape
        pos, heads = torch.arange(T, device=tokens.device), torch.arange(H, device=tokens.device)
        resid = self.W_E[:, None] + self.W_pos[:T]  # (V, T, D): token v at position t
        q = torch.einsum("vtd,hde->vthe", resid[:, T - Q :], attn.W_Q)  # (V, Q, H, E)
        k = torch.einsum("vtd,hde->vthe", resid, attn.W_K)  # (V, T, H, E)
        v = torch.einsum("vtd,hde->vthe", resid, attn.W_V)
        # the scores of every (key row, query row) pair, looked up per example as a row of H heads, in
        # (key position, example, query, head) order: the softmax over the T keys then runs along the
        # first axis, vectorized across examples (along a last axis of length T it is ~20x slower)
        pair_scores = torch.einsum("aqhe,bkhe->kbaqh", q, k).flatten(0, 3) / math.sqrt(E)  # (T*V*V*Q, H)
        query_tokens = tokens[:, T - Q :]  # (B, Q)
        pair = ((pos[:, None, None] * V + tokens.T[:, :, None]) * V + query_tokens) * Q + pos[:Q]  # (T, B, Q)
        future = (pos[:, None] > pos[T - Q :])[:, None, :, None]  # (T, 1, Q, 1): the key comes after the query
        pattern = pair_scores[pair].masked_fill(future, float("-inf")).softmax(dim=0)  # (T, B, Q, H)

        # bag rows: the value of (head h, token v, key position t) at (h*V + v)*T + t, then the query's
        # own residual row (position q, token v) at H*V*T + q*V + v, which carries the biases
        value_index = (heads[:, None] * V + tokens[:, None, :]) * T + pos  # (B, H, T)
        own_index = H * V * T + pos[:Q] * V + query_tokens  # (B, Q)
        index = torch.cat([value_index[:, None].expand(B, Q, H, T).flatten(2), own_index[..., None]], dim=-1)
        weights = torch.cat([pattern.permute(1, 2, 3, 0).flatten(2), pattern.new_ones(B, Q, 1)], dim=-1)  # as index
        index, weights = index.flatten(0, 1), weights.flatten(0, 1)  # one bag of H*T + 1 rows per query

        # table rows [the MLP's pre-activation (M) | the residual stream (D), or with readout the logits
        # it adds (C) | zeros up to a multiple of 8 floats, on which embedding_bag's backward runs several
        # times faster]. A value row has rank E: through W_O and W_in it costs E*M per row, not D*M.
        read = (lambda x: x) if readout is None else (lambda x: x @ readout)
        W_out = read(mlp.W_out)  # (M, D or C)
        widths = [mlp.W_in.shape[1], W_out.shape[1], -(mlp.W_in.shape[1] + W_out.shape[1]) % 8]
        zeros = lambda *shape: W_out.new_zeros(*shape, widths[2])
        W_O_in = torch.einsum("hed,dm->hem", attn.W_O, mlp.W_in)
        value_rows = torch.einsum("vthe,hef->hvtf", v, torch.cat([W_O_in, read(attn.W_O), zeros(H, E)], dim=-1))
        own = resid[:, T - Q :].transpose(0, 1).flatten(0, 1)  # (Q*V, D)
        own_rows = torch.cat([own @ mlp.W_in + mlp.b_in, read(own + mlp.b_out), zeros(Q * V)], dim=-1)
        rows = torch.cat([value_rows.flatten(0, 2), own_rows])  # (H*V*T + Q*V, sum(widths))

        def rest_of_block(index: Tensor, weights: Tensor) -> Tensor:
            # -> (n, D or C): the stream after attention (+ b_out) + the MLP's output, through readout if given
            pre, stream, _ = embedding_bag(index, rows, weights).split(widths, dim=1)
            return torch.addmm(stream, mlp.act(pre), W_out)

        if torch.is_grad_enabled():
            return rest_of_block(index, weights).view(B, Q, -1)
        # inference: in slices whose (slice, M) activations stay in cache from one step to the next, joined
        # flat (torch.cat runs ~10x slower on rows whose width is not a multiple of 8 floats, as C=97's)
        parts = [rest_of_block(*part).flatten() for part in zip(index.split(1024), weights.split(1024))]
        return torch.cat(parts).view(B, Q, -1)


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
        operands = tokens[:, :-1]  # (B, O)
        (V, D), O = self.W_E.shape, operands.shape[1]
        if len(tokens) >= V and not hooks_attached(self):
            # concat(W_E[a], W_E[b]) @ W_in = W_E[a] @ W_in[:D] + W_E[b] @ W_in[D:]: one (O, V, M) table
            # of every operand's term, and each example sums O rows of it (embedding_bag: gather + sum)
            table = torch.einsum("vd,odm->ovm", self.W_E, self.mlp.W_in.view(O, D, -1)).flatten(0, 1)
            rows = operands + V * torch.arange(O, device=tokens.device)  # (B, O) rows of the (O*V, M) table
            return self.mlp.from_pre(embedding_bag(rows, table) + self.mlp.b_in) @ self.W_U
        x = self.hook_embed(self.W_E[operands].flatten(1))  # (B, O*D)
        return self.mlp(x) @ self.W_U


# ----------------------------------------------------------------------------- gpt (seed 002)
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
        self.hook_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, E)
        q, k, v = self.hook_q(rotate(q)), self.hook_k(rotate(k)), self.hook_v(v)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = self.hook_scores((q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(future, float("-inf")))
        z = self.hook_z(self.hook_pattern(scores.softmax(dim=-1)) @ v)  # (B, H, T, E)
        return self.out(z.transpose(1, 2).reshape(B, T, D))


class GPTBlock(nn.Module):
    """Pre-LayerNorm: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = RotaryAttention(cfg.d_model, cfg.n_heads)
        self.fc_in, self.fc_out = nn.Linear(cfg.d_model, cfg.d_mlp), nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act]
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_pre, self.hook_mlp_post, self.hook_mlp_out = (HookPoint() for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)  # (B, T, D)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x))))
        hidden = self.hook_mlp_post(self.act(self.hook_mlp_pre(self.fc_in(self.ln2(x)))))  # (B, T, M)
        return self.hook_resid_post(x + self.hook_mlp_out(self.fc_out(hidden)))


class GPT(nn.Module):
    """Seed 002's decoder: token embedding (no position embedding: rotary attention places tokens),
    `n_layers` pre-LayerNorm blocks, a final LayerNorm, unembedding. GPT-2 initialisation: weights
    N(0, 0.02), the two projections that write into the residual stream (attn.out, fc_out)
    N(0, 0.02 / sqrt(2 n_layers)), biases 0, LayerNorm gains 1."""

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int):
        super().__init__()
        self.n_ctx = n_ctx  # the input length it is built for; rotary positions would run past it
        self.embed = nn.Embedding(n_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, n_classes)
        self.hook_embed = HookPoint()
        for name, param in self.named_parameters():
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


MODELS = {"transformer": Transformer, "mlp": OperandMLP, "gpt": GPT}


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
