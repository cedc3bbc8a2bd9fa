"""CSR times dense on CPU in numba: ``out = A @ x + diag ⊙ x[:m]`` for ``A [m, n]``, ``x [n, d]``.

Parallel over output rows: each thread owns its rows, so no atomics and a fixed summation order
(results are deterministic, run to run). On a 2-core CPU this beats torch's CSR ``addmm`` about
1.8x at ``d = 256`` (500k nodes, 10M non-zeros; ``benchmarks/exact_spmm.py``). Both the exact
operator (``ops.py``) and RSC's sampled backward (``rsc/kernels.py``) multiply through here; on
other devices they use torch's kernels.
"""
from __future__ import annotations

import numba as _nb
import numpy as np
import torch
from torch import Tensor

from .threads import start_numba_pool


def use_numba(t: Tensor) -> bool:
    """The numba kernels handle contiguous CPU float32/float64 tensors only."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


@_nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _csr_spmm_par(rowptr, col, val, x, diag, out):  # pragma: no cover - jitted
    # out[j] = diag[j]·g[j] + Σ_p val[p]·g[col[p]]; one writer per output row.
    n = out.shape[0]
    d = x.shape[1]
    has_diag = diag.shape[0] > 0
    for j in _nb.prange(n):
        if has_diag:
            dj = diag[j]
            for c in range(d):
                out[j, c] = dj * x[j, c]
        else:
            for c in range(d):
                out[j, c] = 0.0
        for p in range(rowptr[j], rowptr[j + 1]):
            i = col[p]
            v = val[p]
            for c in range(d):
                out[j, c] += v * x[i, c]


# The same loop, serial, for small products: waking a thread team costs more than the work
# there (and far more on a busy machine). A separate function, not a second jit of the first,
# because numba's on-disk cache does not tell the two compilations apart.
@_nb.njit(fastmath=True, cache=True, nogil=True)
def _csr_spmm_ser(rowptr, col, val, x, diag, out):  # pragma: no cover - jitted
    n = out.shape[0]
    d = x.shape[1]
    has_diag = diag.shape[0] > 0
    for j in range(n):
        if has_diag:
            dj = diag[j]
            for c in range(d):
                out[j, c] = dj * x[j, c]
        else:
            for c in range(d):
                out[j, c] = 0.0
        for p in range(rowptr[j], rowptr[j + 1]):
            i = col[p]
            v = val[p]
            for c in range(d):
                out[j, c] += v * x[i, c]


SERIAL_BELOW = 1 << 20  # elements touched (N·d + nnz·d) under which the serial kernel runs


def csr_spmm(rowptr: Tensor, col: Tensor, val: Tensor, x: Tensor, diag: Tensor | None, out: Tensor) -> Tensor:
    """``out = A @ x + diag ⊙ x[:m]`` into ``out [m, d]`` (CPU, numba); ``A`` as CSR arrays
    ``rowptr [m+1]``, ``col [nnz]``, ``val [nnz]`` (same dtype as ``x``); ``diag [m]``, ``[m, 1]`` or None."""
    dg = np.empty(0, x.numpy().dtype) if diag is None else diag.reshape(-1).to(x.dtype).numpy()
    kernel = _csr_spmm_ser if (out.numel() + col.numel() * x.size(1)) < SERIAL_BELOW else _csr_spmm_par
    start_numba_pool()  # no-op after the first call; keeps torch's thread count (see threads)
    kernel(rowptr.numpy(), col.numpy(), val.numpy(), x.numpy(), dg, out.numpy())
    return out


def warm_up() -> None:
    """Compile (or load from numba's cache) both product kernels now, outside any timed region."""
    ptr, c, v = np.array([0, 1, 2], np.int64), np.array([1, 0], np.int64), np.ones(2, np.float32)
    start_numba_pool()
    for kernel in (_csr_spmm_ser, _csr_spmm_par):
        kernel(ptr, c, v, np.ones((2, 3), np.float32), np.ones(2, np.float32), np.empty((2, 3), np.float32))
