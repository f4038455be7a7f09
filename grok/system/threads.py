"""Torch threads that follow the CPUs other processes leave free (docs/performance.md).

PyTorch runs an operation on all of its OpenMP threads and waits for the last one. When another
process holds one of their CPUs, every operation waits for the descheduled thread's next time
slice: beside one or two busy processes, the default experiment on 2 threads ran 2-30x slower than
on one. A run whose threads nobody chose (`threads=null`, no SLURM cpus_per_task, no
OMP_NUM_THREADS or MKL_NUM_THREADS) therefore measures, every 1-2 s, how busy other processes kept
the CPUs it may run on, and runs on the CPUs they left free: never more threads than it started
with, never fewer than one.

The measure is the CPU time of the last window, from /proc/stat per CPU less this process's own
from /proc/self/stat: a time average, where a count of runnable tasks would catch whatever ran at
that instant; per CPU, so that CPUs outside this process's affinity do not count. Timing epochs at
different thread counts would measure the same at the cost of epochs run at the wrong count. Runs
that decide at the same moment would overshoot together, so each window's length is drawn at
random: two runs sharing a machine settle one after the other.
"""

import math
import os
import random
import time
from typing import FrozenSet, Optional, Tuple

import torch

from grok.system.slurm import slurm_cpus

WINDOW = (1.0, 2.0)  # seconds between decisions, drawn uniformly
# hysteresis: fewer threads once the free CPUs fall half a CPU below the threads (a busy process
# beside as many threads as CPUs gets 2/3 of a CPU on 2), more once they rise 0.7 above; in between
# nothing changes, so a neighbour's usage near a boundary cannot flap it
DOWN, UP = 0.5, 0.7


def explicit_threads(cfg) -> Optional[int]:
    """The torch threads a run was given: `threads=N`, else SLURM's cpus_per_task; None: nobody chose."""
    return cfg.threads or slurm_cpus()


def threads_for(current: int, others: float, cpus: int, most: int) -> int:
    """The threads to run on next, running `current` now, when other processes kept `others` CPUs
    busy (on average) of the `cpus` this process may use; at least 1, at most `most`."""
    free = cpus - others
    if free < current - DOWN:
        return max(1, min(most, math.floor(free + DOWN)))
    if free > current + UP:
        return max(1, min(most, math.floor(free + 1 - UP)))
    return current


def cpu_ticks(cpus: FrozenSet[int]) -> Tuple[int, int]:
    """Clock ticks so far: busy on `cpus` (user, nice, system, irq, softirq; idle, iowait and time
    stolen by a hypervisor are not busy), and this process's own (user and system, all threads)."""
    busy = 0
    with open("/proc/stat") as stat:
        for line in stat:
            if not line.startswith("cpu"):
                break  # the cpu lines come first
            name, user, nice, system, _idle, _iowait, irq, softirq = line.split()[:8]
            if name != "cpu" and int(name[3:]) in cpus:
                busy += int(user) + int(nice) + int(system) + int(irq) + int(softirq)
    with open("/proc/self/stat") as stat:
        utime, stime = stat.read().rsplit(")", 1)[1].split()[11:13]
    return busy, int(utime) + int(stime)


class AdaptiveThreads:
    """Call update() once an epoch and restore() when training ends. Inactive (both do nothing) when
    `explicit` (explicit_threads) or OMP_NUM_THREADS/MKL_NUM_THREADS set the threads, on one thread,
    or without Linux's /proc."""

    def __init__(self, explicit: Optional[int]):
        self.most = self.threads = torch.get_num_threads()
        self.others: Optional[float] = None  # the last window's measure, in CPUs
        self.rising = False  # the last window asked for more threads
        self.rng = random.Random()  # not the global one, which a user's code may have seeded
        self.cpus: FrozenSet[int] = frozenset()
        chosen = explicit is not None or "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ
        if chosen or self.most == 1:
            return
        try:
            self.cpus = frozenset(os.sched_getaffinity(0))
            self.hz = os.sysconf("SC_CLK_TCK")
            self._open_window()
        except (AttributeError, OSError, ValueError):  # no sched_getaffinity, no /proc: not Linux
            self.cpus = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.cpus)

    def _open_window(self) -> None:
        self.start, self.ticks = time.monotonic(), cpu_ticks(self.cpus)
        self.due = self.start + self.rng.uniform(*WINDOW)

    def update(self) -> None:
        if not self.cpus or time.monotonic() < self.due:
            return
        (busy, own), now = cpu_ticks(self.cpus), time.monotonic()
        self.decide(max(0.0, (busy - self.ticks[0] - (own - self.ticks[1])) / ((now - self.start) * self.hz)))
        self._open_window()

    def decide(self, others: float) -> None:
        """Set the threads for a window in which other processes kept `others` CPUs busy."""
        self.others = others
        threads = threads_for(self.threads, others, len(self.cpus), self.most)
        # down at once, up after two windows: a thread too many beside a busy neighbour costs far
        # more than one too few, and neighbours such as a test suite pause for a moment
        if threads > self.threads and not self.rising:
            self.rising, threads = True, self.threads
        else:
            self.rising = False
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads

    def restore(self) -> None:
        """Back to the threads the run started with, for whatever the process runs next."""
        if self.threads != self.most:
            torch.set_num_threads(self.most)
            self.threads = self.most
