"""Reproductions of the literature (docs/results.md): every preset and named sweep behind one runs,
at each of its grid points; the keys they rely on (init_scale, the float32 loss) do what the papers
mean by them; `sweep.py reproduce` reports a run's phases by the rule its docstring states."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from grok.config import validate
from grok.errors import ConfigError
from grok.run import run, start
from grok.sweeps.named import compose_sweep, grid_jobs, sweep_axes
from grok.sweeps.reproduce import phases
from grok.training.losses import cross_entropy, cross_entropy32
from tests.conftest import make_config, run_cli

SWEEPS = ["power2022", "liu2022", "prieto2025", "omnigrok2023"]
SMALL = [f"{name}_small" for name in SWEEPS]


def grid_points(name):
    return grid_jobs(sweep_axes(compose_sweep(name, []), name, []))


@pytest.mark.parametrize("name", SMALL)
def test_each_cpu_scale_reproduction_runs_at_its_grid_points(name, tmp_path):
    """Every point of seed 0 where the points choose other code (prieto2025's losses and transforms),
    else the first and last (numbers only: learning rates, fractions, scales; seeds)."""
    points = grid_points(name)
    chosen = [p for p in points if "seed=0" in p] if name.startswith("prieto") else [points[0], points[-1]]
    for i, point in enumerate(chosen):
        cfg = make_config([*point, "epochs=2", "task.p=11", "logger=none", "analysis=none"])
        assert run(cfg, tmp_path / str(i))["status"] == "completed", point


@pytest.mark.parametrize("name", [*SWEEPS, *SMALL])
def test_each_reproduction_runs_three_seeds_a_point_each_on_its_own_split(name):
    cfg = compose_sweep(name, [])
    assert cfg.hydra.sweeper.params["seed"] == "0,1,2"
    assert OmegaConf.to_container(cfg, resolve=False)["data_seed"] == "${seed}"


@pytest.mark.parametrize("name", SWEEPS)
def test_the_papers_settings_run_at_their_first_and_last_grid_points(name, tmp_path):
    points = grid_points(name)
    for i, point in enumerate([points[0], points[-1]]):
        cfg = make_config([*point, "epochs=2", "task.p=11", "logger=none", "analysis=none"])
        assert run(cfg, tmp_path / str(i))["status"] == "completed", point


def test_nanda2023_is_the_papers_setting_and_runs(tmp_path):
    cfg = validate(make_config(["experiment=nanda2023"]))
    assert (cfg.task.name, cfg.task.p, cfg.train_frac) == ("add", 113, 0.3)
    model, opt = cfg.model, cfg.optimizer
    assert (model.n_layers, model.d_model, model.n_heads, model.d_mlp, model.act, model.layer_norm) == (
        1, 128, 4, 512, "relu", False)  # fmt: skip
    assert (opt.name, opt.lr, opt.weight_decay, list(opt.betas)) == ("adamw", 1e-3, 1.0, [0.9, 0.98])
    assert cfg.batch_size is None and cfg.analysis.every == 100
    summary = run(make_config(["experiment=nanda2023", "task.p=11", "epochs=2", "logger=none"]), tmp_path)
    assert summary["status"] == "completed"


def test_init_scale_multiplies_every_initial_weight(tmp_path):
    runs = {}
    for scale in (1.0, 3.0):
        cfg = make_config(["task.p=11", f"init_scale={scale}", "logger=none", "progress=false"])
        runs[scale] = start(cfg, tmp_path / str(scale), "probe", 0.0).model
    for (name, plain), scaled in zip(runs[1.0].named_parameters(), runs[3.0].parameters()):
        assert torch.equal(scaled, 3.0 * plain), name
    with pytest.raises(ConfigError, match=r"^init_scale=0.0: must be > 0$"):
        validate(make_config(["init_scale=0"]))


def test_the_float32_loss_collapses_where_the_float64_one_does_not():
    """Prieto et al.'s softmax collapse: a right answer by a margin of 20 has a float32 loss of
    exactly 0 (1 + 2 exp(-20) rounds to 1), and so has the gradient on its logit (p - 1); in float64
    they are log(1 + 2 exp(-20)) and about -2 exp(-20)."""
    logits = torch.tensor([[20.0, 0.0, 0.0], [1.0, 2.0, 0.5]], requires_grad=True)
    labels = torch.tensor([0, 1])
    first = logits[:1]
    assert cross_entropy32(first, labels[:1]).item() == 0.0
    assert cross_entropy(first, labels[:1]).item() == pytest.approx(math.log1p(2 * math.exp(-20)), rel=1e-9)
    cross_entropy32(first, labels[:1]).backward()
    assert logits.grad[0, 0].item() == 0.0, "nothing left to push the right answer's logit"
    logits.grad = None
    cross_entropy(first, labels[:1]).backward()
    assert logits.grad[0, 0].item() == pytest.approx(-2 * math.exp(-20), rel=1e-6)
    expected = -F.log_softmax(logits.detach()[1:].float(), dim=-1)[0, 1]
    assert cross_entropy32(logits.detach()[1:], labels[1:]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_runs_phases_are_read_by_the_stated_rule(tmp_path):
    """Memorization ends when train accuracy first reaches 0.99, circuit formation at the excluded
    loss's peak after it, cleanup when test accuracy first reaches 0.99."""
    header = "epoch,train_loss,train_acc,test_loss,test_acc,lr,weight_norm\n"
    accuracies = [(100, 0.5, 0.0), (200, 0.99, 0.1), (300, 1.0, 0.2), (400, 1.0, 0.6), (500, 1.0, 0.995)]
    (tmp_path / "metrics.csv").write_text(header + "".join(f"{e},1,{tr},1,{te},0.001,10\n" for e, tr, te in accuracies))
    excluded = [(100, 9.0), (200, 1.0), (300, 5.0), (400, 3.0), (500, 2.0)]  # the peak before memorizing is not it
    (tmp_path / "analysis.csv").write_text("epoch,excluded_loss\n" + "".join(f"{e},{x}\n" for e, x in excluded))
    assert phases(tmp_path) == [
        {"phase": "memorization", "ends_at_epoch": 200},
        {"phase": "circuit formation", "ends_at_epoch": 300},
        {"phase": "cleanup", "ends_at_epoch": 500},
    ]


@pytest.mark.slow
def test_a_reproduction_runs_to_its_end_and_writes_its_figure_and_table(tmp_path):
    sweep_dir = tmp_path / "omnigrok"
    result = run_cli(["reproduce", "omnigrok2023_small", "init_scale=2,8", "seed=0", "epochs=100", "logger=none",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, script="sweep.py", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads((sweep_dir / job / "summary.json").read_text()) for job in ("0", "1")]
    assert all(row["status"] == "completed" for row in rows)
    assert (sweep_dir / "sweep_summary.csv").is_file() and (sweep_dir / "epochs_curve.png").read_bytes()[
        :4
    ] == b"\x89PNG"
    assert "init_scale=8" in OmegaConf.load(sweep_dir / "1" / ".hydra" / "overrides.yaml")
