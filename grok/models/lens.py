"""grok's models in TransformerLens: `grok.to_hooked_transformer(model)` returns a HookedTransformer that
computes the same logits (an optional extra: `pip install -e ".[interp]"`, transformer-lens 2.x-3.x,
whose HookedTransformer 4.0 removed).

- `transformer` (any number of layers, with or without LayerNorm): learned positions; its attention
  and unembedding have no biases, which become zeros.
- `gpt`: pre-LayerNorm blocks with rotary positions (GPT-NeoX's rotation of the two halves of each
  head, base 10000, over the whole head), GELU; its fused qkv projection splits into W_Q, W_K, W_V.
- `mlp` reads two operands and has no attention: TransformerLens cannot express it, and says so.

The hook names are TransformerLens's (docs/configuration.md has the table): the same activations under
the same names, but q, k, v and z, which TransformerLens keeps as (B, T, H, E) where grok keeps
(B, H, T, E); gpt's `attn.hook_q`/`hook_k` are the rotated ones, TransformerLens's `hook_rot_q`/`hook_rot_k`.
"""

from typing import Any, Dict, Tuple

from torch import Tensor, nn

from grok.errors import ConfigError
from grok.models.gpt import GPT
from grok.models.layers import ACTIVATIONS
from grok.models.transformer import Transformer

ROTARY_BASE = 10000  # grok.models.gpt.rotate's


def to_hooked_transformer(model: nn.Module) -> Any:
    """A transformer_lens.HookedTransformer with `model`'s weights (copied, on the model's device), in
    eval mode; ConfigError, one line, for a model it cannot express."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        raise ImportError('TransformerLens is an optional extra: pip install -e ".[interp]"') from None
    if isinstance(model, Transformer):
        settings, weights = _transformer(model)
    elif isinstance(model, GPT):
        settings, weights = _gpt(model)
    else:
        raise ConfigError(
            f"{type(model).__name__}: TransformerLens's HookedTransformer cannot express it (a stack of "
            "attention and MLP blocks over token positions); transformer and gpt models convert"
        )
    device = next(model.parameters()).device
    hooked = HookedTransformer(HookedTransformerConfig(**settings, device=str(device), default_prepend_bos=False))
    hooked.load_and_process_state_dict(
        {name: value.detach().clone() for name, value in weights.items()},
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return hooked.eval()


def _activation(mlp: nn.Module) -> str:
    return next(name for name, function in ACTIVATIONS.items() if function is mlp.act)


def _transformer(model: Transformer) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    (V, D), C = model.W_E.shape, model.W_U.shape[1]
    H, _, E = model.blocks[0].attn.W_Q.shape
    layer_norm = not isinstance(model.ln_final, nn.Identity)
    settings = dict(
        n_layers=len(model.blocks),
        d_model=D,
        d_head=E,
        n_heads=H,
        d_mlp=model.blocks[0].mlp.W_in.shape[1],
        d_vocab=V,
        d_vocab_out=C,
        n_ctx=model.W_pos.shape[0],
        act_fn=_activation(model.blocks[0].mlp),
        normalization_type="LN" if layer_norm else None,
        positional_embedding_type="standard",
    )
    weights = {
        "embed.W_E": model.W_E,
        "pos_embed.W_pos": model.W_pos,
        "unembed.W_U": model.W_U,
        "unembed.b_U": model.W_U.new_zeros(C),
    }
    norms = {"ln_final": model.ln_final}
    for i, block in enumerate(model.blocks):
        attn, mlp, at = block.attn, block.mlp, f"blocks.{i}."
        weights.update({f"{at}attn.W_{x}": getattr(attn, f"W_{x}") for x in "QKVO"})
        weights.update({f"{at}attn.b_{x}": attn.W_Q.new_zeros(H, E) for x in "QKV"})
        weights.update(
            {
                f"{at}attn.b_O": attn.W_O.new_zeros(D),
                f"{at}mlp.W_in": mlp.W_in,
                f"{at}mlp.b_in": mlp.b_in,
                f"{at}mlp.W_out": mlp.W_out,
                f"{at}mlp.b_out": mlp.b_out,
            }
        )
        norms.update({f"{at}ln1": block.ln1, f"{at}ln2": block.ln2})
    if layer_norm:
        for name, norm in norms.items():
            weights.update({f"{name}.w": norm.w, f"{name}.b": norm.b})
    return settings, weights


def _gpt(model: GPT) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    V, D = model.embed.weight.shape
    C = model.unembed.weight.shape[0]
    H = model.blocks[0].attn.n_heads
    E = D // H
    settings = dict(
        n_layers=len(model.blocks),
        d_model=D,
        d_head=E,
        n_heads=H,
        d_mlp=model.blocks[0].mlp.fc_in.out_features,
        d_vocab=V,
        d_vocab_out=C,
        n_ctx=model.n_ctx,
        act_fn=_activation(model.blocks[0].mlp),
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=E,
        rotary_base=ROTARY_BASE,
        rotary_adjacent_pairs=False,
    )
    weights = {
        "embed.W_E": model.embed.weight,
        "unembed.W_U": model.unembed.weight.T,
        "unembed.b_U": model.unembed.bias,
        "ln_final.w": model.ln_final.weight,
        "ln_final.b": model.ln_final.bias,
    }
    for i, block in enumerate(model.blocks):
        attn, mlp, at = block.attn, block.mlp, f"blocks.{i}."
        # qkv.weight (3D, D): row h*E + e of part x computes head h's feature e -> W_x[h, :, e]
        q, k, v = attn.qkv.weight.view(3, H, E, D).transpose(2, 3)  # each (H, D, E)
        weights.update({f"{at}attn.W_Q": q, f"{at}attn.W_K": k, f"{at}attn.W_V": v})
        weights.update({f"{at}attn.b_{x}": q.new_zeros(H, E) for x in "QKV"})
        weights.update({f"{at}attn.W_O": attn.out.weight.T.reshape(H, E, D), f"{at}attn.b_O": attn.out.bias})
        weights.update(
            {
                f"{at}mlp.W_in": mlp.fc_in.weight.T,
                f"{at}mlp.b_in": mlp.fc_in.bias,
                f"{at}mlp.W_out": mlp.fc_out.weight.T,
                f"{at}mlp.b_out": mlp.fc_out.bias,
            }
        )
        for norm in ("ln1", "ln2"):
            weights.update({f"{at}{norm}.w": getattr(block, norm).weight, f"{at}{norm}.b": getattr(block, norm).bias})
    return settings, weights
