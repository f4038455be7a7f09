"""The operand MLP of seed 004: embed each operand (the '=' token is dropped), concatenate, one hidden
layer, unembed. It reads two operands, so it learns the binary operations, not the sequence tasks.

Shapes: B batch, O operands, D d_model, M d_mlp, V vocabulary, C classes. For large batches,
grok/models/tables.py computes the hidden layer's input from a table of every operand's term.
"""

from dataclasses import dataclass

from torch import Tensor, nn

from grok.models.hooks import HookPoint
from grok.models.layers import _init, check_widths, gather_rows
from grok.models.transformer import MLP


@dataclass
class MLPConfig:
    name: str = "mlp"
    d_model: int = 128
    d_mlp: int = 512
    act: str = "relu"


class OperandMLP(nn.Module):
    Config = MLPConfig
    reads_sequences = False

    @staticmethod
    def check(cfg) -> None:
        check_widths(cfg)

    def __init__(self, cfg, n_vocab: int, n_classes: int, n_ctx: int):
        super().__init__()
        n_operands = n_ctx - 1
        self.W_E = _init(n_vocab, cfg.d_model, fan_in=cfg.d_model)  # (V, D)
        self.mlp = MLP(n_operands * cfg.d_model, cfg.d_mlp, cfg.d_model, cfg.act)  # (O*D) -> M -> D
        self.W_U = _init(cfg.d_model, n_classes, fan_in=n_classes)  # (D, C)
        self.hook_embed = HookPoint()

    def forward(self, tokens: Tensor, all_positions: bool = False) -> Tensor:
        # tokens: (B, O + 1) -> logits (B, C); an MLP has no per-position outputs
        x = self.hook_embed(gather_rows(self.W_E, tokens[:, :-1]).flatten(1))  # (B, O*D)
        return self.mlp(x) @ self.W_U
