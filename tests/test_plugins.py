"""Your own parts from outside grok/: a task and a model in a module of your own, with their yaml in
a config directory of your own, selected from the command line like the built-in ones (README,
"Extending"; the files are docs/examples/my_grok, copied to a temporary directory here). They get the
same validation, outputs and sweeps."""

import json
import shutil

import pytest
from omegaconf import OmegaConf

from grok.recording.files import read_metrics
from tests.conftest import ROOT, run_cli


@pytest.fixture
def own_parts(tmp_path):
    """(directory holding my_tasks.py and my_models.py, the overrides that put its conf/ on Hydra's search
    path, the environment that puts its modules on Python's path)."""
    parts = tmp_path / "my_grok"
    shutil.copytree(ROOT / "docs" / "examples" / "my_grok", parts)
    return parts, [f"hydra.searchpath=[file://{parts / 'conf'}]"], {"PYTHONPATH": str(parts)}


def test_a_task_and_a_model_of_your_own_train_through_train_py(tmp_path, own_parts):
    parts, search, env = own_parts
    run_dir = tmp_path / "run"
    run_cli(
        [
            *search,
            "task=xor",
            "model=bilinear",
            "epochs=20",
            "logger=none",
            "progress=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["n_train"] + summary["n_test"] == 64 * 64
    assert [row["epoch"] for row in read_metrics(run_dir / "metrics.csv")] == list(range(1, 21))
    config = OmegaConf.load(run_dir / "config.yaml")
    assert (config.task._target_, config.model._target_) == ("my_tasks.xor", "my_models.Bilinear")
    assert config.task.label_noise_frac == 0.0, "keys its yaml leaves out take the schema's defaults"


@pytest.mark.parametrize(
    "override,message",
    [
        ("task.p=1", "error: task.p=1: must be >= 2"),  # BinaryOperation's own check
        ("model.d_model=0", "error: model.d_model=0: must be >= 1"),  # the model's check
        ("+model.d_modle=32", "error: model.d_modle: not a key of model=bilinear; its keys: name, d_model, d_hidden"),
        ("task=digit_add", "error: model=bilinear: cannot learn the sequence task=digit_add"),
    ],
)
def test_your_parts_are_validated_as_the_built_in_ones_are(tmp_path, own_parts, override, message):
    parts, search, env = own_parts
    result = run_cli(
        [*search, "task=xor", "model=bilinear", override, "logger=none", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_your_parts_sweep_batched_and_summarize(tmp_path, own_parts):
    parts, search, env = own_parts
    sweep_dir = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            *search,
            "task=xor",
            "model=bilinear",
            "epochs=10",
            "logger=none",
            "progress=false",
            "figures=false",
            "train_frac=0.3,0.6",
            "hydra/launcher=batched",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
    )
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "summary.json").read_text())["status"] == "completed"
    result = run_cli(["summarize", str(sweep_dir), "--no-wandb"], tmp_path, script="sweep.py", env=env, check=True)
    assert "train_frac" in result.stdout and (sweep_dir / "sweep_summary.csv").is_file()


def test_a_module_that_is_not_on_the_path_is_named_in_one_line(tmp_path, own_parts):
    parts, search, _ = own_parts
    result = run_cli([*search, "task=xor", "logger=none", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: task._target_=my_tasks.xor: cannot be imported")
