"""Sweeps on a real SLURM cluster (single node, started by these tests): job arrays through Hydra's
submitit launcher, preemption that checkpoints, requeues and resumes exactly, and real failures
reported as failed. Skipped, with the reason, where SLURM cannot be installed and started."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env, run_cli, run_here, wandb_records
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable

SWEEP = ["task.p=11", "epochs=30", "train_frac=0.3,0.5", "optimizer.weight_decay=0.1,1.0", "figures=false"]
# Small jobs for a 2-CPU node; timeout_min stays above 10 so that a signal means preemption.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=30",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """One cluster for this file; `make test` runs with --dist loadfile, so one worker owns it."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as reason:
        pytest.skip(f"no SLURM cluster here: {reason}")
    yield cluster
    cluster.stop()


def _metrics(job_dir: Path) -> bytes:
    return (job_dir / "metrics.csv").read_bytes()


def test_a_four_job_sweep_runs_as_a_slurm_array_and_equals_the_basic_launcher(slurm, tmp_path):
    run_cli(["-m", *SWEEP, *SLURM, f"hydra.sweep.dir={tmp_path / 'slurm'}"], cwd=tmp_path, env=slurm.env, check=True)
    run_cli(["-m", *SWEEP, "logger=none", f"hydra.sweep.dir={tmp_path / 'basic'}"], cwd=tmp_path, check=True)

    submitted = list((tmp_path / "slurm" / ".submitit").glob("*/*_submission.sh"))
    assert submitted and "#SBATCH --array=0-3" in submitted[0].read_text()
    for job in range(4):
        assert _metrics(tmp_path / "slurm" / str(job)) == _metrics(tmp_path / "basic" / str(job))
        summary = json.loads((tmp_path / "slurm" / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["wandb_run_id"].startswith("slurm-"), "the W&B id is derived from the SLURM job"


def _wait(condition, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _rows(path: Path) -> int:
    return max(len(path.read_text().splitlines()) - 1, 0) if path.exists() else 0


def test_a_preempted_job_checkpoints_is_requeued_and_resumes_to_the_uninterrupted_result(slurm, tmp_path):
    no_periodic_checkpoint = "save_every=100000"  # the only checkpoint before the end is the signal's
    args = ["task.p=23", "epochs=800", no_periodic_checkpoint, "figures=false"]
    sweep_dir = tmp_path / "slurm"
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *args, *SLURM, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        env={**cli_env(), **slurm.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job_dir = sweep_dir / "0"
    _wait(lambda: _rows(job_dir / "metrics.csv") >= 100, "the job to train 100 epochs")
    (job,) = slurm.squeue()
    subprocess.run(["scancel", f"--signal={signal.SIGUSR2.name[3:]}", job["id"]], env=slurm.env, check=True)

    _wait(lambda: any(j["state"] == "PENDING" for j in slurm.squeue()), "the job to be requeued")
    # a start now, else it waits ~2 minutes; but in a later second than the requeue: slurmd refuses a
    # credential made in the second its job's previous one was revoked ("Job credential revoked", seen
    # when this ran within 20 ms of the requeue). StartTime=now+2 would wait for the scheduler's next pass.
    time.sleep(2)
    slurm.scontrol("update", f"JobId={job['id']}", "StartTime=now")
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output

    checkpoints = sorted(p.name for p in (job_dir / "checkpoints").glob("epoch_*.pt"))
    assert len(checkpoints) == 2 and checkpoints[-1] == "epoch_000800.pt", "the preemption checkpoint, then the end"
    preempted_at = int(checkpoints[0][6:12])
    assert 100 <= preempted_at < 800

    assert _metrics(job_dir) == _metrics(run_here([*args, "logger=none"], tmp_path / "uninterrupted"))
    assert json.loads((job_dir / "summary.json").read_text())["status"] == "completed"

    segments = sorted((job_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and len({s.name.split("-")[-1] for s in segments}) == 1, "one W&B run, resumed"
    epochs = []
    for segment in segments:
        epochs += [row["epoch"] for row in wandb_records(job_dir, segment)["history"]]
    assert epochs == list(range(1, 801)), "no duplicated or missing epochs across the requeue"


def test_a_job_that_really_fails_is_reported_failed_and_not_requeued(slurm, tmp_path):
    result = run_cli(
        ["-m", "task=divide", "task.p=12", "epochs=5", *SLURM, f"hydra.sweep.dir={tmp_path / 'slurm'}"],
        cwd=tmp_path,
        env=slurm.env,
    )
    assert result.returncode != 0 and "task.p=12: task=divide needs a prime p" in result.stderr
    summary = json.loads((tmp_path / "slurm" / "0" / "summary.json").read_text())
    assert summary["status"] == "failed"
    states = []
    _wait(
        lambda: not states.append([job["state"] for job in slurm.squeue()]) and not states[-1],
        "the failed job to leave the queue",
        timeout=60,
    )
    assert "PENDING" not in sum(states, []), "never requeued"
    logs = " ".join(p.read_text() for p in (tmp_path / "slurm" / ".submitit").glob("*/*_log.*"))
    assert logs.count("Starting with JobEnvironment") == 1 and "Requeued" not in logs, "ran once"
