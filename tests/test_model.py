"""Models: plug-ins that `model._target_` names, output shapes, every activation reachable by name,
and the math equal to a second, loop-by-loop implementation written from the formulas; the loss is a
float64 cross-entropy."""

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from grok.errors import ConfigError
from grok.models import HookPoint, build_model, fast, layers, run_with_cache, tables
from grok.models.gpt import GPT
from grok.models.mlp import OperandMLP
from grok.models.tables import TableForward
from grok.models.transformer import Transformer
from grok.run import resolve_device
from grok.training.losses import cross_entropy
from tests.conftest import make_config

P = 13


def model_and_tokens(*overrides, batch=6, device="cpu"):
    cfg = make_config(list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg.model, n_vocab=P + 1, n_classes=P, n_ctx=3).to(device, torch.float64)
    tokens = torch.cat([torch.randint(0, P, (batch, 2)), torch.full((batch, 1), P)], dim=1)
    return model, tokens.to(device)


def reference_transformer(model, tokens, layer_norm=False):
    """The transformer of seed 001 written out per example, per head and per position (float64)."""
    ln = lambda x, w, b: (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5) * w + b
    out = []
    for seq in tokens:
        x = torch.stack([model.W_E[t] + model.W_pos[i] for i, t in enumerate(seq)])  # (T, D)
        for block in model.blocks:
            a = block.attn
            h_in = torch.stack([ln(r, block.ln1.w, block.ln1.b) for r in x]) if layer_norm else x
            new = []
            for q_pos in range(len(seq)):
                attn = torch.zeros_like(x[q_pos])
                for h in range(a.W_Q.shape[0]):
                    q = h_in[q_pos] @ a.W_Q[h]
                    scores = [q @ (h_in[k] @ a.W_K[h]) / math.sqrt(q.numel()) for k in range(q_pos + 1)]
                    weights = torch.softmax(torch.stack(scores), 0)
                    z = sum(w * (h_in[k] @ a.W_V[h]) for k, w in enumerate(weights))
                    attn = attn + z @ a.W_O[h]
                mid = x[q_pos] + attn
                m_in = ln(mid, block.ln2.w, block.ln2.b) if layer_norm else mid
                hidden = torch.relu(m_in @ block.mlp.W_in + block.mlp.b_in)
                new.append(mid + hidden @ block.mlp.W_out + block.mlp.b_out)
            x = torch.stack(new)
        if layer_norm:
            x = torch.stack([ln(r, model.ln_final.w, model.ln_final.b) for r in x])
        out.append(x @ model.W_U)
    return torch.stack(out)  # (B, T, C)


@pytest.mark.parametrize("overrides", [[], ["model.n_layers=2"], ["model.n_layers=2", "model.layer_norm=true"]])
def test_transformer_equals_a_per_head_per_position_reference(overrides, device):
    model, tokens = model_and_tokens(*overrides, device=device)
    expected = reference_transformer(model, tokens, layer_norm="model.layer_norm=true" in overrides)
    with torch.no_grad():
        assert torch.allclose(model(tokens, all_positions=True), expected, atol=1e-10)
        assert torch.allclose(model(tokens), expected[:, -1], atol=1e-10), "the last-position path"


def test_mlp_equals_embed_concat_hidden_unembed():
    model, tokens = model_and_tokens("model=mlp")
    x = torch.cat([model.W_E[tokens[:, 0]], model.W_E[tokens[:, 1]]], dim=1)
    hidden = torch.relu(x @ model.mlp.W_in + model.mlp.b_in)
    expected = (hidden @ model.mlp.W_out + model.mlp.b_out) @ model.W_U
    with torch.no_grad():
        assert torch.allclose(model(tokens), expected, atol=1e-12)


def test_output_shapes():
    model, tokens = model_and_tokens()
    assert model(tokens).shape == (6, P)
    assert model(tokens, all_positions=True).shape == (6, 3, P)
    mlp, _ = model_and_tokens("model=mlp")
    assert mlp(tokens).shape == (6, P)


def test_default_transformer_has_the_literature_shape():
    cfg = make_config()
    model = build_model(cfg.model, n_vocab=98, n_classes=97, n_ctx=3)
    blk = model.blocks[0]
    assert len(model.blocks) == 1 and blk.attn.W_Q.shape == (4, 128, 32) and blk.mlp.W_in.shape == (128, 512)
    assert not any("ln" in name for name, _ in model.named_parameters()), "no LayerNorm by default"


def test_every_activation_is_reachable_by_name():
    model, tokens = model_and_tokens()
    logits, cache = run_with_cache(model, tokens)
    for name in [
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.0.attn.hook_attn_scores",
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_z",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
    ]:
        assert name in cache, name
    assert cache["blocks.0.attn.hook_q"].shape == (6, 4, 3, 32)  # (B, H, T, E)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(6, 4, 3, dtype=pattern.dtype))
    assert (pattern.triu(1) == 0).all(), "causal: no position attends to a later one"
    assert torch.equal(cache["blocks.0.attn.hook_attn_scores"].softmax(-1), pattern)
    assert torch.allclose(cache["blocks.0.hook_resid_post"] @ model.W_U, logits)
    assert not any(module._forward_hooks for module in model.modules()), "hooks are removed afterwards"


def test_a_hook_can_edit_an_activation():
    model, tokens = model_and_tokens()
    hook_point = dict(model.named_modules())["blocks.0.mlp.hook_post"]
    assert isinstance(hook_point, HookPoint)
    handle = hook_point.register_forward_hook(lambda mod, inp, out: torch.zeros_like(out))
    with torch.no_grad():
        ablated = model(tokens)
    handle.remove()
    assert not torch.allclose(ablated, model(tokens).detach())


PLUGINS = {"transformer": Transformer, "mlp": OperandMLP, "gpt": GPT}


@pytest.mark.parametrize("name", PLUGINS)
def test_a_model_is_the_plugin_its_target_names(name):
    plugin = PLUGINS[name]
    cfg = OmegaConf.create({"_target_": f"{plugin.__module__}.{plugin.__qualname__}", **asdict(plugin.Config())})
    assert cfg.name == name, "its schema's defaults name it"
    model = build_model(cfg, n_vocab=P + 1, n_classes=P, n_ctx=3)
    assert type(model) is plugin
    assert plugin.reads_sequences == (name != "mlp"), "the MLP reads two operands, not a sequence"
    plugin.check(cfg)  # the defaults pass their own checks


def test_build_model_names_the_missing_target():
    with pytest.raises(ConfigError, match=r"^model: has no _target_"):
        build_model(OmegaConf.create({"name": "transformer"}), n_vocab=P + 1, n_classes=P, n_ctx=3)


@pytest.mark.parametrize(
    "plugin, overrides, message",
    [
        (Transformer, {"d_model": 0}, "model.d_model=0: must be >= 1"),
        (OperandMLP, {"d_mlp": 0}, "model.d_mlp=0: must be >= 1"),
        (GPT, {"act": "tanh"}, "model.act=tanh: must be one of relu, gelu"),
        (Transformer, {"n_layers": 0}, "model.n_layers=0: must be >= 1"),
        (GPT, {"n_heads": 0}, "model.n_heads=0: must be >= 1"),
        (Transformer, {"d_model": 100, "n_heads": 3}, "model.d_model=100: must be divisible by model.n_heads=3"),
        (GPT, {"d_model": 12, "n_heads": 4}, "model.d_model=12: d_model / n_heads must be even for rotary positions"),
    ],
)
def test_each_model_checks_its_own_config_in_one_line(plugin, overrides, message):
    cfg = OmegaConf.merge(OmegaConf.structured(plugin.Config), overrides)
    with pytest.raises(ConfigError) as error:
        plugin.check(cfg)
    assert str(error.value) == message


def test_fast_wraps_the_models_that_have_tables_and_shares_their_weights():
    transformer, _ = model_and_tokens()
    mlp, _ = model_and_tokens("model=mlp")
    gpt = build_model(make_config(["model=gpt"]).model, n_vocab=P + 1, n_classes=P, n_ctx=3)
    for model in (transformer, mlp):
        wrapped = fast(model, tables=True)
        assert isinstance(wrapped, TableForward) and wrapped.model is model
        names = [name for name, _ in model.named_parameters()]
        assert [name for name, _ in wrapped.named_parameters()] == [f"model.{name}" for name in names]
        assert all(a is b for a, b in zip(wrapped.parameters(), model.parameters()))
    assert fast(gpt) is gpt, "no tables: the model itself"


def test_fast_takes_the_tables_on_a_cpu_and_the_models_own_forward_on_a_gpu(device):
    """`tables` unset (the config's null): the table path on a CPU, where it pays; on a GPU the model
    itself (docs/performance.md, "On a GPU"). true and false choose on every device."""
    model, _ = model_and_tokens(device=device)
    assert isinstance(fast(model), TableForward) == (device == "cpu")
    assert isinstance(fast(model, tables=True), TableForward)
    assert fast(model, tables=False) is model


@pytest.mark.parametrize("as_on_a_gpu", [True, False], ids=["one-hot-backward", "index_select"])
def test_gather_rows_gives_the_rows_and_sums_their_gradient_in_a_fixed_order(as_on_a_gpu, device, monkeypatch):
    """grok.models.layers.gather_rows, the embeddings' gather: table[index], and as its gradient each
    row's sum of the gradients of the places that read it, the same in every call. A GPU's gradient by
    a one-hot product runs here on a CPU too: compiled, and under torch.vmap (runs trained together,
    each with its own tokens)."""
    monkeypatch.setattr(layers, "_by_one_hot", lambda table: as_on_a_gpu)
    resolve_device(device)  # as a run does: on a GPU, the deterministic kernels
    torch.manual_seed(0)
    table = torch.randn(7, 2, 3, device=device)
    index = torch.randint(0, 7, (5, 4), device=device)
    grad = torch.randn(5, 4, 2, 3, device=device)

    def expected_grad(index):  # float64 sums, place by place
        sums = torch.zeros(7, 2, 3, dtype=torch.float64, device=device)
        for place, row in enumerate(index.flatten().tolist()):
            sums[row] += grad.flatten(0, 1)[place].double()
        return sums

    assert torch.equal(layers.gather_rows(table, index), table[index])
    gradient = torch.func.grad(lambda t: (layers.gather_rows(t, index) * grad).sum())
    assert torch.allclose(gradient(table).double(), expected_grad(index), rtol=1e-6, atol=1e-6)
    assert torch.equal(gradient(table), gradient(table)), "the same order every call"
    compiled = torch.compile(gradient, fullgraph=True, backend="aot_eager")  # the captured epoch's grad
    assert torch.allclose(compiled(table).double(), expected_grad(index), rtol=1e-6, atol=1e-6)

    runs, indices = torch.stack([table, 2 * table]), torch.stack([index, index.flip(0)])
    assert torch.equal(
        torch.vmap(layers.gather_rows)(runs, indices), torch.stack([table[index], 2 * table[index.flip(0)]])
    )
    run_gradients = torch.func.grad(lambda r: (torch.vmap(layers.gather_rows)(r, indices) * grad).sum())(runs)
    expected = torch.stack([expected_grad(index), expected_grad(index.flip(0))])
    assert torch.allclose(run_gradients.double(), expected, rtol=1e-6, atol=1e-6)


def test_the_captured_epoch_sums_a_gpus_gather_gradient_by_its_own_backward(monkeypatch):
    """On a GPU the embeddings' gradient is a one-hot product (grok.models.layers.gather_rows), where
    index_select's deterministic CUDA backward is 2-3x slower per epoch: torch.compile of torch.func.grad
    (the captured epoch's) must take the Function's own backward, not differentiate its index_select.
    Here a backward scaled on purpose must show in the compiled gradient. AOTAutograd chooses the
    backward (aot_eager's stage too; Inductor then compiles the graph it traced)."""
    monkeypatch.setattr(layers, "_by_one_hot", lambda table: True)
    own_backward = layers._RowsSummedByOneHot.backward
    monkeypatch.setattr(
        layers._RowsSummedByOneHot, "backward", staticmethod(lambda ctx, g: (3 * own_backward(ctx, g)[0], None))
    )
    torch.manual_seed(0)
    table, index = torch.randn(7, 3), torch.randint(0, 7, (5, 4))
    weights = torch.randn(5, 4, 3)
    gradient = torch.func.grad(lambda t: (layers.gather_rows(t, index) * weights).sum())
    true_gradient = torch.func.grad(lambda t: (t[index] * weights).sum())(table)
    compiled = torch.compile(gradient, fullgraph=True, backend="aot_eager")(table)
    assert torch.allclose(compiled, 3 * true_gradient, rtol=1e-5, atol=1e-6)


# one hook of each kind PyTorch has, on the MLP's hook point, or on every module (global) reacting to it
_global = torch.nn.modules.module
HOOKS = {
    "forward": lambda point, seen: point.register_forward_hook(lambda *_: seen.append(1)),
    "forward pre": lambda point, seen: point.register_forward_pre_hook(lambda *_: seen.append(1)),
    "full backward": lambda point, seen: point.register_full_backward_hook(lambda *_: seen.append(1)),
    "full backward pre": lambda point, seen: point.register_full_backward_pre_hook(lambda *_: seen.append(1)),
    "global forward": lambda point, seen: _global.register_module_forward_hook(
        lambda module, *_: seen.append(1) if module is point else None
    ),
    "global forward pre": lambda point, seen: _global.register_module_forward_pre_hook(
        lambda module, *_: seen.append(1) if module is point else None
    ),
    "global full backward": lambda point, seen: _global.register_module_full_backward_hook(
        lambda module, *_: seen.append(1) if module is point else None
    ),
    "global full backward pre": lambda point, seen: _global.register_module_full_backward_pre_hook(
        lambda module, *_: seen.append(1) if module is point else None
    ),
}


@pytest.mark.parametrize("kind", HOOKS)
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # a global one, on the wrapper: its input is tokens
def test_a_hook_of_any_kind_sends_the_table_path_back_through_the_hook_points(kind, monkeypatch):
    model, tokens = model_and_tokens(batch=64)  # enough examples for the tables to pay
    point = dict(model.named_modules())["blocks.0.mlp.hook_post"]
    by_tables = []
    spied = tables.transformer_by_tables
    monkeypatch.setattr(tables, "transformer_by_tables", lambda *args: by_tables.append(1) or spied(*args))
    fast(model, tables=True)(tokens).sum().backward()
    assert by_tables == [1], "no hook attached: the tables"

    seen = []
    handle = HOOKS[kind](point, seen)
    try:
        fast(model, tables=True)(tokens).sum().backward()
    finally:
        handle.remove()
    assert seen, "the hook ran"
    assert by_tables == [1], "a hook attached: the plain path"


def test_loss_is_float64_cross_entropy():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 2])
    loss = cross_entropy(logits, labels)
    assert loss.dtype == torch.float64
    by_hand = [-(row[y] - math.log(sum(math.exp(v) for v in row))) for row, y in zip(logits.tolist(), labels.tolist())]
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-12)


def test_float64_loss_resolves_what_float32_rounds_to_zero():
    confident = torch.tensor([[30.0, 0.0, 0.0]])  # true loss ~ 2 * e^-30 ~ 1.9e-13
    label = torch.tensor([0])
    assert F.cross_entropy(confident, label).item() == 0.0
    assert cross_entropy(confident, label).item() == pytest.approx(2 * math.exp(-30), rel=1e-6)
