"""Speed that leaves the math alone: the C allocator and denormals (docs/performance.md).

The models' own fast path (tables of the first layer's inputs) lives in grok/models/tables.py, the
compiled epoch (`compile=true`) in grok/training/captured.py.
"""

import ctypes
import warnings

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc keep freed blocks of up to `limit` bytes for reuse. By default it maps each block
    above a threshold (128 KiB, rising to at most 32 MiB) afresh and unmaps it on free, so every
    epoch's activations fault their pages in again (~5-10k page faults per CPU epoch of the default
    experiment, ~10% of its time). False where the C library is not glibc; nothing changes there."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit) and libc.mallopt(M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


def flush_denormals() -> bool:
    """Have float arithmetic flush denormal numbers to zero, on every thread that computes; return
    whether it holds on all of them. Deep into grokking's plateau, softmax probabilities and their
    gradients fall below float32's normal range, where Intel Xeons take a slow path: there the
    plateau's epochs ran 3-6x slower than the first ones (AMD EPYC cores showed no penalty). The flag
    is per thread and threads inherit it when they are created, so it must be set before the first
    parallel operation starts PyTorch's OpenMP threads (grok/run.py and grok/sweeps/batched.py do so
    before anything is computed); where they exist already, only the calling thread flushes, and a
    warning says so."""
    torch.set_flush_denormal(True)
    tiny = torch.full((1 << 20,), 1e-30)  # split across the threads: each computes its own part
    everywhere = bool((tiny * 1e-10 == 0).all())  # 1e-40 is denormal in float32
    if not everywhere:
        warnings.warn(
            "float32 denormals are flushed to zero on this thread only: PyTorch's threads started "
            "earlier, so late epochs may run several times slower (docs/performance.md)",
            stacklevel=2,
        )
    return everywhere
