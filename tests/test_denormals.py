"""Float32 denormals are flushed to zero on every thread that computes (grok/system/speed.py): deep into
grokking's plateau they otherwise put the CPU on its slow path and the epochs run several times slower."""

import subprocess
import sys

from tests.conftest import ROOT

DENORMALS_LEFT = "print(int((torch.full((1 << 22,), 1e-30) * 1e-10 != 0).sum()))"  # 1e-40: denormal


def in_a_fresh_process(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", f"import torch; torch.set_num_threads(2); {code}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def test_by_default_float32_keeps_denormals():
    assert in_a_fresh_process(DENORMALS_LEFT) == [str(1 << 22)], "the slow path the plateau would take"


def test_set_first_in_the_process_every_thread_flushes_them():
    assert in_a_fresh_process(
        f"from grok.system.speed import flush_denormals; print(flush_denormals()); {DENORMALS_LEFT}"
    ) == ["True", "0"]


def test_set_after_the_threads_started_only_the_calling_thread_flushes_and_the_check_says_so():
    started = "torch.ones(1 << 22).sum(); "
    flushed, left = in_a_fresh_process(
        f"{started}from grok.system.speed import flush_denormals; print(flush_denormals()); {DENORMALS_LEFT}"
    )
    assert flushed == "False" and 0 < int(left) < 1 << 22


def test_a_run_flushes_them_before_it_starts_any_thread():
    code = (
        "from tests.conftest import make_config; from grok.run import start; import tempfile, pathlib, time; "
        "start(make_config(['task.p=11', 'logger=none', 'threads=2']), pathlib.Path(tempfile.mkdtemp()), 'r', "
        f"time.perf_counter()); {DENORMALS_LEFT}"
    )
    assert in_a_fresh_process(code) == ["0"]


def test_a_batched_sweep_flushes_them_before_grouping_builds_any_data_set():
    # p=401: grouping builds 160,801 examples, a data set large enough to start PyTorch's threads
    code = (
        "import tempfile, pathlib; "
        "from tests.conftest import make_config; from grok.sweeps.batched import Job, run_batched; "
        "cfg = make_config(['task.p=401', 'model.d_model=8', 'model.n_heads=1', 'model.d_mlp=8', 'epochs=1', "
        "'logger=none', 'progress=false', 'analysis=none', 'threads=2']); "
        "run_batched([Job(cfg, pathlib.Path(tempfile.mkdtemp()), 'r')]); "
        f"{DENORMALS_LEFT}"
    )
    assert in_a_fresh_process(code) == ["0"]
