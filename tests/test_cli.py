"""The command line, as a user runs it: `python train.py ...` in a subprocess, W&B read back from
its offline files, bad input refused in one line, and a killed run resumed exactly."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import DIVERGES, ROOT, cli_env, run_cli, run_here, wandb_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_divide_run_writes_every_output_and_a_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        [
            "task=divide",
            "train_frac=0.1",
            "task.p=11",
            "epochs=30",
            "save_every=20",
            "logger.group=demo",
            "logger.tags=[a,b]",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        check=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "nothing is written outside the run dir"
    for name in ["config.yaml", "metrics.csv", "summary.json", "curves.png", ".hydra", "wandb"]:
        assert (run_dir / name).exists(), name
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_000020.pt",
        "epoch_000030.pt",
        "last.pt",
    ]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 30
    assert (summary["n_train"], summary["n_test"]) == (11, 99), "divide has p(p-1) = 110 pairs"
    for key in [
        "memorize_epoch",
        "grok_epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "n_params",
        "wall_seconds",
        "epochs_per_second",
    ]:
        assert key in summary, key
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,train_loss,train_acc,test_loss,test_acc") and len(metrics) == 31

    wandb = wandb_records(run_dir)
    assert [row["epoch"] for row in wandb["history"]] == list(range(1, 31)), "one history row per epoch"
    assert wandb["history"][-1]["test_acc"] == pytest.approx(summary["test_acc"])
    assert wandb["summary"]["state"] == "finished" and wandb["summary"]["exit_code"] == 0
    assert wandb["summary"]["config"]["task"] == {
        "_target_": "grok.data.tasks.divide",
        "name": "divide",
        "p": 11,
        "label_noise_frac": 0.0,
    }
    assert wandb["summary"]["summary"]["memorize_epoch"] == summary["memorize_epoch"]
    assert wandb["summary"]["summary"]["curves"]["_type"] == "image-file"
    assert (
        wandb["run"]["run_group"] == "demo"
        and wandb["run"]["tags"] == ["a", "b"]
        and wandb["run"]["job_type"] == "train"
    )


def test_help_and_cfg_job_work_as_in_any_hydra_app(tmp_path):
    help_text = run_cli(["--help"], cwd=tmp_path, check=True).stdout
    for group in ["task:", "model:", "optimizer:", "logger:"]:
        assert group in help_text
    assert "noisy_label" in help_text
    job = run_cli(["--cfg", "job", "task=divide", "train_frac=0.1"], cwd=tmp_path, check=True).stdout
    assert "name: divide" in job and "train_frac: 0.1" in job
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["train_frac=1.5"], "error: train_frac=1.5: must be in (0, 1)"),
        (["task=divide", "task.p=12"], "error: task.p=12: task=divide needs a prime p"),
        (["model.d_model=100", "model.n_heads=3"], "error: model.d_model=100: must be divisible by model.n_heads=3"),
        (["epochs=0"], "error: epochs=0: must be >= 1"),
        (["resume=true"], "error: resume: no checkpoint at"),
    ],
)
def test_bad_input_gives_one_line_a_nonzero_exit_and_no_finished_output(tmp_path, args, message):
    run_dir = tmp_path / "run"
    result = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "checkpoints").exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["task=divde"], "Could not find 'task/divde'"),
        (["train_fracc=0.5"], "train_fracc"),
        (["task.pp=5"], "pp"),
    ],
)
def test_unknown_options_and_keys_are_refused_by_hydra(tmp_path, args, expected):
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode != 0 and expected in result.stderr
    if args == ["task=divde"]:
        assert "Available options" in result.stderr and "divide" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_wandb_failure_never_stops_training(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb").write_text("a file where W&B wants its directory")
    result = run_cli(["task.p=11", "epochs=5", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True)
    assert "W&B" in result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 6


def test_a_crashed_run_is_marked_failed_in_wandb(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *DIVERGES,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "diverged" in result.stderr
    assert wandb_records(run_dir)["summary"]["exit_code"] == 1
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def _wait_until(condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


FOUR_HUNDRED_EPOCHS = ["task.p=23", "epochs=400", "logger=none", "figures=false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    """metrics.csv of FOUR_HUNDRED_EPOCHS run to the end at once (where a run checkpoints leaves its math alone)."""
    return (run_here(FOUR_HUNDRED_EPOCHS, tmp_path_factory.mktemp("uninterrupted")) / "metrics.csv").read_bytes()


def _started(args, tmp_path, run_dir):
    """`python train.py args...` into run_dir, in the background."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, uninterrupted):
    args = [*FOUR_HUNDRED_EPOCHS, "save_every=100"]
    killed = tmp_path / "killed"
    process = _started(args, tmp_path, killed)
    _wait_until((killed / "checkpoints" / "epoch_000200.pt").exists, "the epoch-200 checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "a killed run does not look finished"
    rows_at_kill = len((killed / "metrics.csv").read_text().splitlines()) - 1
    assert 200 <= rows_at_kill < 400

    run_cli([*args, f"resume={killed}", f"hydra.run.dir={tmp_path / 'resume_call'}"], cwd=tmp_path, check=True)
    assert (killed / "metrics.csv").read_bytes() == uninterrupted
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 400


def test_resume_with_a_different_experiment_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_here(["task.p=11", "epochs=3", "logger=none"], run_dir)
    result = run_cli(
        ["task.p=13", "epochs=6", "logger=none", f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'again'}"],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: resume: task.p=13 differs from the checkpoint's task.p=11")
    )


def test_a_corrupt_checkpoint_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_here(["task.p=11", "epochs=3", "logger=none"], run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    with open(last, "r+b") as f:  # last.pt is a hard link: epoch_000003.pt, the only checkpoint, is damaged too
        f.truncate(last.stat().st_size // 2)
    result = run_cli(["task.p=11", "epochs=6", "logger=none", "resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode != 0
    assert "is corrupt or unreadable" in result.stderr.strip().splitlines()[-1]
    assert "no older checkpoint is readable" in result.stderr.strip().splitlines()[-1]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed", (
        "the refused run stays as it was"
    )


def test_the_preemption_signal_checkpoints_the_current_epoch_and_resume_continues_exactly(tmp_path, uninterrupted):
    """Outside SLURM nobody requeues: the run checkpoints, then the signal's default action ends it."""
    args = [*FOUR_HUNDRED_EPOCHS, "save_every=100000"]
    run_dir = tmp_path / "run"
    process = _started(args, tmp_path, run_dir)
    metrics = run_dir / "metrics.csv"
    _wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 50, "50 epochs")
    assert process.poll() is None, "still running when signalled"
    process.send_signal(signal.SIGUSR2)
    assert process.wait(timeout=60) == -signal.SIGUSR2
    (checkpoint,) = (run_dir / "checkpoints").glob("epoch_*.pt")
    assert int(checkpoint.stem[6:]) == len(metrics.read_text().splitlines()) - 1, "the last logged epoch is saved"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    run_cli([*args, "resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True)
    assert metrics.read_bytes() == uninterrupted


RECORDS_IMPORTS = """
import gc, json, runpy, sys

seen = {}


class Imports:  # whether the collector is on when torch is imported, and whether torch._dynamo is
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "torch._dynamo") and name not in seen:
            seen[name] = gc.isenabled()
        return None


sys.meta_path.insert(0, Imports())
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
seen["after the run"] = [gc.isenabled(), gc.get_freeze_count() > 0]
print(json.dumps(seen))
"""


def test_a_run_starts_without_collections_and_without_torch_dynamo(tmp_path):
    """What a run's start does not pay for (docs/performance.md, Start-up):
    - Python's collector walking the lasting objects that importing torch makes again and again:
      train.py turns it off until the run trains; then what the start made is frozen (out of every
      later walk) and collections go on as usual;
    - importing torch._dynamo (1.4-1.7 s) in a run that compiles nothing: torch.optim's optimizers
      import it on first use, grok's (grok/training/optimizers.py) do not."""
    args = ["task.p=5", "epochs=2", "logger=none", "progress=false", "analysis=none", f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run(
        [sys.executable, "-c", RECORDS_IMPORTS, *args], cwd=ROOT, capture_output=True, text=True, env=cli_env()
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"torch": False, "after the run": [True, True]}, "torch._dynamo imported, or collections not as said"


ONCE_PER_PROCESS = """
import gc, json
from grok.system.collector import defer_collections, start_collections

defer_collections()  # the first job's main
deferred = not gc.isenabled()
start_collections()  # ... trains
frozen = gc.get_freeze_count()
defer_collections()  # the next job's main, in the same process (Hydra's basic launcher)
print(json.dumps([deferred, frozen > 0, gc.isenabled()]))
"""


def test_collections_are_deferred_only_for_a_process_s_first_start():
    """A process that runs several jobs one after another freezes its start once: a later job's
    garbage is collected as usual, never frozen for good."""
    result = subprocess.run([sys.executable, "-c", ONCE_PER_PROCESS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, True, True], "deferred, frozen, then left on"


SKIPS_FINAL_COLLECTIONS = """
import atexit, sys
from grok.system.collector import skip_final_collections
skip_final_collections()
skip_final_collections()  # as a process that starts several runs does
log = open(sys.argv[1], "w")  # left open: Python flushes and closes it as the module goes
log.write("written, ")
atexit.register(lambda: log.write("the handlers ran"))
sys.exit(3)
"""


def test_a_process_that_skips_its_final_collections_ends_as_it_would_have(tmp_path):
    """A process that starts a run (train.py with any launcher, a SLURM job, a joblib worker),
    sweep.py and the W&B helper spare themselves Python's last garbage collections at exit (a second
    of each run's end): the exit status, the atexit handlers and an open file's last writes stay."""
    log = tmp_path / "log.txt"
    ended = subprocess.run([sys.executable, "-c", SKIPS_FINAL_COLLECTIONS, str(log)], cwd=ROOT)
    assert ended.returncode == 3
    assert log.read_text() == "written, the handlers ran"
