"""The straightforward implementation that `make bench` measures the harness against (issue 5).

Written the way seeds 001/003 train the default experiment, and kept deliberately plain: a
transformer of per-position einsums that computes the logits at every position (the loss takes the
last one), full-batch AdamW with a linear warmup, a float64 cross-entropy, then a separate test pass.
No tables, no last-position shortcut. The operand MLP of seed 004 likewise embeds, concatenates and
runs its hidden layer per example. Parameters carry the last component of the harness's names
(W_Q for blocks.0.attn.W_Q, ...), so `load_weights` starts both from the same initial weights.
"""

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _param(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / math.sqrt(fan_in))


class ReferenceTransformer(nn.Module):
    """One block, no LayerNorm: embed + positions, causal multi-head attention, ReLU MLP, unembed."""

    def __init__(
        self, n_vocab: int, n_classes: int, n_ctx: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512
    ):
        super().__init__()
        d_head = d_model // n_heads
        self.W_E = _param(n_vocab, d_model, fan_in=d_model)
        self.W_pos = _param(n_ctx, d_model, fan_in=d_model)
        self.W_Q = _param(n_heads, d_model, d_head, fan_in=d_model)
        self.W_K = _param(n_heads, d_model, d_head, fan_in=d_model)
        self.W_V = _param(n_heads, d_model, d_head, fan_in=d_model)
        self.W_O = _param(n_heads, d_head, d_model, fan_in=d_model)
        self.W_in = _param(d_model, d_mlp, fan_in=d_model)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = _param(d_mlp, d_model, fan_in=d_model)
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.W_U = _param(d_model, n_classes, fan_in=n_classes)
        self.register_buffer("causal", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens (B, T) -> logits at every position (B, T, C)
        x = self.W_E[tokens] + self.W_pos  # (B, T, D)
        q = torch.einsum("btd,hde->bhte", x, self.W_Q)
        k = torch.einsum("btd,hde->bhte", x, self.W_K)
        v = torch.einsum("btd,hde->bhte", x, self.W_V)
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(q.shape[-1])
        pattern = scores.masked_fill(~self.causal, float("-inf")).softmax(dim=-1)
        z = torch.einsum("bhqk,bhke->bhqe", pattern, v)
        x = x + torch.einsum("bhqe,hed->bqd", z, self.W_O)
        x = x + F.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out
        return x @ self.W_U


class ReferenceMLP(nn.Module):
    """Seed 004: embed each operand, concatenate, one hidden ReLU layer, unembed."""

    def __init__(self, n_vocab: int, n_classes: int, n_ctx: int, d_model: int = 128, d_mlp: int = 512):
        super().__init__()
        d_in = (n_ctx - 1) * d_model
        self.W_E = _param(n_vocab, d_model, fan_in=d_model)
        self.W_in = _param(d_in, d_mlp, fan_in=d_in)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = _param(d_mlp, d_model, fan_in=d_in)
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.W_U = _param(d_model, n_classes, fan_in=n_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens (B, T) -> logits (B, 1, C): one output, at the last position
        x = torch.cat([self.W_E[tokens[:, i]] for i in range(tokens.shape[1] - 1)], dim=1)
        hidden = F.relu(x @ self.W_in + self.b_in)
        return ((hidden @ self.W_out + self.b_out) @ self.W_U)[:, None]


def load_weights(model: nn.Module, harness_state: Dict[str, Tensor]) -> None:
    """Copy a harness model's weights: blocks.0.attn.W_Q -> W_Q, mlp.W_in -> W_in, ..."""
    by_short_name = {name.rsplit(".", 1)[-1]: value for name, value in harness_state.items()}
    model.load_state_dict({name: by_short_name[name] for name in model.state_dict()})


def optimizer_for(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 1.0,
    betas: Tuple[float, float] = (0.9, 0.98),
    warmup_steps: int = 10,
):
    """AdamW with seed 001's linear warmup (the first step at lr 0)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(step / warmup_steps, 1.0))


def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy in float64 (float32 log_softmax underflows on confident logits)."""
    log_probs = logits.to(torch.float64).log_softmax(dim=-1)
    return -log_probs.gather(-1, labels[:, None]).mean()


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def train_epoch(
    model: nn.Module, optimizer, scheduler, train: Tuple[Tensor, Tensor], test: Tuple[Tensor, Tensor]
) -> Dict[str, float]:
    """One full-batch step on (inputs, labels) `train`, then the test pass with the updated weights."""
    logits = model(train[0])[:, -1]
    loss = loss_fn(logits, train[1])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.inference_mode():
        test_logits = model(test[0])[:, -1]
        test_loss = loss_fn(test_logits, test[1])
    return {
        "train_loss": loss.item(),
        "train_acc": accuracy(logits, train[1]),
        "test_loss": test_loss.item(),
        "test_acc": accuracy(test_logits, test[1]),
    }
