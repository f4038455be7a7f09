"""A run directory under real faults: one writer at a time, a refused command leaves the run as it was,
a full disk ends the run in one line with its last checkpoint intact, a diverging run fails in one line,
and WANDB_MODE in the environment wins over logger.mode."""

import hashlib
import json
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grok.config import validate
from grok.errors import Refused
from grok.training.loop import Diverged, check_finite
from tests.conftest import DIVERGES, ROOT, cli_env, make_config, mounted_tmpfs, run_cli, run_here

QUICK = ["task.p=11", "epochs=3", "logger=none", "progress=false", "figures=false"]


def snapshot(run_dir: Path) -> dict:
    """Every file of a run directory and a hash of its bytes."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "task.p=23",
            "epochs=100000",
            "logger=none",
            "progress=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.csv").exists():
            assert time.monotonic() < deadline and holder.poll() is None, "the first run started"
            time.sleep(0.05)
        hydra_files = snapshot(run_dir / ".hydra")
        second = run_cli(["task.p=23", "epochs=5", "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert second.returncode == 1
        assert error_lines(second) == [
            f"error: {run_dir} is in use by PID {holder.pid} on host {socket.gethostname()} "
            f"since {error_lines(second)[0].split(' since ')[1]}"
        ]
        assert "Traceback" not in second.stderr
        assert snapshot(run_dir / ".hydra") == hydra_files, "the refused command wrote nothing into the run"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    rows = len((run_dir / "metrics.csv").read_text().splitlines())
    assert rows > 1 and not (run_dir / "summary.json").exists()
    # the kernel released the killed process's lock: the next writer goes ahead at once
    run_cli(["task.p=11", "epochs=2", "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished QUICK run, shared: each command refused on it must leave it as it was."""
    root = tmp_path_factory.mktemp("finished")
    run_cli([*QUICK, f"hydra.run.dir={root / 'run'}"], cwd=root, check=True)
    return root / "run"


@pytest.mark.parametrize(
    "change, named",
    [
        (
            ["loss=stablemax", "resume=true"],
            "loss.name=stablemax differs from the checkpoint's loss.name=cross_entropy",
        ),
        (
            ["optimizer.weight_decay=0.5", "resume=true"],
            "optimizer.weight_decay=0.5 differs from the checkpoint's optimizer.weight_decay=1.0",
        ),
        (["train_frac=1.5", "resume=true"], "train_frac=1.5: must be in (0, 1)"),
        (["train_frac=1.5"], "train_frac=1.5: must be in (0, 1)"),  # a new run into an existing run's directory
    ],
)
def test_a_refused_command_names_the_field_and_leaves_the_finished_run_as_it_was(finished, change, named):
    run_dir = finished
    before = snapshot(run_dir)
    result = run_cli([*QUICK, *change, "epochs=6", f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert named in line and "{" not in line, "the field, not whole dicts"
    assert snapshot(run_dir) == before, "summary.json, .hydra/ and the rest untouched"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_every_key_that_changes_the_math_must_match_to_resume():
    from grok.run import EXPERIMENT_KEYS

    assert {"task", "model", "optimizer", "loss", "train_frac", "seed", "data_seed", "batch_size", "eval_every"} <= set(
        EXPERIMENT_KEYS
    )


def test_a_stale_temporary_file_of_a_killed_writer_is_removed_when_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    run_here([*QUICK, "save_every=1"], run_dir)
    stale = [run_dir / "checkpoints" / ".epoch_000004.pt.tmp-99999", run_dir / ".summary.json.tmp-99999"]
    for path in stale:
        path.write_bytes(b"half a file")
    run_cli([*QUICK, "save_every=1", "epochs=4", "resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True)
    assert not any(path.exists() for path in stale)
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 4


def test_wandb_mode_in_the_environment_wins_over_the_config(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        ["task.p=11", "epochs=2", "logger.mode=offline", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        check=True,
        env={"WANDB_MODE": "disabled"},
    )
    assert not list((run_dir / "wandb").glob("offline-run-*")), "disabled: no offline run written"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_a_diverging_run_fails_in_one_line_naming_the_epoch_and_the_loss(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *DIVERGES,
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.startswith("error: training diverged at epoch ") and "_loss=" in line
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_divergence_is_seen_on_the_test_loss_too():
    check_finite({"epoch": 3, "train_loss": 0.5, "test_loss": 0.7})
    with pytest.raises(Diverged, match="epoch 3: test_loss=nan"):
        check_finite({"epoch": 3, "train_loss": 0.5, "test_loss": math.nan})


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB filesystem: room for two checkpoints of the p=23 transformer (2.4 MiB each), not three."""
    yield from mounted_tmpfs(tmp_path, "6m")


def test_a_full_disk_ends_the_run_in_one_line_and_its_last_checkpoint_resumes_exactly(tmp_path, small_disk):
    args = ["task.p=23", "epochs=30", "save_every=5", "logger=none", "analysis=none", "progress=false"]
    run_dir = small_disk / "run"
    result = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.startswith(
        f"error: cannot write checkpoint {run_dir / 'checkpoints' / 'epoch_000015.pt'}: "
        "No space left on device; the last checkpoint, epoch 10, is intact"
    )
    assert f"resume={run_dir}" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_000005.pt",
        "epoch_000010.pt",
        "last.pt",
    ]
    assert not list(run_dir.rglob("*.tmp*")), "no temporary file keeps the disk full"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 10

    (run_dir / "checkpoints" / "epoch_000005.pt").unlink()  # the user makes room
    run_cli(
        [*args, "epochs=12", "save_every=100", f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume_call'}"],
        cwd=tmp_path,
        check=True,
    )
    uninterrupted = run_here([*args, "epochs=12", "save_every=100"], tmp_path / "uninterrupted")
    assert (run_dir / "metrics.csv").read_bytes() == (uninterrupted / "metrics.csv").read_bytes()


def checkpointed_run(tmp_path, *overrides):
    """A finished 4-epoch run (checkpointed at its end) and its config."""
    from grok.run import run

    cfg = make_config(["task.p=11", "epochs=4", "logger=none", "progress=false", *overrides])
    run(cfg, tmp_path / "run")
    return tmp_path / "run", cfg


def rewrite_checkpoint_config(run_dir, change):
    path = run_dir / "checkpoints" / "epoch_000004.pt"
    payload = torch.load(path, weights_only=True)
    change(payload["config"])
    torch.save(payload, path)  # last.pt is a hard link to it: it changes too


def test_a_checkpoint_from_before_the_transforms_group_resumes_when_it_used_none(tmp_path):
    from grok.run import check_resumable

    run_dir, cfg = checkpointed_run(tmp_path)
    legacy = {"grokfast": None, "grokfast_alpha": 0.98, "grokfast_lamb": None, "grokfast_window": 100,
              "grokfast_reduce": "mean", "grokfast_warmup": True, "orthograd": False}  # fmt: skip

    def written_before(config):
        config["optimizer"].update(legacy)
        del config["transforms"], config["init_scale"]

    rewrite_checkpoint_config(run_dir, written_before)
    check_resumable(validate(cfg), run_dir)  # accepted
    rewrite_checkpoint_config(run_dir, lambda config: config["optimizer"].update(orthograd=True))
    with pytest.raises(
        Refused, match="optimizer.orthograd=\\(absent\\) differs from the checkpoint's optimizer.orthograd=True"
    ):
        check_resumable(validate(cfg), run_dir)


def test_transforms_in_another_order_are_another_experiment(tmp_path):
    from grok.run import check_resumable

    run_dir, _ = checkpointed_run(tmp_path, "transforms=[grokfast_ema,orthograd]")
    swapped = make_config(["task.p=11", "epochs=4", "logger=none", "transforms=[orthograd,grokfast_ema]"])
    with pytest.raises(Refused, match="differ in order from the checkpoint's"):
        check_resumable(validate(swapped), run_dir)


def test_a_failure_reason_outside_its_except_block_still_names_the_error():
    from grok.run import failure_reason

    try:
        raise RuntimeError("the figure could not be drawn")
    except RuntimeError as caught:
        error = caught
    assert failure_reason(error).endswith("RuntimeError: the figure could not be drawn")
