"""SLURM integration: surviving preemption and time limits without losing an epoch, and the
launcher's GPU default.

SLURM warns a job with a signal (submitit asks for USR2, `SUBMITIT_PREEMPT_SIGNAL` changes it) some
time before it stops it. The signal handler only raises a flag; the training loop finishes its epoch,
writes a checkpoint and raises `Preempted`. Once the run has closed its loggers, the signal is handed
to whoever listened before: under submitit that requeues the job and exits; elsewhere the default
action ends the process. The requeued job (SLURM_RESTART_COUNT > 0) resumes from that checkpoint in
the same output directory, with the same W&B run id.
"""

import os
import shutil
import signal
import subprocess
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


class Preempted(Exception):
    """Raised by the training loop after it checkpointed because of a preemption signal."""


def preemption_signal() -> signal.Signals:
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


class PreemptionFlag:
    requested = False


@contextmanager
def checkpoint_on_preemption() -> Iterator[PreemptionFlag]:
    """While the body runs, the preemption signal only sets the flag; on `Preempted` the signal is
    passed on to the previous handler when the body has cleaned up."""
    signum = preemption_signal()
    flag = PreemptionFlag()
    previous = signal.getsignal(signum)
    if previous == signal.SIG_IGN or threading.current_thread() is not threading.main_thread():
        yield flag  # nobody listens, or Python allows handlers in the main thread only
        return
    signal.signal(signum, lambda *_: setattr(flag, "requested", True))
    try:
        yield flag
    except Preempted:
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, None)  # submitit: checkpoint the launcher, `scontrol requeue`, exit
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)
        raise
    finally:
        signal.signal(signum, previous)


def requeued_checkpoint(out_dir: Path) -> bool:
    """True when this process is a requeued SLURM job whose output dir holds a checkpoint."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    return restarts > 0 and (out_dir / "checkpoints" / "last.pt").is_file()


def stable_run_id() -> str:
    """A W&B run id that survives requeueing: the SLURM array job and task under submitit."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        if job:
            return f"slurm-{job}" + (f"_{task}" if task else "")
    return uuid.uuid4().hex[:8]


def cluster_gpus(partition: Optional[str]) -> Optional[int]:
    """The launcher's `gpus_per_node` default: 1 where the partition's nodes have GPUs, else none.
    Asked of `sinfo` when the sweep is submitted; without SLURM (composing a config) it is none."""
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "--noheader", "--format=%G"] + ([f"--partition={partition}"] if partition else [])
    try:
        gres = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return 1 if "gpu" in gres else None


def slurm_cpus() -> Optional[int]:
    """The CPUs SLURM gave this job (`cpus_per_task`): the default number of torch threads there."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(cpus) if cpus else None
