"""Checkpoints: written atomically, so neither a kill nor a full disk mid-write damages the last one.

`checkpoints/epoch_NNNNNN.pt` is written every `save_every` epochs and at the end; `last.pt` is a
hard link to the newest. Each is made under a temporary name and renamed into place, which POSIX
makes atomic. A save that fails removes its temporary file and raises CheckpointWriteError; a
process killed mid-save leaves it behind for remove_stale_temporaries().

Damage to `last.pt` is damage to the epoch file it links, so loading falls back to the newest
readable epoch file, with a warning.
"""

import io
import os
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import torch

from grok.errors import ConfigError, Refused

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "state", "rng", "config")

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # torch's messages set bold text in a terminal's codes


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a quota); the message is one line for the user."""


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`: the file made there replaces `path` when the block
    succeeds, and is removed when it fails in any way."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by an earlier process with this pid; os.link won't overwrite it
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _epoch_files(checkpoint_dir: Path) -> List[Tuple[int, Path]]:
    """(epoch, path) of each `epoch_*.pt`, newest first."""
    found = [
        (int(match.group(1)), path)
        for path in checkpoint_dir.glob("epoch_*.pt")
        if (match := _EPOCH_FILE.fullmatch(path.name))
    ]
    return sorted(found, reverse=True)


def _what_is_intact(checkpoint_dir: Path) -> str:
    last = checkpoint_dir / "last.pt"
    if not last.is_file():
        return "there is no earlier checkpoint"
    for epoch, path in _epoch_files(checkpoint_dir):
        if path.samefile(last):
            return f"the last checkpoint, epoch {epoch}, is intact"
    return f"the last checkpoint, {last}, is intact"


def save_checkpoint(checkpoint_dir: Path, epoch: int, payload: Dict[str, Any]) -> Path:
    """Write `epoch_NNNNNN.pt` and point `last.pt` at it; return the epoch file's path. A failed
    write raises CheckpointWriteError and leaves the checkpoints as they were before."""
    path = checkpoint_dir / f"epoch_{epoch:06d}.pt"
    # Serialized in memory: torch.save writing to a full disk says only "unexpected pos", hiding the
    # OSError that says why.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with _replacing(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        with _replacing(checkpoint_dir / "last.pt") as tmp:
            os.link(path, tmp)
        dir_fd = os.open(checkpoint_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the renames survive a power cut
        finally:
            os.close(dir_fd)
    except OSError as error:
        cause = error.strerror or str(error)
        intact = _what_is_intact(checkpoint_dir)
        failure = CheckpointWriteError(f"cannot write checkpoint {path}: {cause}; {intact}")
        failure.errno = error.errno  # still a full disk (ENOSPC) to whoever tells causes apart
        raise failure from None
    return path


def remove_stale_temporaries(checkpoint_dir: Path) -> List[Path]:
    """Remove the temporary files that killed saves left in `checkpoint_dir`; return their paths.
    Only while no other process can be saving there: under the run directory's lock."""
    stale = sorted(checkpoint_dir.glob(".*.tmp-*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class _Unreadable(Exception):
    """Why a file is not a readable grok checkpoint, in one line."""


def _read(path: Path, map_location: Any) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            # torch.save writes a zip archive, whose directory is at the end: torch's own reason for a
            # truncated one is at times "Invalid argument"
            whole = zipfile.is_zipfile(f)
            f.seek(0)
            payload = torch.load(f, map_location=map_location, weights_only=True) if whole else None
    except Exception as error:  # torch raises many types for a damaged file
        raise _Unreadable(_first_sentence(error)) from None
    if not whole:
        raise _Unreadable("truncated, or not a torch file: no zip directory at its end")
    if not isinstance(payload, dict) or not all(key in payload for key in REQUIRED_KEYS):
        raise _Unreadable(f"not a grok checkpoint, which needs {', '.join(REQUIRED_KEYS)}")
    return payload


def _first_sentence(error: Exception) -> str:
    """torch's messages run to paragraphs of advice; the first sentence says what is wrong."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    if not text:
        return type(error).__name__  # some of its errors carry no message
    return re.split(r"(?<=\w)\.\s", text.splitlines()[0], maxsplit=1)[0].rstrip(".")


def checkpoint_epochs(checkpoint_dir: Path) -> List[int]:
    """The epochs of the run's `epoch_*.pt` files, oldest first."""
    return sorted(epoch for epoch, _ in _epoch_files(checkpoint_dir))


def read_checkpoint(path: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    """One checkpoint file; ConfigError, one line, where it is not a readable grok checkpoint."""
    try:
        return _read(path, map_location)
    except _Unreadable as reason:
        raise ConfigError(f"checkpoint {path} is corrupt or unreadable ({reason})") from None


def load_checkpoint(run_dir: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load `run_dir/checkpoints/last.pt`; where it is unreadable, warn and load the newest readable
    `epoch_*.pt` instead. No readable checkpoint refuses the resume (Refused, one line)."""
    checkpoint_dir = run_dir / "checkpoints"
    last = checkpoint_dir / "last.pt"
    if not last.is_file():
        raise ConfigError(f"resume: no checkpoint at {last}")
    try:
        return _read(last, map_location)
    except _Unreadable as reason:
        damage = f"checkpoint {last} is corrupt or unreadable ({reason})"
    for epoch, path in _epoch_files(checkpoint_dir):
        if path.samefile(last):  # the same file under its other name
            continue
        try:
            payload = _read(path, map_location)
        except _Unreadable:
            continue
        warnings.warn(
            f"resume: {damage}; resuming from {path}, epoch {epoch}, the newest readable checkpoint", stacklevel=2
        )
        return payload
    raise Refused(f"resume: {damage}, and no older checkpoint is readable")
