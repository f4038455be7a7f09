"""The models, each a plug-in that `model._target_` names (grok/plugins.py):

- grok.models.transformer.Transformer: the decoder-only transformer of seeds 001/003
- grok.models.mlp.OperandMLP: seed 004's MLP over the concatenated operand embeddings
- grok.models.gpt.GPT: seed 002's pre-LayerNorm decoder with rotary positions

A model plug-in is an nn.Module subclass with what `Model` below writes down: its config's schema
`Config`, whether it `reads_sequences`, a `check` of its config, and a forward from tokens to logits.
Every intermediate activation passes a named HookPoint (grok/models/hooks.py, TransformerLens's names:
`blocks.0.attn.hook_pattern`); `run_with_cache` collects them all.

The model files hold the plain math. grok/models/tables.py holds the table path, the same math grouped
for large batches: `fast(model)` is the module to train and evaluate through.
"""

from typing import ClassVar, Protocol, Type

from torch import Tensor, nn

from grok.models.hooks import HookPoint, run_with_cache
from grok.models.tables import fast
from grok.plugins import plugin, typed

__all__ = ["Model", "build_model", "HookPoint", "run_with_cache", "fast"]


class Model(Protocol):
    """What a model plug-in provides (it is an nn.Module subclass)."""

    Config: ClassVar[Type]  # a dataclass: the schema of its config node
    reads_sequences: ClassVar[bool]  # whether it can learn the sequence tasks (every position's logits)

    @staticmethod
    def check(cfg) -> None:
        """Raise grok.errors.ConfigError, one line naming the field, on a value its types allow but it cannot use."""

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int) -> None:
        """cfg: its config node; n_ctx: the input length."""

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        """tokens (B, T) -> logits (B, C) of the last position, or (B, T, C) with all_positions."""


def build_model(cfg, n_vocab: int, n_classes: int, n_ctx: int) -> nn.Module:
    """The model `cfg._target_` names, built for these shapes (`cfg` typed first: its schema's defaults filled in)."""
    cfg = typed(cfg, "model")
    return plugin(cfg, "model")(cfg, n_vocab, n_classes, n_ctx)
