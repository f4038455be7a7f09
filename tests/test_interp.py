"""TransformerLens (the `interp` extra): `grok.to_hooked_transformer(model)` gives a HookedTransformer
that computes the model's logits on every input of a small task, and whose cache holds the same
activations under the same names; a model it cannot express is refused in one line."""

import importlib.util
import warnings

import pytest
import torch

import grok
from grok.config import validate
from grok.data import make_dataset
from grok.errors import ConfigError
from grok.models import build_model, run_with_cache
from tests.conftest import make_config

# found, not imported: importing TransformerLens takes seconds, paid by the one pytest process that runs these
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens") is None,
    reason='the interp extra: pip install -e ".[interp]" (make test installs it)',
)

MODELS = {
    "transformer, 1 layer": ["model=transformer"],
    "transformer, 1 layer, LayerNorm": ["model=transformer", "model.layer_norm=true"],
    "transformer, 2 layers": ["model=transformer", "model.n_layers=2"],
    "transformer, 2 layers, LayerNorm, gelu": [
        "model=transformer",
        "model.n_layers=2",
        "model.layer_norm=true",
        "model.act=gelu",
    ],
    "gpt, 2 layers": ["model=gpt"],
    "gpt on a sequence task": ["model=gpt", "task=digit_add", "task.digits=1", "model.n_layers=1"],
}


def converted(overrides):
    """(our model, its HookedTransformer, every input of the task)."""
    task = [] if any(o.startswith("task=") for o in overrides) else ["task.p=11"]
    cfg = validate(make_config([*task, "model.d_model=32", "model.d_mlp=64", *overrides]))
    data = make_dataset(cfg.task, 0.5, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TransformerLens warns about its own defaults
        return model, grok.to_hooked_transformer(model), data.inputs


@pytest.mark.parametrize("overrides", MODELS.values(), ids=MODELS.keys())
def test_the_hooked_transformer_computes_the_same_logits_on_every_input(overrides):
    model, hooked, inputs = converted(overrides)
    with torch.no_grad():
        ours, theirs = model(inputs, all_positions=True), hooked(inputs)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * ours.abs().max().item()), (ours - theirs).abs().max()


# grok's (B, H, T, E) against TransformerLens's (B, T, H, E)
PER_HEAD = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")


@pytest.mark.parametrize("overrides", [MODELS["transformer, 2 layers, LayerNorm, gelu"], MODELS["gpt, 2 layers"]])
def test_the_caches_hold_the_same_activations_under_the_same_names(overrides):
    model, hooked, inputs = converted(overrides)
    with torch.no_grad():
        _, ours = run_with_cache(model, inputs)
        _, theirs = hooked.run_with_cache(inputs)
    rotated = {"attn.hook_q": "attn.hook_rot_q", "attn.hook_k": "attn.hook_rot_k"} if "model=gpt" in overrides else {}
    for name, activation in ours.items():
        suffix = next((s for s in PER_HEAD if name.endswith(s)), None)
        their_name = name.replace(suffix, rotated[suffix]) if suffix in rotated else name
        theirs_here = theirs[their_name].transpose(1, 2) if suffix else theirs[their_name]
        assert torch.allclose(activation, theirs_here, atol=1e-4), name


def test_a_model_transformer_lens_cannot_express_is_refused_in_one_line():
    cfg = validate(make_config(["model=mlp", "task.p=7"]))
    with pytest.raises(ConfigError, match=r"^OperandMLP: TransformerLens's HookedTransformer cannot express it"):
        grok.to_hooked_transformer(build_model(cfg.model, 8, 7, 3))
