"""Signals (grok/system/signals.py): SIGTERM and Ctrl-C stop a run after its epoch with a checkpoint, a closed
W&B run and an 'interrupted' summary.json; the process exits with 128 + the signal; `resume` then
continues exactly, and W&B's history holds every epoch exactly once. A second Ctrl-C leaves at once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grok.recording.files import read_metrics
from grok.system.signals import Interrupted, Preempted, StopRequest, preemption_signal
from tests.conftest import ROOT, cli_env, run_cli, run_here, wandb_records

ARGS = ["task.p=23", "save_every=100000", "analysis=none", "progress=false", "figures=false"]


def _start(args, run_dir: Path, stderr: Path) -> subprocess.Popen:
    """train.py in a process group of its own, as a terminal's foreground job is: with SIGINT not
    ignored, even where the tests run as a background job of a script (which ignores SIGINT, and
    train.py keeps an ignored signal ignored). A signal handled here is reset to default in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
            cwd=run_dir.parent,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=open(stderr, "w"),
            start_new_session=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _send(process: subprocess.Popen, signum: int) -> None:
    """Ctrl-C reaches the whole group (W&B's service process too); `kill` and `timeout` the process."""
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)


def _wait_until(condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _rows(path: Path) -> int:
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def _history_epochs(run_dir: Path):
    """Epochs in W&B's history, over every offline segment of the run (one per start or resume)."""
    return sorted(
        row["epoch"]
        for segment in sorted((run_dir / "wandb").glob("offline-run-*"))
        for row in wandb_records(run_dir, segment)["history"]
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_epoch_closes_wandb_and_resume_logs_each_epoch_once(tmp_path, signum):
    run_dir, stderr = tmp_path / "run", tmp_path / "stderr.txt"
    process = _start([*ARGS, "epochs=100000"], run_dir, stderr)
    metrics = run_dir / "metrics.csv"
    _wait_until(lambda: _rows(metrics) > 20, "20 epochs")
    _send(process, signum)
    assert process.wait(timeout=60) == 128 + signum, stderr.read_text()

    stopped_at = _rows(metrics)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == signum.name and summary["epochs"] == stopped_at
    (checkpoint,) = (run_dir / "checkpoints").glob("epoch_*.pt")
    assert checkpoint.name == f"epoch_{stopped_at:06d}.pt", "the last logged epoch is the one saved"
    last_line = stderr.read_text().strip().splitlines()[-1]
    assert (
        f"after epoch {stopped_at}" in last_line
        and f"resume={run_dir}" in last_line
        and "Traceback" not in stderr.read_text()
    )
    assert _history_epochs(run_dir) == list(range(1, stopped_at + 1)), "W&B was closed with every epoch logged"

    end = f"epochs={stopped_at + 30}"  # the resume trains on: a run may be extended
    run_cli([*ARGS, end, "resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True)
    uninterrupted = run_here([*ARGS, end, "logger=none"], tmp_path / "uninterrupted")
    assert metrics.read_bytes() == (uninterrupted / "metrics.csv").read_bytes()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert _history_epochs(run_dir) == list(range(1, stopped_at + 31)), "each epoch exactly once in W&B"


def test_a_second_ctrl_c_leaves_at_once_without_a_checkpoint(tmp_path):
    # one example per step: an epoch takes seconds, so both signals land inside the first one
    args = ["task.p=97", "batch_size=1", "epochs=5", "logger=none", "analysis=none", "progress=false"]
    run_dir, stderr = tmp_path / "run", tmp_path / "stderr.txt"
    process = _start(args, run_dir, stderr)
    _wait_until((run_dir / "config.yaml").exists, "the run to start")
    _send(process, signal.SIGINT)
    _wait_until(lambda: "stopping after this epoch" in stderr.read_text(), "the first Ctrl-C to be seen")
    _send(process, signal.SIGINT)
    assert process.wait(timeout=30) == 128 + signal.SIGINT
    assert "leaving at once" in stderr.read_text()
    assert not (run_dir / "metrics.csv").exists(), "the first epoch was not finished"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()


def test_a_stop_request_names_its_signal_and_the_epoch_it_saved():
    stop = StopRequest()
    assert not stop.requested
    stop.signum = signal.SIGTERM
    error = stop.stopped(12)
    assert type(error) is Interrupted and error.exit_code == 143 and "SIGTERM after epoch 12" in str(error)
    stop.signum = preemption_signal()
    assert isinstance(stop.stopped(12), Preempted), "the scheduler's signal: the requeued job resumes"


def test_a_signal_stops_a_batched_sweep_with_every_member_checkpointed_at_the_same_epoch(tmp_path):
    sweep_dir, stderr = tmp_path / "sweep", tmp_path / "stderr.txt"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "hydra/launcher=batched",
            "seed=0,1,2",
            "task.p=23",
            "epochs=100000",
            "save_every=100000",
            "logger=none",
            "analysis=none",
            "progress=false",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(stderr, "w"),
    )
    _wait_until(
        lambda: all(_rows(sweep_dir / str(job) / "metrics.csv") > 5 for job in range(3)), "every member to train"
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM, stderr.read_text()

    summaries = [json.loads((sweep_dir / str(job) / "summary.json").read_text()) for job in range(3)]
    assert {s["status"] for s in summaries} == {"interrupted"} and len({s["epochs"] for s in summaries}) == 1
    epoch = summaries[0]["epochs"]
    for job in range(3):
        assert [row["epoch"] for row in read_metrics(sweep_dir / str(job) / "metrics.csv")] == list(range(1, epoch + 1))
        assert (sweep_dir / str(job) / "checkpoints" / f"epoch_{epoch:06d}.pt").exists()


SUBMITIT_LIKE = """
import os, signal
from grok.system.signals import Preempted, stop_on_signals
heard = []
signal.signal(signal.SIGTERM, lambda *_: heard.append("logged SIGTERM"))  # submitit's own handlers
signal.signal(signal.SIGUSR2, lambda *_: heard.append("requeued"))
for order in ([signal.SIGTERM, signal.SIGUSR2], [signal.SIGUSR2, signal.SIGTERM]):
    heard.clear()
    try:
        with stop_on_signals() as stop:
            for signum in order:
                os.kill(os.getpid(), signum)
            raise stop.stopped(5)
    except Preempted:
        print(heard)
"""


def test_under_submitit_a_preemption_requeues_whichever_of_sigterm_and_usr2_comes_first():
    """SLURM sends both when it preempts a job: submitit keeps SIGTERM for itself and requeues on USR2."""
    result = subprocess.run([sys.executable, "-c", SUBMITIT_LIKE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["['logged SIGTERM', 'requeued']"] * 2


SUBMITIT_REQUEUE = """
import signal, subprocess, sys
from grok.system.signals import Preempted, stop_on_signals
heard = []
def log(*_):  # submitit's own SIGTERM handler
    heard.append("logged SIGTERM")
def requeue(*_):  # as submitit does: `scontrol requeue` in a child, which SLURM's requeue SIGTERMs with the job
    subprocess.check_call([sys.executable, "-c", "import os, signal; os.killpg(0, signal.SIGTERM)"])
    heard.append("requeued")
signal.signal(signal.SIGTERM, log)
signal.signal(signal.SIGUSR2, requeue)
try:
    with stop_on_signals() as stop:
        stop.signum = signal.SIGUSR2
        raise stop.stopped(5)
except Preempted:
    print(heard, signal.getsignal(signal.SIGTERM) is log)
"""


def test_the_requeue_s_own_sigterm_does_not_kill_the_scontrol_that_requeues():
    """The requeue SIGTERMs every process of the job, `scontrol requeue` too if it has not exited yet:
    killed, it would fail submitit's requeue (its job reported failed though SLURM requeued it)."""
    result = subprocess.run([sys.executable, "-c", SUBMITIT_REQUEUE], cwd=ROOT, capture_output=True, text=True,
                            start_new_session=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['requeued'] True"], "scontrol outlived it; SIGTERM's handler is back"
