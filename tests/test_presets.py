"""Presets: `experiment=seedNNN` sets each seed notebook's setting, and every preset runs."""

import json

import pytest
from omegaconf import OmegaConf

from grok.config import validate
from grok.run import run
from tests.conftest import make_config, run_cli

# What each seed notebook (/work/shared/seeds, README there) trains: task, data, model, optimizer.
SEED_SETTINGS = {
    "seed000": {
        "task": {"name": "add", "p": 113},
        "train_frac": 0.3,
        "epochs": 50000,
        "stop.test_loss": 0.005,
        "model": {"name": "transformer", "n_layers": 1, "d_model": 128, "n_heads": 4, "layer_norm": False},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98], "warmup_steps": 0},
        "batch_size": None,
    },
    "seed001": {
        "task": {"name": "divide", "p": 97},
        "train_frac": 0.1,
        "epochs": 50000,
        "model": {"name": "transformer", "n_layers": 1, "d_model": 128, "d_mlp": 512, "act": "relu"},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1.0, "warmup_steps": 10},
        "batch_size": None,
    },
    "seed002": {
        "task": {"name": "digit_add", "digits": 3, "reverse": True},
        "model": {"name": "gpt", "n_layers": 4, "d_model": 128, "n_heads": 4, "d_mlp": 512, "act": "relu"},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.999], "warmup_steps": 0},
        "batch_size": 256,
        "seed": 1337,
    },
    "seed003": {
        "task": {"name": "add", "p": 97},
        "train_frac": 0.3,
        "epochs": 30000,
        "model": {"name": "transformer", "n_layers": 1, "d_model": 128, "d_mlp": 512, "act": "relu"},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98], "warmup_steps": 0},
        "batch_size": None,
    },
    "seed004": {
        "task": {"name": "noisy_label", "p": 97, "noise": 4},
        "train_frac": 0.3,
        "epochs": 20000,
        "model": {"name": "mlp", "d_model": 128, "d_mlp": 512, "act": "relu"},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98], "warmup_steps": 0},
        "batch_size": None,
    },
}
# Shrinks each preset's data so that two epochs take a moment; everything else stays the preset's.
SMALL = {"seed002": ["task.digits=1"]}


@pytest.mark.parametrize("preset", sorted(SEED_SETTINGS))
def test_preset_sets_its_seed_notebooks_setting(preset):
    cfg = make_config([f"experiment={preset}"])
    validate(cfg)
    for key, expected in SEED_SETTINGS[preset].items():
        value = OmegaConf.select(cfg, key)
        if isinstance(expected, dict):
            assert {k: value[k] for k in expected} == expected, (preset, key)
        else:
            assert value == expected, (preset, key)


@pytest.mark.parametrize("preset", sorted(SEED_SETTINGS))
def test_every_preset_runs_two_epochs(preset, tmp_path):
    overrides = SMALL.get(preset, ["task.p=11"])
    cfg = make_config([f"experiment={preset}", "epochs=2", "logger=none", "progress=false", *overrides])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["epochs"] == 2


def test_a_preset_is_chosen_on_the_command_line(tmp_path):
    run_cli(
        ["experiment=seed000", "epochs=2", "task.p=11", "logger=none", "progress=false", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        check=True,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    config = (tmp_path / "config.yaml").read_text()
    assert summary["status"] == "completed" and "test_loss: 0.005" in config and "warmup_steps: 0" in config
