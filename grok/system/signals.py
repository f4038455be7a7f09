"""Signals that stop a run: it finishes the epoch it is in, checkpoints it, closes W&B and writes an
`interrupted` summary.json, so that `resume` continues exactly and no epoch reaches W&B twice.

- SIGINT (Ctrl-C) and SIGTERM (`kill`, `timeout`, `docker stop`, `scancel`, a time limit): the run
  stops after its epoch and the process exits with 128 + the signal's number (train.py). The same
  signal a second time leaves at once, without a checkpoint.
- The preemption signal (USR2, or `SUBMITIT_PREEMPT_SIGNAL`; grok/system/slurm.py): the run stops the same
  way, then the signal goes on to whoever listened before: under submitit that requeues the job,
  which resumes from the checkpoint; elsewhere the signal's default action ends the process. It
  wins over a SIGTERM received before it (SLURM sends both when it preempts a job).

The handlers only record the request; the training loop reads it after each epoch and ends its block
of epochs there (grok/training/loop.py). A signal that was ignored when the run started (`nohup`, a
background job's SIGINT) stays ignored, and so does a SIGINT or SIGTERM that another library handles
itself (submitit logs SIGTERM and waits for the preemption signal).
"""

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class Interrupted(Exception):
    """Raised by the training loop once it has checkpointed `epoch` because of signal `signum`."""

    def __init__(self, signum: int, epoch: int):
        self.signum, self.epoch = signal.Signals(signum), epoch
        super().__init__(f"stopped by {self.signum.name} after epoch {epoch}; checkpoint saved")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Preempted(Interrupted):
    """Interrupted by the scheduler's preemption signal: the requeued job resumes (grok/system/slurm.py)."""


def preemption_signal() -> signal.Signals:
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


class StopRequest:
    """What the handlers record: the first stopping signal received, if any."""

    signum: Optional[signal.Signals] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self, epoch: int) -> Interrupted:
        """The exception the loop raises after checkpointing `epoch`."""
        kind = Preempted if self.signum == preemption_signal() else Interrupted
        return kind(self.signum, epoch)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While the body runs, SIGINT, SIGTERM and the preemption signal only record a stop request;
    on `Preempted` the signal is passed on to its previous handler once the body has cleaned up."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # Python allows signal handlers in the main thread only
        return
    preemption = preemption_signal()
    previous = {signum: signal.getsignal(signum) for signum in {signal.SIGINT, signal.SIGTERM, preemption}}

    def request(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if signum == stop.signum and signum != preemption:
            sys.stderr.write(f"\n{name} again: leaving at once, without a checkpoint\n")
            os._exit(128 + signum)
        if not stop.requested or signum == preemption:
            stop.signum = signal.Signals(signum)
            again = "" if signum == preemption else f"; {name} again leaves at once"
            sys.stderr.write(f"\n{name}: stopping after this epoch with a checkpoint{again}\n")

    request.grok_stop = True  # a run nested in another (a sweep's job) takes over from its handler
    for signum, handler in previous.items():
        unclaimed = handler in (signal.SIG_DFL, signal.default_int_handler) or hasattr(handler, "grok_stop")
        if handler != signal.SIG_IGN and (signum == preemption or unclaimed):
            signal.signal(signum, request)
    try:
        yield stop
    except Preempted as error:
        _restore(previous)
        handler = previous[error.signum]
        if callable(handler):
            with _ignoring(signal.SIGTERM):
                handler(error.signum, None)  # submitit: checkpoint the launcher, `scontrol requeue`, exit
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), error.signum)
        raise
    finally:
        _restore(previous)


@contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    """The signal ignored, by this process and by the children it starts (exec keeps an ignored signal
    ignored). A requeue signals every process of the job with SIGTERM, `scontrol requeue` among them
    when it has not yet exited: killed, it fails submitit's requeue of a job that SLURM did requeue.
    A SIGTERM in that window is dropped, not postponed: the job ends there anyway."""
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _restore(previous) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
