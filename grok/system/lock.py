"""One run directory, one writer.

A run holds an OS file lock (flock) on `<run dir>/.lock` from start to end. The kernel releases it
when the process ends, however it ends (even `kill -9`), so nothing stale is ever left to clean up;
the file's text only names the holder (PID, host) for the message of a second process, which is
refused. Locks are per process and reentrant: train.py's Hydra callback (RunDirGuard) takes the
lock before Hydra writes its `.hydra/` files, and the run keeps it.
"""

import fcntl
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Dict

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from grok.config import ConfigError, Refused, validate

LOCK_NAME = ".lock"
_held: Dict[Path, int] = {}  # run directory (resolved) -> descriptor of its locked file


def lock_run_dir(run_dir: Path) -> None:
    """Take the run directory's lock, or raise Refused naming the process that holds it."""
    key = run_dir.resolve()
    if key in _held:
        return
    path = key / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Refused(f"{run_dir} is in use by {holder}; one run directory takes one writer at a time") from None
        except OSError as error:  # a filesystem without locks (Lustre mounted noflock, some NFS)
            os.close(fd)
            warnings.warn(f"{run_dir}: no file lock here ({error.strerror}); nothing stops a second writer")
            return
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # not a file the previous holder unlinked between our open and our lock
            break
        os.close(fd)
    _held[key] = fd
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    except OSError:
        pass  # a full disk: the lock holds all the same, only the message of a refused writer is vaguer


def unlock_run_dir(run_dir: Path) -> None:
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)  # unlinked while still locked: see lock_run_dir's loop
        os.close(fd)


class RunDirGuard(Callback):
    """Before Hydra writes `.hydra/` into an existing run directory (`hydra.run.dir=<run>`, or the
    directory `resume` names), take its lock and check the values, the memory the run needs and a
    resume against its checkpoint, so that a refused command leaves the run exactly as it was."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from grok.training.memory import check_memory
        from grok.run import check_resumable, resolve_device, run_dir_of

        run_dir = run_dir_of(config, Path(str(config.hydra.run.dir)))
        if not run_dir.is_dir():
            return  # a new run: nobody else can be writing into it yet
        try:
            lock_run_dir(run_dir)
            validate(config)
            check_memory(config, resolve_device(config.device))
            if config.resume:
                with warnings.catch_warnings():  # a fallback to an older checkpoint: start() warns about it
                    warnings.simplefilter("ignore")
                    check_resumable(config, run_dir)
        except ConfigError as error:
            unlock_run_dir(run_dir)
            sys.exit(f"error: {error}")

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        from grok.run import run_dir_of

        unlock_run_dir(run_dir_of(config, Path(str(config.hydra.run.dir))))
