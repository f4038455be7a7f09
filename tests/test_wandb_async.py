"""W&B off the training process's path (grok/recording/wandb_logger.py): a helper process holds the W&B runs and
the training process only hands it rows. What W&B ends up with is still exactly what the run
wrote: one history row per evaluated epoch, in order and equal to metrics.csv, the summary, and the
run's exit code on completion and on failure; a W&B failure warns once and training goes on."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from grok.recording.files import read_metrics
from tests.conftest import DIVERGES, ROOT, cli_env, run_cli, wandb_records

TINY = [
    "task.p=5",
    "model.d_model=8",
    "model.n_heads=1",
    "model.d_mlp=8",
    "threads=1",
    "analysis=none",
    "progress=false",
]


def _history_as_metrics(records: dict) -> list:
    """W&B's history rows without W&B's own keys (_step, _runtime, _timestamp), epochs as floats."""
    history = records["history"]
    assert [row["_step"] for row in history] == list(range(len(history))), "no row skipped, none twice"
    return [{key: float(value) for key, value in row.items() if not key.startswith("_")} for row in history]


def test_the_wandb_history_equals_metrics_csv_row_for_row(tmp_path):
    run_dir = tmp_path / "run"
    run_cli([*TINY, "epochs=400", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True)
    records = wandb_records(run_dir)
    metrics = read_metrics(run_dir / "metrics.csv")
    assert [row["epoch"] for row in metrics] == list(range(1, 401))
    assert _history_as_metrics(records) == metrics, "every epoch, in order, with the values metrics.csv holds"
    summary = json.loads((run_dir / "summary.json").read_text())
    logged = records["summary"]["summary"]
    assert {key: logged[key] for key in ("epochs", "test_acc", "n_params")} == {
        key: summary[key] for key in ("epochs", "test_acc", "n_params")
    }, "the summary arrived after the history"
    assert logged["curves"]["_type"] == "image-file"
    assert records["summary"]["state"] == "finished" and records["summary"]["exit_code"] == 0


def test_an_offline_run_sends_nothing_over_the_network(tmp_path):
    """logger.mode=offline, the default, is for machines without a network or an account: the run
    connects to nothing, not even for W&B's own analytics (which wandb 0.31 sends from offline runs
    unless W&B is set up offline before its first run: grok/recording/wandb_logger.py, `_warm_up`),
    and neither does a run with W&B disabled; here the two one after the other in one process (a
    multirun), the offline one last. The processes are given a proxy for HTTP(S) (what W&B's clients
    go through) that counts every connection, those still waiting to be accepted at the end included."""
    connections = []
    run_ended = threading.Event()

    def count(listener: socket.socket) -> None:
        listener.settimeout(0.05)
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                if run_ended.is_set():
                    return  # nothing was waiting
                continue
            with connection:
                connection.settimeout(1)
                try:
                    request = connection.recv(200).split(b"\r\n")[0].decode()
                except OSError:
                    request = ""
                connections.append(request or "a connection that sent nothing")

    with socket.create_server(("127.0.0.1", 0)) as listener:
        counter = threading.Thread(target=count, args=(listener,))
        counter.start()
        proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
        env = {name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")}
        env.update(NO_PROXY="", no_proxy="")
        sweep_dir = tmp_path / "sweep"
        try:
            run_cli(
                ["-m", *TINY, "epochs=5", "logger.mode=disabled,offline", f"hydra.sweep.dir={sweep_dir}"],
                cwd=tmp_path,
                check=True,
                env=env,
            )
        finally:
            run_ended.set()
            counter.join()
    assert connections == [], "a run connected"
    offline = wandb_records(sweep_dir / "1")
    assert offline["run"]["config"]["update"]["logger"]["mode"] == "offline"
    assert [row["epoch"] for row in offline["history"]] == [1, 2, 3, 4, 5], "and W&B has the offline run"


def test_a_wandb_failure_at_start_warns_once_and_the_run_completes(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb").write_text("a file where W&B wants its directory")
    result = run_cli([*TINY, "epochs=50", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True)
    assert result.stderr.count("W&B start failed, W&B logging is off for this run") == 1, result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len(read_metrics(run_dir / "metrics.csv")) == 50


def test_a_wandb_helper_killed_mid_run_warns_once_and_the_run_completes(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *TINY, "epochs=1000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 100:
        assert time.monotonic() < deadline and process.poll() is None, "timed out waiting for 100 epochs"
        time.sleep(0.02)
    (helper,) = [
        int(pid)
        for task in Path(f"/proc/{process.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    os.kill(helper, signal.SIGKILL)  # as the OOM killer would
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert stderr.count("W&B log failed, W&B logging is off for this run: the W&B helper process ended") == 1, stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len(read_metrics(metrics)) == 1000


def test_a_failed_run_is_closed_in_wandb_with_exit_code_1_and_every_epoch_it_logged(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *DIVERGES,
            "analysis=none",
            "progress=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "diverged" in result.stderr
    records = wandb_records(run_dir)
    assert records["summary"]["exit_code"] == 1
    epochs = [row["epoch"] for row in read_metrics(run_dir / "metrics.csv")]
    assert [row["epoch"] for row in records["history"]] == epochs and len(epochs) < 50


IN_A_PROCESS = """
import sys, pathlib, time
from tests.conftest import make_config, wandb_records
from grok.run import run, start
out_dir, *overrides = sys.argv[1:]
out_dir = pathlib.Path(out_dir)
if (out_dir / "metrics.csv").is_dir():
    try:
        start(make_config(overrides), out_dir, "r", time.perf_counter())
    except IsADirectoryError:
        print(wandb_records(out_dir)["summary"]["exit_code"])  # read before this process ends
else:
    print(run(make_config(overrides), out_dir)["status"], "wandb" in sys.modules)
"""


def _in_a_process(out_dir, *overrides) -> list:
    result = subprocess.run(
        [sys.executable, "-c", IN_A_PROCESS, str(out_dir), *overrides],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.stdout.split() or [result.stderr]


def test_a_start_that_fails_after_wandb_began_closes_its_wandb_run_at_once_with_exit_code_1(tmp_path):
    (tmp_path / "metrics.csv").mkdir()  # metrics.csv cannot be written: start() fails at its loggers
    assert _in_a_process(tmp_path, *TINY, "epochs=5") == ["1"], "closed by start(), not when the process ends"


def test_the_training_process_never_imports_wandb(tmp_path):
    assert _in_a_process(tmp_path, *TINY, "epochs=20") == ["completed", "False"]
