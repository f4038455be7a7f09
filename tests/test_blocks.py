"""Blocks of epochs (`sync_seconds`, grok/training/loop.py): the metrics of the epochs trained in a
block stay on the device and come to the host at once, and the run records, detects, checkpoints and
stops exactly as when they come every epoch (`sync_seconds=0`): the same metrics.csv byte for byte,
the same stopping epoch, the same checkpointed weights. A run that stops early inside a block goes
back to the block's start and trains again to that epoch only."""

import sys
import time
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from grok.recording.files import read_metrics
from grok.run import end, start
from grok.system.signals import StopRequest
from grok.training.experiment import Schedule
from grok.training.loop import train_runs
from tests.conftest import DIVERGES, assert_optimizer_states_equal, make_config
from tests.test_batched import MEMBERS, SMALL
from tests.test_training import train

# one block: up to a checkpoint or the end; threads held, so that both ways round alike
EVERY_EPOCH, ONE_BLOCK = ["sync_seconds=0", "threads=1"], ["sync_seconds=1e9", "threads=1"]


def same_files(a: Path, b: Path, *names: str) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def same_checkpoints(a: Path, b: Path) -> None:
    first, second = (torch.load(d / "checkpoints" / "last.pt", weights_only=True, map_location="cpu") for d in (a, b))
    assert first["state"]["epoch"] == second["state"]["epoch"]
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    assert_optimizer_states_equal(first["optimizer"], second["optimizer"])


@pytest.mark.parametrize("stop", [["stop.test_acc=0.3"], ["stop.test_acc=0.4", "stop.patience=5"]])
def test_an_early_stop_inside_a_block_lands_on_the_same_epoch_with_the_same_weights(tmp_path, stop, device):
    overrides = [
        "task.p=23",
        "train_frac=0.5",
        "epochs=3000",
        "save_every=200",
        "analysis=none",
        f"device={device}",
        *stop,
    ]
    every, every_dir = train(tmp_path, *overrides, *EVERY_EPOCH, name="every_epoch")
    block, block_dir = train(tmp_path, *overrides, *ONE_BLOCK, name="one_block")
    assert every["stopped_early"] and every["epochs"] < 200, "the stop lies inside the first block"
    assert block["epochs"] == every["epochs"] and block["grok_epoch"] == every["grok_epoch"]
    same_files(every_dir, block_dir, "metrics.csv")
    same_checkpoints(every_dir, block_dir)


def test_progress_measures_and_checkpoints_are_taken_at_their_epochs_weights(tmp_path):
    overrides = ["task.p=23", "epochs=60", "analysis.every=7", "save_every=25"]
    _, every_dir = train(tmp_path, *overrides, *EVERY_EPOCH, name="every_epoch")
    _, block_dir = train(tmp_path, *overrides, *ONE_BLOCK, name="one_block")
    same_files(every_dir, block_dir, "metrics.csv")
    # the measures' float64 sums round by the memory's alignment: equal weights, equal to ~1e-15
    measures = [read_metrics(d / "analysis.csv") for d in (every_dir, block_dir)]
    assert (
        [row["epoch"] for row in measures[0]]
        == [row["epoch"] for row in measures[1]]
        == [7, 14, 21, 28, 35, 42, 49, 56]
    )
    for first, second in zip(*measures):
        assert first["key_frequencies"] == second["key_frequencies"]
        numbers = lambda row: {key: value for key, value in row.items() if key != "key_frequencies"}
        assert numbers(first) == pytest.approx(numbers(second), rel=1e-12, abs=1e-12)
    for epoch in (25, 50):
        name = f"epoch_{epoch:06d}.pt"
        first, second = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (every_dir, block_dir))
        assert all(torch.equal(value, second["model"][key]) for key, value in first["model"].items()), name


def test_a_block_ends_where_a_run_needs_its_weights(tmp_path):
    experiment = start(
        make_config(["task.p=11", "epochs=100", "save_every=30", "analysis.every=12", "logger=none"]),
        tmp_path,
        "run",
        time.perf_counter(),
    )
    schedule = experiment.schedule
    assert isinstance(schedule, Schedule)
    assert [schedule.last_epoch_of_block(epoch) for epoch in (1, 12, 13, 25, 30, 31, 97)] == [
        12,
        12,
        24,
        30,
        30,
        36,
        100,
    ]
    experiment.loggers.finish(0)


def test_a_diverging_run_fails_at_the_same_epoch_inside_a_block(tmp_path):
    errors = []
    for name, sync in (("every_epoch", EVERY_EPOCH), ("one_block", ONE_BLOCK)):
        with pytest.raises(FloatingPointError, match="diverged") as error:
            train(tmp_path, *DIVERGES, *sync, name=name)
        errors.append(str(error.value))
    assert errors[0] == errors[1]
    same_files(tmp_path / "every_epoch", tmp_path / "one_block", "metrics.csv")


def test_runs_trained_together_stop_and_go_on_as_with_every_epoch(tmp_path, device):
    """Three runs in one stack, all in one block: the first and the second stop early inside it, the
    second (listed after the first) sooner; the third trains on. Each run's metrics.csv and last
    checkpoint match the every-epoch run's: the block goes back to the earliest stop, then the next."""
    # on the CPU the first reaches test_acc 0.25 near epoch 125, the second 0.1 near 100; on an H200,
    # whose float32 sums round otherwise, the first reached it past epoch 130
    runs = [MEMBERS[0], MEMBERS[0] + ["seed=1", "stop.test_acc=0.1"], MEMBERS[1]]
    torch.set_num_threads(1)
    for tag, sync in (("every_", EVERY_EPOCH), ("block_", ONE_BLOCK)):
        found = []
        for i, overrides in enumerate(runs):
            out_dir = tmp_path / f"{tag}{i}"
            out_dir.mkdir()
            config = make_config(SMALL + overrides + sync + [f"device={device}", "epochs=200"])
            found.append(start(config, out_dir, f"{tag}{i}", time.perf_counter()))
        train_runs(found, StopRequest(), end)
    first, second = (len(read_metrics(tmp_path / f"every_{i}" / "metrics.csv")) for i in (0, 1))
    assert second < first < 200, "both stop early inside the block, the second first"
    for i in range(len(runs)):
        same_files(tmp_path / f"every_{i}", tmp_path / f"block_{i}", "metrics.csv")
        same_checkpoints(tmp_path / f"every_{i}", tmp_path / f"block_{i}")


HOST_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}


class HostReads(TorchFunctionMode):
    """Records where grok's training code reads a tensor's values into Python (grok/training/,
    grok/models/): on a GPU each such read waits for all the work queued before it."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        caller = sys._getframe(1).f_code
        if getattr(func, "__name__", "") in HOST_READS and Path(caller.co_filename).parent.name in (
            "training",
            "models",
        ):
            self.reads.append(f"{func.__name__} in {caller.co_name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("runs", [1, 2])  # alone, and a stack
def test_the_metrics_come_to_the_host_once_a_block(tmp_path, runs, device):
    reads = {}
    for tag, sync in (("every_epoch", EVERY_EPOCH), ("one_block", ONE_BLOCK)):
        experiments = []
        for seed in range(runs):
            out_dir = tmp_path / f"{tag}_{seed}"
            out_dir.mkdir()
            overrides = ["task.p=11", "epochs=30", "analysis=none", "logger=none", f"seed={seed}", f"device={device}"]
            experiments.append(start(make_config(overrides + sync), out_dir, str(seed), time.perf_counter()))
        with HostReads() as host:
            train_runs(experiments, StopRequest(), end)
        reads[tag] = host.reads
    metrics = {tag: [read for read in reads[tag] if read == "tolist in rows"] for tag in reads}
    assert metrics["every_epoch"] == ["tolist in rows"] * 30
    assert metrics["one_block"] == ["tolist in rows"], "one block: one transfer"
    # besides, on a CPU, once: the (token, position) pairs the tables hold, made from the splits
    # (grok/models/tables.py), and the test split checked against them (p = 11's train split is too small
    # for the tables; the batches of a stack, each run's own, are not checked)
    once = [] if device == "cuda" else ["tolist in of", *["__bool__ in transformer_indices"] * (runs == 1)]
    assert all([read for read in reads[tag] if read != "tolist in rows"] == once for tag in reads)
