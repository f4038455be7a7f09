"""How a grok process ends: quickly, once its work is done."""

import atexit
import gc


def skip_final_collections() -> None:
    """Spare this process Python's last garbage collections at exit: they walk every object its
    libraries made (torch and torch._dynamo: ~1 s of each run's end on the development VM,
    docs/performance.md; wandb in the W&B helper process, which a run waits for), and nothing waits
    on them (grok closes its files itself or writes them unbuffered). gc.freeze, as an atexit handler,
    puts every object made until then out of their reach; exit codes, the other atexit handlers and
    the release of memory and files by the OS are as before."""
    atexit.unregister(gc.freeze)  # once, however many runs a process starts
    atexit.register(gc.freeze)
