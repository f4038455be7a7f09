"""A real single-node SLURM cluster for the tests, from Debian's packages.

`SlurmCluster.start()` installs slurm-wlm and munge when they are missing (root and apt-get needed),
starts munged (unless one already answers), then slurmctld and slurmd in the foreground of their own
processes, on free ports, with a minimal slurm.conf of its own (select/cons_tres, no accounting, no
cgroups, the node's real hostname and CPU count). `stop()` cancels the jobs and stops only what it
started. Clients find the cluster through SLURM_CONF (`cluster.env`).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = ["slurm-wlm", "munge"]
PROGRAMS = ["slurmctld", "slurmd", "munged", "munge", "sbatch", "squeue", "scontrol", "scancel", "sinfo"]


class SlurmUnavailable(RuntimeError):
    """The cluster cannot be set up on this machine; the message says why."""


def _which(program: str) -> Optional[str]:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":" + SBIN)


def _run(command: List[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def ensure_packages() -> None:
    """Install slurm-wlm and munge with apt-get when any of their programs is missing."""
    if all(_which(p) for p in PROGRAMS):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurm-wlm/munge are not installed and installing them needs root")
    if not _which("apt-get"):
        raise SlurmUnavailable("slurm-wlm/munge are not installed and there is no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    result = _run(install, env=env, timeout=900)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        _run(["apt-get", "update", "-q"], env=env, timeout=900)
        result = _run(install, env=env, timeout=900)
    if result.returncode != 0 or not all(_which(p) for p in PROGRAMS):
        reason = (result.stderr.strip().splitlines() or ["programs missing after install"])[-1]
        raise SlurmUnavailable(f"could not install {' '.join(PACKAGES)}: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env: Dict[str, str] = dict(os.environ, SLURM_CONF=str(self.conf), PATH=os.environ["PATH"] + ":" + SBIN)
        self.daemons: List[subprocess.Popen] = []
        self.started_munged = False

    def start(self) -> "SlurmCluster":
        ensure_packages()
        self._start_munged()
        self._write_conf()
        for daemon in (["slurmctld", "-D", "-c", "-f", str(self.conf)], ["slurmd", "-D", "-f", str(self.conf)]):
            log = open(self.root / f"{daemon[0]}.out", "w")
            self.daemons.append(
                subprocess.Popen(
                    [_which(daemon[0]), *daemon[1:]],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            )
            time.sleep(0.5)
        self._wait_until_idle()
        return self

    def _start_munged(self) -> None:
        if _run(["munge", "-n"], timeout=10).returncode == 0:
            return  # a munged already answers: use it, leave it running
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            _run(["runuser", "-u", "munge", "--", _which("mungekey"), "--create"], timeout=30)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        result = _run(["runuser", "-u", "munge", "--", _which("munged")], timeout=30)
        if result.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {result.stderr.strip()}")
        self.started_munged = True

    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 512
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=grok-test",
                    f"SlurmctldHost={host}",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "InactiveLimit=0",
                    "MinJobAge=600",
                    f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )

    def _wait_until_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(d.poll() is not None for d in self.daemons):
                break
            if _run(["sinfo", "--noheader", "--format=%T"], env=self.env, timeout=10).stdout.strip() == "idle":
                return
            time.sleep(0.5)
        logs = "".join((self.root / name).read_text()[-800:] for name in ("slurmctld.out", "slurmd.out"))
        self.stop()
        raise SlurmUnavailable(f"the SLURM node did not come up idle:\n{logs}")

    def squeue(self) -> List[Dict[str, str]]:
        """Jobs in the queue: id, state, reason."""
        out = _run(["squeue", "--noheader", "--format=%i|%T|%r"], env=self.env, timeout=30).stdout
        return [dict(zip(("id", "state", "reason"), line.split("|"))) for line in out.splitlines() if line.strip()]

    def scontrol(self, *args: str) -> None:
        _run(["scontrol", *args], env=self.env, timeout=30, check=True)

    def stop(self) -> None:
        for job in self.squeue() if all(d.poll() is None for d in self.daemons) else []:
            _run(["scancel", job["id"]], env=self.env, timeout=30)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                try:
                    daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)
                    daemon.wait()
        self.daemons = []
        if self.started_munged:
            pid_file = Path("/run/munge/munged.pid")
            if pid_file.exists():
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            self.started_munged = False
