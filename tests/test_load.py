"""A run or a sweep in a notebook: `grok.load_run` and `grok.load_sweep` read back everything a run
wrote, from a copy of its directory made elsewhere, and the model they return reproduces the metrics
the run recorded."""

import csv
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import grok
from grok.errors import ConfigError
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def copied_run(tmp_path_factory):
    """A 30-epoch run with checkpoints every 10 epochs and progress measures, copied to another place
    (as from a cluster) and the original removed."""
    root = tmp_path_factory.mktemp("load")
    run_cli(
        [
            "task.p=13",
            "epochs=30",
            "save_every=10",
            "analysis.every=10",
            "logger=none",
            "progress=false",
            f"hydra.run.dir={root / 'original'}",
        ],
        cwd=root,
        check=True,
    )
    shutil.copytree(root / "original", root / "copy")
    shutil.rmtree(root / "original")
    return root / "copy"


def test_a_run_comes_back_with_its_config_split_metrics_measures_and_summary(copied_run):
    run = grok.load_run(copied_run)
    assert (run.config.task.name, run.config.task.p, run.config.epochs) == ("add", 13, 30)
    assert len(run.data.train_idx) == int(0.3 * 13 * 13) and len(run.data.train_idx) + len(run.data.test_idx) == 169
    with open(copied_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert run.metrics["epoch"].tolist() == list(range(1, 31))
    assert run.metrics["test_acc"].tolist() == [float(row["test_acc"]) for row in rows]
    assert run.measures["epoch"].tolist() == [10, 20, 30] and "fourier_gini" in run.measures
    assert run.summary == json.loads((copied_run / "summary.json").read_text())
    assert (run.epoch, run.checkpoints) == (30, [10, 20, 30])


def test_the_model_reproduces_the_last_recorded_test_metrics(copied_run):
    run = grok.load_run(copied_run)
    inputs, labels = run.data.inputs[run.data.test_idx], run.data.labels[run.data.test_idx]
    with torch.no_grad():
        logits = run.model(inputs).double()  # the plain path: the same math as training's, rounded otherwise
    assert run.metrics["test_loss"][-1] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert run.metrics["test_acc"][-1] == pytest.approx((logits.argmax(-1) == labels).double().mean().item(), abs=0.02)


def test_a_chosen_checkpoint_gives_that_epochs_weights(copied_run):
    run = grok.load_run(copied_run, epoch=10)
    saved = torch.load(copied_run / "checkpoints" / "epoch_000010.pt", weights_only=True)["model"]
    assert run.epoch == 10
    assert all(torch.equal(value, saved[name]) for name, value in run.model.state_dict().items())


@pytest.mark.parametrize(
    "where,message",
    [
        ("missing", "no such run directory"),
        ("empty", "not a run directory (no config.yaml, which a run writes when it starts)"),
    ],
)
def test_a_directory_that_is_not_a_run_is_named_in_one_line(tmp_path, where, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as error:
        grok.load_run(tmp_path / where)
    assert str(error.value) == f"{tmp_path / where}: {message}"


def test_an_epoch_without_a_checkpoint_lists_those_there_are(copied_run):
    with pytest.raises(ConfigError, match=r"no checkpoint of epoch 15; the run has checkpoints of epochs 10, 20, 30$"):
        grok.load_run(copied_run, epoch=15)


def test_a_sweep_comes_back_as_its_runs_and_its_table(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "task.p=11",
            "epochs=5",
            "logger=none",
            "progress=false",
            "analysis=none",
            "figures=false",
            "train_frac=0.3,0.6",
            "hydra/launcher=batched",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        check=True,
    )
    sweep = grok.load_sweep(sweep_dir)
    assert sweep.keys == ["train_frac"] and [row["train_frac"] for row in sweep.table] == ["0.3", "0.6"]
    assert [run.config.train_frac for run in sweep.runs] == [0.3, 0.6]
    assert all(run.summary["status"] == "completed" and run.model is not None for run in sweep.runs)
    assert not (sweep_dir / "sweep_summary.csv").exists(), "reading a sweep writes nothing into it"
    with pytest.raises(ConfigError, match="not a sweep directory"):
        grok.load_sweep(tmp_path)
