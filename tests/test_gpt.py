"""The gpt model: equal to a per-position reference written from the formulas (rotations as complex
multiplications), causal, relative in position, GPT-2 initialised, and usable on every task kind."""

import math

import pytest
import torch
import torch.nn.functional as F

from grok.data import make_dataset
from grok.models import build_model, run_with_cache
from grok.models.gpt import rotate
from tests.conftest import make_config


def gpt(*overrides, n_vocab=11, n_classes=10, n_ctx=7):
    cfg = make_config(["model=gpt", *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model, n_vocab, n_classes, n_ctx)


def reference_gpt(model, tokens):
    """Pre-LN decoder per example, head and position; rotary: pair (i, i + E/2) as the complex number
    x_i + j x_(i+E/2), multiplied by exp(j t theta_i), theta_i = 10000^(-2i/E)."""

    def ln(x, mod):
        return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + mod.eps) * mod.weight + mod.bias

    def rot(vec, t):
        half = len(vec) // 2
        theta = torch.tensor([10000.0 ** (-2 * i / len(vec)) for i in range(half)], dtype=torch.float64)
        z = torch.complex(vec[:half], vec[half:]) * torch.exp(1j * t * theta)
        return torch.cat([z.real, z.imag])

    out = []
    for seq in tokens:
        x = model.embed.weight[seq]  # (T, D)
        for block in model.blocks:
            attn, (T, D) = block.attn, x.shape
            H, E = attn.n_heads, D // attn.n_heads
            W_q, W_k, W_v = attn.qkv.weight.split(D)  # each (D, D): rows are (head, e)
            h = torch.stack([ln(r, block.ln1) for r in x])
            mixed = []
            for t in range(T):
                heads = []
                for head in range(H):
                    rows = slice(head * E, (head + 1) * E)
                    q = rot(W_q[rows] @ h[t], t)
                    keys = [rot(W_k[rows] @ h[s], s) for s in range(t + 1)]
                    weights = torch.softmax(torch.stack([q @ k / math.sqrt(E) for k in keys]), 0)
                    heads.append(sum(w * (W_v[rows] @ h[s]) for s, w in enumerate(weights)))
                mixed.append(attn.out.weight @ torch.cat(heads) + attn.out.bias)
            x = x + torch.stack(mixed)
            m = torch.stack([ln(r, block.ln2) for r in x])
            fc_in, fc_out = block.mlp.fc_in, block.mlp.fc_out
            x = x + F.gelu(m @ fc_in.weight.T + fc_in.bias) @ fc_out.weight.T + fc_out.bias
        x = torch.stack([ln(r, model.ln_final) for r in x])
        out.append(x @ model.unembed.weight.T + model.unembed.bias)
    return torch.stack(out)  # (B, T, C)


def test_gpt_equals_a_per_head_per_position_reference():
    model = gpt("model.d_model=16", "model.d_mlp=24", "model.n_heads=2").double()
    tokens = torch.randint(0, 11, (3, 7))
    expected = reference_gpt(model, tokens)
    with torch.no_grad():
        assert torch.allclose(model(tokens, all_positions=True), expected, atol=1e-10)
        assert torch.allclose(model(tokens), expected[:, -1], atol=1e-10), "the last-position path"


def test_rotary_scores_depend_only_on_the_distance_between_positions():
    q, k = torch.randn(2, 16, dtype=torch.float64)
    T = 9
    rq, rk = rotate(q.expand(1, 1, T, 16)), rotate(k.expand(1, 1, T, 16))
    scores = (rq @ rk.transpose(-1, -2))[0, 0]  # (T, T): same vectors at every position
    for t in range(T - 1):
        for s in range(T - 1):
            assert scores[t + 1, s + 1] == pytest.approx(scores[t, s].item(), abs=1e-10)
    assert not torch.allclose(scores[0, 0], scores[0, 3]), "distance does matter"


def test_gpt_is_causal():
    model = gpt()
    tokens = torch.randint(0, 11, (4, 7))
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 11
    with torch.no_grad():
        before, after = model(tokens, all_positions=True), model(changed, all_positions=True)
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_initialisation_is_gpt2s():
    model = gpt("model.n_layers=3")
    residual_std = 0.02 / math.sqrt(2 * 3)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert (param == 0).all(), name
        elif "ln" in name:
            assert (param == 1).all(), name
        else:
            expected = residual_std if name.endswith(("attn.out.weight", "mlp.fc_out.weight")) else 0.02
            assert param.std().item() == pytest.approx(expected, rel=0.1), name
            assert abs(param.mean().item()) < 3 * expected / math.sqrt(param.numel()), name


def test_gpt_defaults_are_seed_002s_decoder_with_two_layers_and_gelu():
    cfg = make_config(["model=gpt"]).model
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.act) == (2, 128, 4, 512, "gelu")


@pytest.mark.parametrize(
    "task", [["task=add", "task.p=7"], ["task=s5", "task.n=3"], ["task=digit_add", "task.digits=1"]]
)
def test_gpt_runs_on_every_kind_of_task(task):
    cfg = make_config(["model=gpt", *task])
    data = make_dataset(cfg.task, 0.5, 0)
    model = build_model(cfg.model, data.n_vocab, data.n_classes, data.inputs.shape[1])
    B, T = data.inputs.shape
    assert model(data.inputs).shape == (B, data.n_classes)
    assert model(data.inputs, all_positions=True).shape == (B, T, data.n_classes)


def test_every_gpt_activation_is_reachable_by_name():
    model = gpt()
    tokens = torch.randint(0, 11, (2, 7))
    logits, cache = run_with_cache(model, tokens)
    for name in [
        "hook_embed",
        "blocks.1.hook_resid_pre",
        "blocks.1.attn.hook_q",
        "blocks.1.attn.hook_k",
        "blocks.1.attn.hook_v",
        "blocks.1.attn.hook_attn_scores",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_z",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_resid_mid",
        "blocks.1.mlp.hook_pre",
        "blocks.1.mlp.hook_post",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post",
    ]:
        assert name in cache, name
    assert (cache["blocks.0.attn.hook_pattern"].triu(1) == 0).all()
    assert torch.allclose(model.unembed(model.ln_final(cache["blocks.1.hook_resid_post"])), logits)


def test_parameters_are_created_and_initialised_in_seed_002s_order():
    """The init loop draws in named_parameters() order: the MLP's weights come after attention's, as
    when they were the block's own fc_in and fc_out, so a seed gives the same weights as then."""
    names = [name for name, _ in gpt("model.n_layers=1").named_parameters()]
    assert names == [
        "embed.weight",
        "blocks.0.ln1.weight",
        "blocks.0.ln1.bias",
        "blocks.0.ln2.weight",
        "blocks.0.ln2.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.out.weight",
        "blocks.0.attn.out.bias",
        "blocks.0.mlp.fc_in.weight",
        "blocks.0.mlp.fc_in.bias",
        "blocks.0.mlp.fc_out.weight",
        "blocks.0.mlp.fc_out.bias",
        "ln_final.weight",
        "ln_final.bias",
        "unembed.weight",
        "unembed.bias",
    ]


def test_a_checkpoint_from_before_the_mlp_module_still_loads():
    """Checkpoints written before the MLP had a module of its own name its weights blocks.{i}.fc_in.* and
    blocks.{i}.fc_out.*: they load into blocks.{i}.mlp.fc_in.* and .fc_out.*, strictly."""
    trained, fresh = gpt(), gpt()
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(torch.randn_like(param))  # trained: every weight differs from the fresh model's
    old_names = {key.replace(".mlp.fc_", ".fc_"): value for key, value in trained.state_dict().items()}
    assert "blocks.1.fc_out.weight" in old_names and not any(".mlp." in key for key in old_names)
    fresh.load_state_dict(old_names)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
    tokens = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        assert torch.equal(fresh(tokens), trained(tokens))
