"""Shared helpers: compose configs through Hydra's compose API, or run the real CLI in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest
import torch

from grok.app import compose

ROOT = Path(__file__).resolve().parents[1]

# A configuration that memorizes within ~100 epochs and groks within ~1000 on a CPU.
GROKS_FAST = ["task.p=31", "train_frac=0.5", "optimizer.lr=3e-3", "model.d_model=64", "model.d_mlp=256"]

# A run that diverges at once: SGD at lr 1e30, no warmup.
DIVERGES = ["task.p=11", "epochs=50", "optimizer=sgd", "optimizer.lr=1e30", "optimizer.warmup_steps=0"]

# Float32 trajectories of the same math in another order (batched or alone, another code path, other
# threads) separate chaotically once learning is fast: rounding differences of 1e-8 grow about 100x
# every few epochs, and where they start depends on the CPU's kernels. Through the first EARLY_EPOCHS
# they still agree to within a few float32 roundings (measured: 4e-7 at most); FLOAT32_ROUNDINGS
# leaves 30x on that. Comparisons over more epochs are made in float64.
EARLY_EPOCHS = 10
FLOAT32_ROUNDINGS = 100 * 2**-23  # float32's machine epsilon


# Every numerical test that takes `device` runs on the CPU and, where PyTorch sees one, on the GPU: `make test`
# on a GPU machine tests the GPU path too; `make gpu-check` runs the GPU's alone (marker `gpu`).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> Iterator[str]:
    """The device a numerical test runs on: "cpu", and "cuda" where there is a GPU. A run on the GPU
    turns on PyTorch's deterministic kernels for its process (grok.run.resolve_device): off again
    after the test, so that the tests after it run as they would alone."""
    yield request.param
    torch.use_deterministic_algorithms(False)


def make_config(overrides: List[str] = ()):
    """The config `python train.py overrides...` composes (before validation)."""
    return compose(overrides)


def run_here(overrides: List[str], run_dir: Path) -> Path:
    """The run `python train.py overrides... hydra.run.dir=run_dir` makes, trained in this process (one
    thread, as run_cli's runs): the same metrics, bit for bit, without a process's start-up. For the
    runs a test compares the command line's with; `logger=none` (with W&B, this pytest process would
    start a W&B helper process that lives as long as it does)."""
    from grok.run import run

    cfg = make_config(list(overrides))
    assert cfg.logger.name == "none", "run_here: logger=none"
    torch.set_num_threads(1)  # module fixtures run before _single_thread
    run(cfg, run_dir)
    return run_dir


def cli_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    env.pop("WANDB_MODE", None)
    return env


def run_cli(
    args: List[str], cwd: Path, script: str = "train.py", timeout: float = 300, check: bool = False, env: dict = None
):
    """Run `python <script> args...` in `cwd` and return the CompletedProcess (text output)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env={**cli_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def mounted_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 64k, 6m) at tmp_path/disk, unmounted afterwards; the test is
    skipped with the reason where it cannot be mounted (not root, no mount permission)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True,
                             text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture(autouse=True)
def _single_thread(monkeypatch):
    torch.set_num_threads(1)  # pytest -n 2 runs two workers on two cores


def assert_optimizer_states_equal(first: dict, second: dict) -> None:
    """Two optimizers' state dicts hold the same groups and the same state, tensors bit for bit."""
    assert first["param_groups"] == second["param_groups"]
    assert first["state"].keys() == second["state"].keys()
    for index, state in first["state"].items():
        assert state.keys() == second["state"][index].keys(), index
        for key, value in state.items():
            assert torch.equal(value, second["state"][index][key]), (index, key)


def wandb_records(run_dir: Path, wandb_dir: Path = None) -> dict:
    """Read a run's offline W&B files back as `WANDB_MODE=offline wandb leet inspect --json <segment>`
    and `... --summary --json <segment>` print them (no account, no network); `wandb_dir` picks one
    segment where a resumed run has several.

    wandb 0.31's `wandb leet inspect` is a Python command that hands over to W&B's own reader, its
    wandb-core binary, with the arguments below (wandb/cli/leet.py; offline: no reports to W&B);
    that reader is called directly here: the same output (compared byte for byte on a run's files),
    in 0.02 s a call instead of the Python command's ~1 s start-up."""
    import importlib.util
    import json

    if wandb_dir is None:
        (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    (run_file,) = wandb_dir.glob("run-*.wandb")
    (package,) = importlib.util.find_spec("wandb").submodule_search_locations
    inspect = [str(Path(package) / "bin" / "wandb-core"), "leet", "inspect", "--no-observability", "--json"]
    where = ["--run-file", str(run_file), str(wandb_dir.parent)]

    def read(*flags: str) -> str:
        return subprocess.run([*inspect, *flags, *where], capture_output=True, text=True, check=True).stdout

    records = [json.loads(line) for line in read().splitlines() if line.strip()]
    return {
        "history": [r["history"]["item"] for r in records if r.get("type") == "history"],
        "run": next(r["run"] for r in records if r.get("type") == "run"),
        "summary": json.loads(read("--summary")),
    }
