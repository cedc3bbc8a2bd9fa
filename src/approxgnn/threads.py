"""The one thread setting, :func:`set_threads`: torch's intra-op threads, which numba must not undo,
and numba's.

torch's CPU backend here is OpenMP: ``torch.set_num_threads(n)`` sets the calling thread's OpenMP
thread count, and ``torch.get_num_threads()`` reads it back. numba's OpenMP threading layer sets
that same per-thread setting to its own pool size when the pool starts, at the process's first
parallel kernel (a sampler hop, a parallel SpMM, a feature gather). A count set before that moment
is silently replaced by every core; one set after it stays. :func:`set_threads` starts the
pool first.
"""
from __future__ import annotations

import torch
from numba import njit, prange

__all__ = ["set_threads"]


@njit(parallel=True, cache=True)
def _start_pool(n):  # pragma: no cover - jitted
    s = 0
    for i in prange(n):
        s += i
    return s


_pool_started = False


def start_numba_pool() -> None:
    """Start numba's thread pool now, keeping torch's thread count (module docstring). Idempotent.

    Called where training starts (:func:`approxgnn.train.build_trainer`), not at import: libgomp is
    not fork-safe, and a multi-process launcher forks ranks from a process that imported approxgnn.
    """
    global _pool_started
    if not _pool_started:
        threads = torch.get_num_threads()
        _start_pool(2)
        torch.set_num_threads(threads)
        _pool_started = True


def set_threads(n: int, *, numba_threads: bool = True) -> None:
    """Use ``n`` threads: torch's intra-op threads, set so that numba's pool starting cannot undo
    it (module docstring), and numba's parallel threads (the sampler's and SpMM kernels; at most
    numba's pool size) unless ``numba_threads`` is False."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    start_numba_pool()
    torch.set_num_threads(n)
    if numba_threads:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
