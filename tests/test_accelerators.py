"""Grokking accelerators and progress measures, each checked against a direct re-computation of its
formula: the gradient transforms (Grokfast EMA/MA, ⊥Grad, alone and stacked), StableMax, the Fourier
measures and softmax collapse."""

import io
import math
import time

import pytest
import torch
import torch.nn.functional as F

from grok.config import validate
from grok.errors import ConfigError
from grok.recording.analysis import (
    frequency_norms,
    gini,
    key_frequencies,
    restricted_and_excluded_loss,
    softmax_collapse,
)
from grok.training.losses import stablemax_cross_entropy
from grok.training.optimizers import build_optimizer
from tests.conftest import make_config

GRADIENTS = [[1.0, -2.0, 0.5], [0.3, 0.1, -1.0], [-0.5, 0.4, 0.2], [2.0, 0.0, 1.0], [0.1, 0.1, 0.1], [-1.0, 1.0, 0.0]]


def sgd_with(*overrides):
    """A 3-vector trained by plain SGD (lr 1, no momentum, decay or warmup) with the given transforms."""
    cfg = validate(
        make_config(
            [
                "optimizer=sgd",
                "optimizer.lr=1",
                "optimizer.momentum=0",
                "optimizer.weight_decay=0",
                "optimizer.warmup_steps=0",
                *overrides,
            ]
        )
    )
    param = torch.nn.Parameter(torch.tensor([0.5, 1.0, -1.5], dtype=torch.float64))
    optimizer, _ = build_optimizer(cfg.optimizer, cfg.transforms, [param])
    return param, optimizer


def step(param, optimizer, gradient):
    optimizer.zero_grad()
    (param * torch.tensor(gradient, dtype=torch.float64)).sum().backward()  # d/dparam = gradient
    optimizer.step()


def test_grokfast_ema_adds_lamb_times_the_moving_average_of_gradients():
    param, optimizer = sgd_with(
        "transforms=[grokfast_ema]", "transforms.grokfast_ema.alpha=0.9", "transforms.grokfast_ema.lamb=2"
    )
    expected, ema = [0.5, 1.0, -1.5], None
    for g in GRADIENTS:
        step(param, optimizer, g)
        ema = list(g) if ema is None else [0.9 * e + 0.1 * gi for e, gi in zip(ema, g)]
        expected = [x - (gi + 2 * e) for x, gi, e in zip(expected, g, ema)]
    assert param.tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("reduce,warmup", [("mean", True), ("sum", True), ("mean", False)])
def test_grokfast_ma_adds_lamb_times_the_window_mean_or_sum(reduce, warmup):
    param, optimizer = sgd_with(
        "transforms=[grokfast_ma]",
        "transforms.grokfast_ma.window=3",
        "transforms.grokfast_ma.lamb=5",
        f"transforms.grokfast_ma.reduce={reduce}",
        f"transforms.grokfast_ma.warmup={warmup}",
    )
    expected = [0.5, 1.0, -1.5]
    for t, g in enumerate(GRADIENTS):
        step(param, optimizer, g)
        window = GRADIENTS[max(0, t - 2) : t + 1]
        update = list(g)
        if len(window) == 3 or not warmup:
            total = [sum(column) for column in zip(*window)]
            extra = [v / len(window) for v in total] if reduce == "mean" else total
            update = [u + 5 * e for u, e in zip(update, extra)]
        expected = [x - u for x, u in zip(expected, update)]
    assert param.tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "filter_args",
    [
        ["transforms=[grokfast_ema]"],
        ["transforms=[grokfast_ma]", "transforms.grokfast_ma.window=3"],
        ["transforms=[grokfast_ma,grokfast_ema]", "transforms.grokfast_ma.window=3"],
    ],
)
def test_resume_with_a_filter_is_exact(filter_args):
    straight, straight_opt = sgd_with(*filter_args)
    for g in GRADIENTS:
        step(straight, straight_opt, g)

    first, first_opt = sgd_with(*filter_args)
    for g in GRADIENTS[:3]:
        step(first, first_opt, g)
    buffer = io.BytesIO()
    torch.save({"param": first.detach(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = sgd_with(*filter_args)
    with torch.no_grad():
        resumed.copy_(saved["param"])
    resumed_opt.load_state_dict(saved["optimizer"])
    for g in GRADIENTS[3:]:
        step(resumed, resumed_opt, g)
    assert resumed.tolist() == straight.tolist()


def test_orthograd_update_is_orthogonal_to_the_weights_with_the_gradient_norm():
    param, optimizer = sgd_with("transforms=[orthograd]")
    before = param.detach().clone()
    step(param, optimizer, GRADIENTS[0])
    update = before - param.detach()
    assert torch.dot(update, before).item() == pytest.approx(0, abs=1e-12)
    assert update.norm().item() == pytest.approx(math.sqrt(sum(g * g for g in GRADIENTS[0])), rel=1e-12)


def orthogonalized(w, g):
    """⊥Grad's formula, by hand: g less its projection on w, rescaled to |g|."""
    dot = sum(wi * gi for wi, gi in zip(w, g)) / sum(wi * wi for wi in w)
    o = [gi - dot * wi for wi, gi in zip(w, g)]
    scale = math.sqrt(sum(gi * gi for gi in g)) / math.sqrt(sum(oi * oi for oi in o))
    return [oi * scale for oi in o]


@pytest.mark.parametrize("order", [["grokfast_ema", "orthograd"], ["orthograd", "grokfast_ema"]])
def test_transforms_stack_in_the_order_given(order):
    param, optimizer = sgd_with(f"transforms=[{','.join(order)}]", "transforms.grokfast_ema.alpha=0.9")
    expected, ema = [0.5, 1.0, -1.5], None
    for g in GRADIENTS[:3]:
        step(param, optimizer, g)
        for name in order:
            if name == "orthograd":
                g = orthogonalized(expected, g)
            else:
                ema = list(g) if ema is None else [0.9 * e + 0.1 * gi for e, gi in zip(ema, g)]
                g = [gi + 2.0 * e for gi, e in zip(g, ema)]
        expected = [x - gi for x, gi in zip(expected, g)]
    assert param.tolist() == pytest.approx(expected, abs=1e-12)


def test_a_bad_transform_setting_names_its_field():
    with pytest.raises(ConfigError, match=r"^transforms.grokfast_ema.alpha=1.5: must be in \[0, 1\)$"):
        sgd_with("transforms=[grokfast_ema]", "transforms.grokfast_ema.alpha=1.5")


def test_accelerators_are_off_by_default():
    param, optimizer = sgd_with()
    step(param, optimizer, GRADIENTS[0])
    assert param.tolist() == pytest.approx([0.5 - 1.0, 1.0 + 2.0, -1.5 - 0.5])


def test_stablemax_cross_entropy_equals_its_formula():
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
    labels = torch.tensor([0, 1])
    s = lambda x: x + 1 if x >= 0 else 1 / (1 - x)
    by_hand = [-math.log(s(row[y]) / sum(s(v) for v in row)) for row, y in zip(logits.tolist(), labels.tolist())]
    assert stablemax_cross_entropy(logits, labels).item() == pytest.approx(sum(by_hand) / 2, rel=1e-12)


def test_stablemax_gradients_stay_finite_at_and_around_zero():
    logits = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor([1])).backward()
    assert torch.isfinite(logits.grad).all()


P = 31


def embedding_from(freqs, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(P, dtype=torch.float64)[:, None]
    return sum(
        torch.cos(2 * math.pi * k * x / P) * torch.randn(1, d, generator=g, dtype=torch.float64)
        + torch.sin(2 * math.pi * k * x / P) * torch.randn(1, d, generator=g, dtype=torch.float64)
        for k in freqs
    )


def test_fourier_measures_recover_the_frequencies_an_embedding_is_built_from():
    norms = frequency_norms(embedding_from([3, 7, 11]))
    assert len(norms) == P // 2
    assert key_frequencies(norms, 3) == [3, 7, 11]
    assert all(norms[k - 1] < 1e-9 for k in range(1, P // 2 + 1) if k not in (3, 7, 11))
    random_embedding = torch.randn(P, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert gini(norms) > 0.75 > 0.3 > gini(frequency_norms(random_embedding))


def test_gini_of_equal_values_is_zero_and_of_one_spike_is_n_minus_1_over_n():
    assert gini(torch.ones(10)) == pytest.approx(0)
    assert gini(torch.tensor([0.0] * 9 + [5.0])) == pytest.approx(0.9)


def test_restricted_loss_of_pure_key_frequency_logits_equals_the_loss():
    a, b = torch.cartesian_prod(torch.arange(P), torch.arange(P)).unbind(1)
    c = torch.arange(P, dtype=torch.float64)
    phase = (a + b).double()[:, None] - c[None, :]
    logits = 4 * torch.cos(2 * math.pi * 5 * phase / P) + 3 * torch.sin(2 * math.pi * 9 * phase / P)
    labels = (a + b) % P
    measured = restricted_and_excluded_loss(logits, a, b, labels, P, [5, 9])
    assert measured["restricted_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-9)
    assert measured["excluded_loss"] == pytest.approx(math.log(P), rel=1e-9), "nothing left: uniform"


def _pairs_and_logits(p: int, n: int, seed: int):
    """n distinct pairs (a, b) of Z_p, their labels (a + b) mod p, and random (n, p) logits."""
    generator = torch.Generator().manual_seed(seed)
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))[torch.randperm(p * p, generator=generator)[:n]]
    a, b = pairs.unbind(1)
    return a, b, (a + b) % p, torch.randn(n, p, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("p, freqs, sign", [(13, [1, 4, 6], 1), (12, [2, 5, 6], 1), (13, [2, 3], -1)])
def test_the_restricted_loss_projects_as_a_least_squares_solver_does(p, freqs, sign):
    """12: sin(w_6 x) is zero; sign -1: subtraction's directions, w_k(a - b - c)."""
    a, b, _, logits = _pairs_and_logits(p, n=50, seed=p)
    labels = (a + sign * b) % p
    phase = (a + sign * b).double()[:, None] - torch.arange(p, dtype=torch.float64)
    design = torch.stack([f(2 * math.pi * k / p * phase).flatten() for k in freqs for f in (torch.cos, torch.sin)], 1)
    solution = torch.linalg.lstsq(design, logits.reshape(-1, 1), driver="gelsd").solution  # rank-revealing
    restricted = (design @ solution).reshape(logits.shape)
    measured = restricted_and_excluded_loss(logits, a, b, labels, p, freqs, sign)
    assert measured["restricted_loss"] == pytest.approx(F.cross_entropy(restricted, labels).item(), rel=1e-12)
    assert measured["excluded_loss"] == pytest.approx(F.cross_entropy(logits - restricted, labels).item(), rel=1e-12)


@pytest.mark.float_sensitive  # bit for bit under each kernel of `make test`
def test_the_restricted_loss_repeats_bit_for_bit_wherever_its_inputs_lie_in_memory():
    a, b, labels, logits = _pairs_and_logits(P, n=60, seed=0)
    results = set()
    for offset in range(16):  # the same values at 16 alignments
        moved = torch.empty(logits.numel() + offset, dtype=torch.float64)[offset:].view_as(logits).copy_(logits)
        results.add(tuple(restricted_and_excluded_loss(moved, a, b, labels, P, [1, 3, 5]).values()))
    assert len(results) == 1, results


def test_softmax_collapse_counts_zero_losses_and_saturated_softmaxes_in_float32():
    logits = torch.tensor([[200.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 200.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    measured = softmax_collapse(logits, labels)
    assert measured["zero_loss_frac"] == pytest.approx(1 / 3)
    assert measured["saturated_frac"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- in a run
from grok.recording.files import read_metrics  # noqa: E402
from grok.run import end, run, start  # noqa: E402
from grok.system.signals import StopRequest  # noqa: E402
from grok.training.loop import train_runs  # noqa: E402
from tests.conftest import GROKS_FAST, run_cli, wandb_records  # noqa: E402


def train(tmp_path, name, *overrides):
    out = tmp_path / name
    out.mkdir()
    return run(make_config(["logger=none", "progress=false", "figures=false", *overrides]), out), out


def test_progress_measures_are_logged_every_analysis_every_epochs_with_their_plots(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        ["task.p=13", "epochs=30", "analysis.every=10", "analysis.n_key_freqs=3", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        check=True,
    )
    measures = read_metrics(run_dir / "analysis.csv")
    assert [m["epoch"] for m in measures] == [10, 20, 30]
    for key in [
        "weight_norm/W_E",
        "weight_norm/blocks.0.attn.W_Q",
        "fourier_gini",
        "restricted_loss",
        "excluded_loss",
        "zero_loss_frac",
        "saturated_frac",
    ]:
        assert key in measures[0], key
    assert len(str(measures[0]["key_frequencies"]).split()) == 3
    for image in ["curves.png", "progress.png", "fourier_spectrum.png"]:
        assert (run_dir / image).read_bytes()[:4] == b"\x89PNG"
    history = wandb_records(run_dir)["history"]
    assert [row["epoch"] for row in history] == list(range(1, 31)), "measures join their epoch's row"
    assert history[19]["fourier_gini"] == pytest.approx(measures[1]["fourier_gini"])
    assert "fourier_gini" not in history[18]


def test_analysis_none_writes_no_measures(tmp_path):
    _, out = train(tmp_path, "run", "task.p=11", "epochs=5", "analysis=none", "figures=true")
    assert not (out / "analysis.csv").exists() and not (out / "progress.png").exists()
    assert (out / "curves.png").exists()


@pytest.mark.parametrize("overrides", [[], ["batch_size=16"]])
def test_the_loop_measures_and_figures_make_their_tensors_on_the_data_s_device(tmp_path, overrides):
    """What a GPU run needs, checked on a CPU: every tensor a run makes once started (its epochs, the
    progress measures, the figures) goes on its data's device, none on PyTorch's default device. Here
    that default is 'meta' (tensors without values: using one with the run's fails), and the run's
    files are those of a run without it. Before, the measures made their Fourier basis on the default
    device: on a GPU the first measured epoch would have failed."""
    args = ["task.p=11", "epochs=20", "analysis.every=10", "save_every=10", "logger=none", "progress=false"]
    written = []
    for name, default_device in (("plain", "cpu"), ("meta", "meta")):
        (tmp_path / name).mkdir()
        experiment = start(make_config([*args, *overrides]), tmp_path / name, name, time.perf_counter())
        with torch.device(default_device):
            (summary,) = train_runs([experiment], StopRequest(), end)
        assert summary["status"] == "completed", summary
        written.append([(experiment.run_dir / f).read_bytes() for f in ("metrics.csv", "analysis.csv")])
    assert written[0] == written[1]


def test_stablemax_runs_are_trained_and_scored_with_stablemax(tmp_path):
    softmax, _ = train(tmp_path, "softmax", "task.p=11", "epochs=3", "analysis=none")
    stable, out = train(tmp_path, "stable", "task.p=11", "epochs=3", "analysis=none", "loss=stablemax")
    assert stable["status"] == "completed" and stable["test_loss"] != softmax["test_loss"]
    assert read_metrics(out / "metrics.csv")[0]["train_loss"] == pytest.approx(math.log(11), rel=0.2)


@pytest.mark.parametrize(
    "accelerator",
    [
        ["transforms=[grokfast_ema]"],
        ["transforms=[grokfast_ma]", "transforms.grokfast_ma.window=5"],
        ["transforms=[orthograd]"],
    ],
)
def test_a_run_with_an_accelerator_resumes_exactly(tmp_path, accelerator, device):
    args = ["task.p=11", "analysis=none", "save_every=10", f"device={device}", *accelerator]
    train(tmp_path, "straight", *args, "epochs=20")
    _, out = train(tmp_path, "resumed", *args, "epochs=10")
    run(make_config(["logger=none", "progress=false", *args, "epochs=20", f"resume={out}"]), tmp_path / "resumed")
    assert (out / "metrics.csv").read_bytes() == (tmp_path / "straight" / "metrics.csv").read_bytes()


def test_fast_grok_groks_sooner_than_the_plain_default_on_the_same_config_and_seeds(tmp_path):
    args = [*GROKS_FAST, "epochs=1500", "stop.test_acc=0.99", "analysis=none"]
    plain, _ = train(tmp_path, "plain", *args)
    fast, _ = train(tmp_path, "fast", "experiment=fast_grok", *args)
    assert fast["grok_epoch"] is not None
    assert plain["grok_epoch"] is None or fast["grok_epoch"] < plain["grok_epoch"] / 2, (fast, plain)
