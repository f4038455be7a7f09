"""SLURM integration: surviving preemption and time limits without losing an epoch, and the
launcher's GPU default.

SLURM warns a job with a signal (submitit asks for USR2, `SUBMITIT_PREEMPT_SIGNAL` changes it) some
time before it stops it; grok/system/signals.py has the run checkpoint its epoch and hands the signal on to
submitit, which requeues the job. The requeued job (SLURM_RESTART_COUNT > 0) resumes from that
checkpoint in the same output directory, with the same W&B run id.
"""

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Optional


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
