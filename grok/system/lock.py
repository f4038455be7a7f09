"""One run directory, one writer.

A run holds an OS file lock (flock) on `<run dir>/.lock` from start to end. The kernel releases it
when the process ends, however it ends (even `kill -9`), so nothing stale is ever left to clean up;
the file's text only names the holder (PID, host) for the message of a second process, which is
refused. Locks are per process and reentrant: train.py's Hydra callback (grok/app.py's RunDirGuard) takes the
lock before Hydra writes its `.hydra/` files, and the run keeps it.
"""

import fcntl
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Dict

from grok.errors import Refused

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
        os.write(
            fd,
            f"PID {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(),
        )
    except OSError:
        pass  # a full disk: the lock holds all the same, only the message of a refused writer is vaguer


def unlock_run_dir(run_dir: Path) -> None:
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)  # unlinked while still locked: see lock_run_dir's loop
        os.close(fd)
