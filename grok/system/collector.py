"""Python's garbage collector in a grok process: kept out of its start and its end. Both make or walk
every object torch, Hydra (and with compile=true torch._dynamo) or wandb define (some 275,000 for
torch and Hydra); none of those is garbage, and a collection walks them all (docs/performance.md)."""

import atexit
import gc

# "deferred" from defer_collections() until start_collections(), "started" after: once per process, so
# that a process running several jobs (Hydra's basic launcher) freezes only its first start
_phase = "initial"


def defer_collections() -> None:
    """No collections until start_collections(): while torch is imported Python would walk the
    growing heap again and again: 0.4 s of a run's 2.4-2.8 s start on the development VM
    (docs/performance.md). train.py's main calls it first, in every process that runs a job (any
    launcher, a SLURM job); in a process whose collections have started once, it does nothing."""
    global _phase
    if _phase == "initial" and gc.isenabled():
        gc.disable()
        _phase = "deferred"


def start_collections() -> None:
    """Where the process's start is over (its first run begins to train): what it made so far is
    frozen, out of every later collection's walk (cyclic garbage among it is never freed: ~9,000
    objects after torch's imports, once), and collections start. Does nothing unless
    defer_collections() turned them off."""
    global _phase
    if _phase == "deferred":
        gc.freeze()
        gc.enable()
        _phase = "started"


def skip_final_collections() -> None:
    """Spare this process Python's last garbage collections at exit: they walk every object its
    libraries made (torch and torch._dynamo: ~1 s of a run's end on the development VM,
    docs/performance.md; wandb in the W&B helper process, which a run waits for), and nothing waits
    on them (grok closes its files itself or writes them unbuffered). gc.freeze, as an atexit handler,
    puts every object made until then out of their reach; exit codes, the other atexit handlers and
    the release of memory and files by the OS are as before."""
    atexit.unregister(gc.freeze)  # once, however many runs a process starts
    atexit.register(gc.freeze)
