"""Weights & Biases, in a helper process, so that it costs the training process neither start-up
time nor time per epoch. A W&B failure (import, network, disk) never stops training: the W&B logger
warns once and turns itself off, while `metrics.csv` and the rest of the run carry on.
"""

import atexit
import itertools
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


class WandbLogger:
    """One W&B run, held by this process's W&B helper process (`_Helper`, `serve`): the training
    process only hands it each row, so W&B's import, its start and its writes run beside training,
    on another core, and never hold the training process's GIL. The helper keeps the order: one
    history row per logged epoch, then the summary, then the exit code. A failure there warns here,
    once, at the next call, and turns W&B off for this run."""

    def __init__(self, cfg, config: Dict[str, Any], out_dir: Path, run_id: str, run_name: str):
        self._helper: Optional[_Helper] = None
        self._failure: Optional[Tuple[str, str]] = None  # (what, why): set by the helper's reply thread
        self._warned = False
        self._finished = threading.Event()
        settings = dict(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags),
            job_type=cfg.job_type,
            mode=wandb_mode(cfg),
            dir=str(Path(out_dir).resolve()),
            id=run_id,
            name=run_name,
            config=config,
        )
        try:
            self._helper = _helper(settings["mode"])
        except OSError as error:
            self._failure = ("start", str(error))
            return
        self._key = self._helper.add(self)
        self._send("start", settings)

    def _send(self, what: str, *args) -> None:
        self._warn_on_failure()
        if self._failure is None and self._helper is not None:
            try:
                self._helper.send((self._key, what, *args))
            except OSError:  # a broken pipe: the helper has ended
                self._failure = (what, _ENDED)
                self._warn_on_failure()

    def _warn_on_failure(self) -> None:
        if self._failure is not None and not self._warned:
            self._warned = True
            what, why = self._failure
            warnings.warn(f"W&B {what} failed, W&B logging is off for this run: {why}", stacklevel=4)

    def log_epoch(self, row: Dict[str, Any]) -> None:
        self._send("log", row)

    def log_summary(self, summary: Dict[str, Any]) -> None:
        self._send("summary", summary)

    def log_image(self, key: str, path: Path) -> None:
        self._send("image", key, str(Path(path).resolve()))

    def log_table(self, key: str, columns: List[str], rows: List[list]) -> None:
        self._send("table", key, columns, rows)

    def finish(self, exit_code: int) -> None:
        """Returns once the helper has written every row sent before and closed the run with `exit_code`."""
        if self._helper is not None:
            try:
                self._helper.send((self._key, "finish", exit_code))
                self._finished.wait()
            except OSError:  # a broken pipe: the helper has ended; its reply thread may have said why first
                self._failure = self._failure or ("finish", _ENDED)
            self._helper.loggers.pop(self._key)
            self._helper = None
        self._warn_on_failure()


class _Helper:
    """The process that holds this process's W&B runs of one mode (offline, online, disabled): started
    as train.py begins a run (`start_helper`) or with the first such run, ended at exit; one for all
    the runs of a batched sweep (grok/sweeps/batched.py) or of consecutive jobs. Messages go to it
    pickled through its stdin; its replies (a failure, a run finished) come back on its stdout to a
    thread that hands them to their logger."""

    def __init__(self, mode: str):
        root = str(Path(__file__).resolve().parents[2])  # this checkout's grok, whatever is installed
        # a session of its own: a terminal's Ctrl-C reaches the training process only, which closes the runs
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER_MAIN, root, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.loggers: Dict[int, WandbLogger] = {}
        self.ended = False
        self.held_a_run = False
        self._keys = itertools.count()
        threading.Thread(target=self._read_replies, name="wandb-replies", daemon=True).start()
        atexit.register(self.close)

    def add(self, logger: WandbLogger) -> int:
        key = next(self._keys)
        self.loggers[key] = logger
        self.held_a_run = True
        return key

    def send(self, message: tuple) -> None:
        self.process.stdin.write(pickle.dumps(message))
        self.process.stdin.flush()

    def _read_replies(self) -> None:
        with self.process.stdout as replies:
            while True:
                try:
                    key, what, why = pickle.load(replies)
                except (EOFError, pickle.UnpicklingError):
                    break
                logger = self.loggers[key]
                if what == "finished":
                    logger._finished.set()
                else:
                    logger._failure = (what, why)
        self.ended = True
        for logger in list(self.loggers.values()):
            if not logger._finished.is_set():
                logger._failure = logger._failure or ("log", _ENDED)
                logger._finished.set()

    def close(self) -> None:
        """At exit: the helper closes any run still open (exit code 1), then ends; one that never
        held a run (the run was refused before W&B began) is not waited for."""
        if not self.held_a_run:
            self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:
            pass  # it had ended
        self.process.wait()


_HELPERS: Dict[str, _Helper] = {}  # by mode: W&B's settings in a helper are its runs' mode (`_warm_up`)
_ENDED = "the W&B helper process ended"
_HELPER_MAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); from grok.recording.wandb_logger import serve; serve(sys.argv[2])"
)


def wandb_mode(cfg) -> str:
    """The W&B mode of the logger config `cfg`: WANDB_MODE in the environment wins over `cfg.mode`."""
    return os.environ.get("WANDB_MODE") or cfg.mode


def _helper(mode: str) -> _Helper:
    if mode not in _HELPERS or _HELPERS[mode].ended:
        _HELPERS[mode] = _Helper(mode)
    return _HELPERS[mode]


def start_helper(cfg) -> None:
    """Start this process's W&B helper now, for the W&B logger config `cfg`, so that W&B's imports
    and its service start beside this process's own imports (torch's) rather than after them. Where
    it cannot start, the run's WandbLogger tries again and warns."""
    try:
        _helper(wandb_mode(cfg))
    except OSError:
        pass


def serve(mode: str) -> None:
    """The W&B helper process: runs the messages of `_Helper.send` in order, each run's W&B calls
    guarded (a failure is replied once and turns that run's W&B off), until its stdin closes; then
    it closes, with exit code 1, the runs the training process left open (it was killed, or its
    run failed before it began). It begins with what every run needs (`_warm_up`)."""
    from grok.system.collector import skip_final_collections
    from grok.system.signals import preemption_signal

    skip_final_collections()  # the training process waits for this one to end
    for signum in {signal.SIGINT, signal.SIGTERM, preemption_signal()}:  # SLURM signals every process of a job
        signal.signal(signum, signal.SIG_IGN)  # the training process stops the runs, in order
    # where the two compete for a core, training goes first: W&B catches up before each run finishes
    # (2-core AMD EPYC VM, another process busy: start-up 2.26 s instead of 2.48, medians of 8 runs)
    os.nice(10)
    messages = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # whatever W&B prints goes to stderr, not into the replies
    inbox = queue.SimpleQueue()
    # the pipe is drained at once, whatever W&B is doing: the training process never waits on a write
    threading.Thread(target=_receive, args=(messages, inbox), daemon=True).start()
    _warm_up(mode)

    def reply(key: int, what: str, why: Optional[str] = None) -> None:
        replies.write(pickle.dumps((key, what, why)))
        replies.flush()

    runs: Dict[int, Any] = {}
    off = set()  # runs whose W&B call failed
    while (message := inbox.get()) is not None:
        key, what, *args = message
        if what == "finish":
            run = runs.pop(key, None)
            try:
                if run is not None:
                    run.finish(exit_code=args[0])
            except Exception as error:
                if key not in off:
                    reply(key, what, str(error))
            off.discard(key)
            reply(key, "finished")
        elif key not in off:
            try:
                if what == "start":
                    runs[key] = _start_run(**args[0])
                else:
                    _ACTIONS[what](runs[key], *args)
            except Exception as error:  # W&B must never take the training run down with it
                off.add(key)
                reply(key, what, str(error))
    for run in runs.values():
        try:
            run.finish(exit_code=1)
        except Exception:
            pass  # nobody is left to tell


def _receive(messages, inbox: queue.SimpleQueue) -> None:
    while True:
        try:
            inbox.put(pickle.load(messages))
        except (EOFError, pickle.UnpicklingError):
            inbox.put(None)
            return


def _warm_up(mode: str) -> None:
    """What wandb.init and a run's first rows would import or start (W&B's service), done as the helper
    starts, while the training process imports torch and builds its run. W&B's process-wide settings
    get the mode of the helper's runs: offline, W&B starts no analytics for its servers (nor imports
    requests and the OpenTelemetry SDK for them). A failure here is left for wandb.init to meet and
    report."""
    try:
        import wandb

        wandb.setup(wandb.Settings(mode=mode))
        import wandb.sdk.launch.inputs.internal  # noqa: F401  (wandb.init imports it to apply Launch inputs)
        from wandb.util import is_pandas_data_frame

        is_pandas_data_frame(None)  # imports pandas where it is installed: a summary's None checks for a DataFrame
    except Exception:
        pass


def _start_run(**settings):
    import wandb

    run = wandb.init(
        **settings,
        resume="allow",
        reinit="create_new",  # a batched sweep (grok/sweeps/batched.py) holds one run per job in one process
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True),
    )
    run.define_metric("epoch")
    run.define_metric("*", step_metric="epoch")
    return run


def _image(run, key: str, path: str) -> None:
    import wandb

    # In the summary, not the history: the history holds exactly one row per evaluated epoch.
    run.summary.update({key: wandb.Image(path)})


def _table(run, key: str, columns: List[str], rows: List[list]) -> None:
    import wandb

    run.log({key: wandb.Table(columns=columns, data=rows)})


_ACTIONS = {
    "log": lambda run, row: run.log(row),
    "summary": lambda run, summary: run.summary.update(summary),
    "image": _image,
    "table": _table,
}
