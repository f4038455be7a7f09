"""Checkpoints: written atomically, so a kill mid-write never leaves a corrupt `last.pt`.

`checkpoints/epoch_NNNNNN.pt` is written every `save_every` epochs and at the end; `last.pt` is a
hard link to the newest. Both are replaced by rename, which POSIX makes atomic.
"""

import os
from pathlib import Path
from typing import Any, Dict

import torch

from grok.config import ConfigError


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(checkpoint_dir: Path, epoch: int, payload: Dict[str, Any]) -> Path:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / f"epoch_{epoch:06d}.pt"
    _atomic_save(payload, path)
    link = checkpoint_dir / f".last.pt.tmp-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.link(path, link)
    os.replace(link, checkpoint_dir / "last.pt")
    dir_fd = os.open(checkpoint_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


REQUIRED_KEYS = ("model", "optimizer", "scheduler", "state", "rng", "config")


def load_checkpoint(run_dir: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load `run_dir/checkpoints/last.pt`; any problem is a ConfigError about `resume`."""
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"resume: checkpoint {path} is corrupt or unreadable ({reason})") from error
    if not isinstance(payload, dict) or not all(key in payload for key in REQUIRED_KEYS):
        raise ConfigError(f"resume: checkpoint {path} is not a grok checkpoint (needs {', '.join(REQUIRED_KEYS)})")
    return payload
