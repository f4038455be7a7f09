"""grok/system/threads.py: a run whose threads nobody chose runs on the CPUs other processes leave free."""

import os
import time

import pytest
import torch
from omegaconf import OmegaConf

from benchmarks.bench import busy_processes
from grok.system import threads
from grok.system.threads import AdaptiveThreads, explicit_threads, threads_for

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
linux = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc")


@pytest.fixture
def unchosen(monkeypatch):
    """Two torch threads nobody chose, and decisions every 0.3-0.5 s rather than 1-2 s."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "WINDOW", (0.3, 0.5))
    torch.set_num_threads(2)


def decide(governor: AdaptiveThreads, decisions: int, work=lambda: time.sleep(0.02)) -> list:
    """Epochs of `work` with update() after each, until the governor has decided `decisions` times;
    returns its measures of the other processes' CPUs."""
    measures = []
    while len(measures) < decisions:
        work()
        due = governor.due
        governor.update()
        if governor.due != due:
            measures.append(governor.others)
    return measures


@pytest.mark.parametrize(
    "current, others, cpus, most, expected",
    [
        (2, 0.0, 2, 2, 2),  # idle: PyTorch's default
        (2, 0.45, 2, 2, 2),  # a neighbour's half CPU or less is not worth a thread
        (2, 0.7, 2, 2, 1),  # one busy process beside two threads gets about 2/3 of a CPU
        (2, 1.8, 2, 2, 1),
        (1, 3.0, 2, 2, 1),  # never fewer than one
        (1, 1.0, 2, 2, 1),  # a busy neighbour beside one thread: stay
        (1, 0.4, 2, 2, 1),  # between the thresholds: stay
        (1, 0.2, 2, 2, 2),  # the neighbour is gone
        (2, 0.0, 8, 2, 2),  # never more than the run started with
        (8, 2.1, 8, 8, 6),
        (6, 0.1, 8, 8, 8),
        (4, 0.0, 2, 4, 2),  # more threads than CPUs to run on
    ],
)
def test_threads_follow_the_cpus_other_processes_leave_free(current, others, cpus, most, expected):
    assert threads_for(current, others, cpus, most) == expected


@pytest.mark.parametrize("cpus", [2, 4, 16])
def test_an_unchanged_load_changes_the_threads_once_at_most(cpus):
    for current in range(1, cpus + 1):
        for others in [i / 20 for i in range(20 * cpus + 1)]:
            once = threads_for(current, others, cpus, cpus)
            assert threads_for(once, others, cpus, cpus) == once, (current, others)


def test_threads_nobody_chose_are_those_of_neither_the_config_nor_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert explicit_threads(OmegaConf.create({"threads": None})) is None
    assert explicit_threads(OmegaConf.create({"threads": 3})) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert explicit_threads(OmegaConf.create({"threads": None})) == 4


@linux
@pytest.mark.skipif(CPUS < 2, reason="one CPU: one thread already")
def test_fewer_threads_at_once_more_after_two_windows_that_ask_for_them(unchosen):
    governor = AdaptiveThreads(None)
    steps = []
    for others in [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.4, 1.0]:
        governor.decide(others)
        steps.append(governor.threads)
    assert steps == [2, 1, 1, 1, 1, 2, 2, 2, 1]
    assert torch.get_num_threads() == 1


@linux
@pytest.mark.skipif(CPUS < 2, reason="one CPU: one thread already")
def test_beside_busy_processes_the_run_drops_to_one_thread_and_restores_its_own_at_the_end(unchosen):
    governor = AdaptiveThreads(None)
    assert governor.active
    with busy_processes(CPUS, limit=60):
        measures = decide(governor, 2)
        assert governor.threads == torch.get_num_threads() == 1, measures
        assert measures[-1] > CPUS - 0.5  # this process, asleep, leaves them every CPU
    governor.restore()
    assert torch.get_num_threads() == 2


@linux
@pytest.mark.parametrize("chosen", ["threads", "OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_threads_someone_chose_stay_as_they_are_beside_busy_processes(unchosen, monkeypatch, chosen):
    if chosen == "threads":
        governor = AdaptiveThreads(explicit_threads(OmegaConf.create({"threads": 2})))
    else:
        monkeypatch.setenv(chosen, "2")
        governor = AdaptiveThreads(None)
    assert not governor.active
    with busy_processes(CPUS, limit=60):
        time.sleep(1)
        governor.update()
    governor.restore()
    assert governor.threads == torch.get_num_threads() == 2


def matmuls() -> None:
    a = torch.randn(512, 512)
    for _ in range(20):
        a @ a


@linux
@pytest.mark.skipif(CPUS < 2, reason="one CPU: one thread already")
def test_the_runs_own_threads_are_not_counted_as_other_processes(unchosen):
    before, start = os.times(), time.monotonic()
    governor = AdaptiveThreads(None)
    measures = decide(governor, 3, matmuls)
    after = os.times()
    own = (after.user + after.system - before.user - before.system) / (time.monotonic() - start)  # CPUs
    if own < 0.3:
        pytest.skip(f"other processes left this one {own:.2f} CPUs")
    # counted as another process's, the CPUs this one kept busy would all but fill the machine
    assert sum(measures) / len(measures) < CPUS - own + 0.25, (own, measures)


@linux
@pytest.mark.skipif(CPUS < 2, reason="one CPU: one thread already")
def test_on_an_idle_machine_the_run_keeps_its_threads_and_takes_them_back_after_a_neighbour(unchosen):
    """Skipped, naming the load, when other processes (the other test worker) kept CPUs busy at the
    moments that decide: the governor is right to hold back then."""
    governor = AdaptiveThreads(None)
    measures = decide(governor, 3, matmuls)
    if max(measures) >= threads.DOWN:
        pytest.skip(f"other processes kept {max(measures):.2f} CPUs busy")
    assert governor.threads == torch.get_num_threads() == 2, measures
    with busy_processes(CPUS, limit=60):
        measures += decide(governor, 2)
        assert governor.threads == 1, measures
    after = []
    while governor.threads != 2 and len(after) < 10:  # up again after two idle windows in a row
        after += decide(governor, 1, matmuls)
    if governor.threads != 2 and min(after[-2:]) > CPUS - 1 - threads.UP:
        pytest.skip(f"other processes kept {min(after[-2:]):.2f} CPUs busy")
    assert governor.threads == torch.get_num_threads() == 2, (measures, after)  # the neighbours are gone
