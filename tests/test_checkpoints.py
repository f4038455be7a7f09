"""Checkpoints under damage: a full disk mid-save, a save killed mid-write, a corrupt last.pt."""

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from grok.errors import Refused
from grok.training.checkpoint import CheckpointWriteError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from tests.conftest import ROOT, mounted_tmpfs


class _NotAWeight:
    """An object torch.load(weights_only=True) refuses to build."""


def _payload(epoch: int, width: int = 4) -> dict:
    """A checkpoint shaped like Experiment.save's, of a `width`-wide model after one AdamW step."""
    torch.manual_seed(epoch)
    model = torch.nn.Linear(width, width)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": {"epoch": epoch},
        "rng": {"torch": torch.get_rng_state(), "batches": torch.Generator().get_state(), "cuda": []},
        "config": {"epochs": 1000, "save_every": 100},
    }


def _same_model(loaded: dict, saved: dict) -> bool:
    return loaded["model"].keys() == saved["model"].keys() and all(
        torch.equal(loaded["model"][key], saved["model"][key]) for key in saved["model"]
    )


def _names(checkpoint_dir: Path) -> list:
    return sorted(path.name for path in checkpoint_dir.iterdir())


def _truncate_in_place(path: Path) -> None:
    """Damage as a crash or a bad copy does: through every hard link to the file."""
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: room for a small checkpoint, none for a large one."""
    yield from mounted_tmpfs(tmp_path, "64k")


# ----------------------------------------------------------------------------- a full disk
def test_a_save_onto_a_full_disk_fails_in_one_line_and_the_last_checkpoint_still_loads(small_disk):
    checkpoints = small_disk / "checkpoints"
    first = _payload(100)
    save_checkpoint(checkpoints, 100, first)

    with pytest.raises(CheckpointWriteError) as raised:
        save_checkpoint(checkpoints, 200, _payload(200, width=512))

    assert str(raised.value) == (
        f"cannot write checkpoint {checkpoints / 'epoch_000200.pt'}: No space left on device; "
        "the last checkpoint, epoch 100, is intact"
    )
    printed = "".join(traceback.format_exception(raised.value))
    assert "During handling" not in printed and "direct cause" not in printed  # one error, not a chain
    assert isinstance(raised.value, OSError)
    assert _names(checkpoints) == ["epoch_000100.pt", "last.pt"]  # no partial epoch_000200.pt, no temporary
    loaded = load_checkpoint(small_disk)
    assert loaded["state"] == {"epoch": 100} and _same_model(loaded, first)


# ----------------------------------------------------------------------------- a killed save
def test_the_temporary_file_of_a_killed_save_is_removed_and_saving_goes_on(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    save_checkpoint(checkpoints, 100, _payload(100))
    killed_mid_save = (
        "import os, signal, sys, torch; from pathlib import Path; "
        "from grok.training.checkpoint import save_checkpoint; "
        # killed once the temporary file is written, before it is renamed into place
        "os.replace = lambda *paths: os.kill(os.getpid(), signal.SIGKILL); "
        "save_checkpoint(Path(sys.argv[1]), 200, {'model': torch.zeros(8)})"
    )
    process = subprocess.run([sys.executable, "-c", killed_mid_save, str(checkpoints)], cwd=ROOT)
    assert process.returncode == -9
    left = [checkpoints / name for name in _names(checkpoints) if ".tmp-" in name]
    assert len(left) == 1

    assert remove_stale_temporaries(checkpoints) == left
    assert _names(checkpoints) == ["epoch_000100.pt", "last.pt"]
    second = _payload(200)
    save_checkpoint(checkpoints, 200, second)
    assert _names(checkpoints) == ["epoch_000100.pt", "epoch_000200.pt", "last.pt"]
    assert _same_model(load_checkpoint(tmp_path), second)


def test_without_temporaries_nothing_is_removed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    assert remove_stale_temporaries(checkpoints) == []  # a new run: no checkpoints directory yet
    save_checkpoint(checkpoints, 100, _payload(100))
    assert remove_stale_temporaries(checkpoints) == []
    assert _names(checkpoints) == ["epoch_000100.pt", "last.pt"]


# ----------------------------------------------------------------------------- a damaged last.pt
def test_a_truncated_last_checkpoint_falls_back_to_the_newest_readable_one_with_a_warning(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    payloads = {epoch: _payload(epoch) for epoch in (100, 200, 300)}
    for epoch, payload in payloads.items():
        save_checkpoint(checkpoints, epoch, payload)
    _truncate_in_place(checkpoints / "last.pt")  # and with it epoch_000300.pt, the same file

    with pytest.warns(UserWarning) as warned:
        loaded = load_checkpoint(tmp_path)

    assert loaded["state"] == {"epoch": 200} and _same_model(loaded, payloads[200])
    (warning,) = warned
    message = str(warning.message)
    assert "\n" not in message
    assert f"{checkpoints / 'last.pt'} is corrupt or unreadable (truncated" in message
    assert f"resuming from {checkpoints / 'epoch_000200.pt'}, epoch 200" in message


def test_an_unreadable_older_checkpoint_is_passed_over_too(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    payloads = {epoch: _payload(epoch) for epoch in (100, 200, 300)}
    for epoch, payload in payloads.items():
        save_checkpoint(checkpoints, epoch, payload)
    _truncate_in_place(checkpoints / "last.pt")
    _truncate_in_place(checkpoints / "epoch_000200.pt")

    with pytest.warns(UserWarning, match="epoch_000100.pt, epoch 100"):
        loaded = load_checkpoint(tmp_path)

    assert _same_model(loaded, payloads[100])


def test_with_no_readable_checkpoint_resume_is_refused_in_one_line_without_terminal_codes(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    save_checkpoint(checkpoints, 100, _payload(100))
    save_checkpoint(checkpoints, 200, _payload(200))
    # torch's refusal of a non-weight object has paragraphs of advice with bold terminal codes in them
    save_checkpoint(checkpoints, 300, {**_payload(300), "config": _NotAWeight()})
    _truncate_in_place(checkpoints / "epoch_000100.pt")
    (checkpoints / "epoch_000200.pt").write_bytes(b"not a checkpoint")

    with pytest.raises(Refused) as raised:
        load_checkpoint(tmp_path)

    message = str(raised.value)
    assert message.startswith(f"resume: checkpoint {checkpoints / 'last.pt'} is corrupt or unreadable (")
    assert message.endswith("), and no older checkpoint is readable")
    assert "\n" not in message and "\x1b" not in message
    assert "Weights only load failed" in message and "trust the source" not in message  # its first sentence only
