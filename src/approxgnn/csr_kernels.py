"""The library's one module of compute kernels over CSR arrays (numba on CPU, torch elsewhere).

* :func:`csr_spmm` -- ``out = A @ x + diag ⊙ x[:m]`` for ``A [m, n]``, ``x [n, d]``; parallel over
  output rows: each thread owns its rows, so no atomics and a fixed summation order (results are
  deterministic, run to run). On a 2-core CPU this beats torch's CSR ``addmm`` about 1.8x at
  ``d = 256`` (500k nodes, 10M non-zeros; ``benchmarks/exact_spmm.py``) and 2.1x on RSC's sampled
  slice (500k nodes, 10M nnz, d=128, 10 % of nnz kept: 36 ms vs 77 ms). Callers go through
  :func:`approxgnn.ops.spmm_diag`, which picks this kernel on CPU and torch's on other devices.
* :func:`transpose_rows` -- the CSR of ``(diag(s) A[S,:])ᵀ`` by a counting sort in
  ``O(nnz_kept + n)`` (numba), or by ``argsort`` (torch, any device): RSC's transposed row slice,
  and with every row kept the plain transpose behind :meth:`approxgnn.graph.CSRGraph.transpose`
  (on a 10k × 150k mini-batch block with 250k entries, 2 ms against 280 ms for torch's
  ``A.t().to_sparse_csr()``; benchmarks/RESULTS.md, "Issue 21").

Which implementation runs is decided per call by the inputs' device and dtype (:func:`use_numba`).
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
# because numba's on-disk cache does not tell the two compilations apart. The loop body is
# written out in both on purpose: an earlier change that shared it between the pair (one jitted
# body for both) made a kernel about 1.8x slower, measured; the duplicate lines are the price of
# that speed.
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


@_nb.njit(cache=True, nogil=True)
def _transpose_rows_nb(rowptr, col, val, rows, scale, n_out):  # pragma: no cover - jitted
    # Pass 1: how many kept entries land in each output row (= column of Â).
    ptr = np.zeros(n_out + 1, np.int64)
    for r in range(rows.shape[0]):
        i = rows[r]
        for p in range(rowptr[i], rowptr[i + 1]):
            ptr[col[p] + 1] += 1
    for j in range(n_out):
        ptr[j + 1] += ptr[j]
    nxt = ptr[:-1].copy()
    m = ptr[n_out]
    col_t = np.empty(m, np.int64)
    val_t = np.empty(m, val.dtype)
    # Pass 2: rows are visited in increasing order, so every output row comes out sorted.
    scaled = scale.shape[0] > 0
    for r in range(rows.shape[0]):
        i = rows[r]
        s = scale[r] if scaled else 1.0
        for p in range(rowptr[i], rowptr[i + 1]):
            j = col[p]
            q = nxt[j]
            nxt[j] = q + 1
            col_t[q] = i
            val_t[q] = val[p] * s
    return ptr, col_t, val_t


def transpose_rows(rowptr: Tensor, col: Tensor, val: Tensor, rows: Tensor, scale: Tensor | None,
                   n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""CSR of :math:`(\mathrm{diag}(s)\,A[S,:])^\top`, shape ``[n_out, N]`` with *global* column ids.

    ``rowptr/col/val``: CSR of ``A`` (``[N+1]``, ``[nnz]``, ``[nnz]``); ``rows`` = S, sorted int64
    ``[k]``; ``scale`` = s ``[k]`` or ``None``. Keeping the original row ids as columns means the
    product reads ``G`` directly, with no ``G[S]`` gather. Cost ``O(nnz(A[S,:]) + n_out)``.
    """
    if use_numba(val):
        s = np.empty(0, val.numpy().dtype) if scale is None else scale.to(val.dtype).numpy()
        ptr, c, v = _transpose_rows_nb(rowptr.numpy(), col.numpy(), val.numpy(), rows.numpy(), s, n_out)
        return torch.from_numpy(ptr), torch.from_numpy(c), torch.from_numpy(v)
    return _transpose_rows_torch(rowptr, col, val, rows, scale, n_out)


def _transpose_rows_torch(rowptr: Tensor, col: Tensor, val: Tensor, rows: Tensor, scale: Tensor | None,
                          n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    counts = rowptr[rows + 1] - rowptr[rows]
    total = int(counts.sum())
    # Positions of the kept entries by rowptr arithmetic: entry t of kept row r sits at
    # rowptr[S_r] + (t - first_t(r)).
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(total, device=col.device) + torch.repeat_interleave(rowptr[rows] - first, counts,
                                                                           output_size=total)
    c = col[pos]
    v = val[pos]
    if scale is not None:
        v = v * torch.repeat_interleave(scale.to(val.dtype), counts, output_size=total)
    r = torch.repeat_interleave(rows, counts, output_size=total)
    perm = torch.argsort(c, stable=True)  # stable: rows stay increasing within each output row
    ptr = torch.zeros(n_out + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(torch.bincount(c, minlength=n_out), 0, out=ptr[1:])
    return ptr, r[perm], v[perm]


def warm_up() -> None:
    """Compile (or load from numba's cache) the product and transpose kernels now, outside any timed region."""
    ptr, c, v = np.array([0, 1, 2], np.int64), np.array([1, 0], np.int64), np.ones(2, np.float32)
    start_numba_pool()
    for kernel in (_csr_spmm_ser, _csr_spmm_par):
        kernel(ptr, c, v, np.ones((2, 3), np.float32), np.ones(2, np.float32), np.empty((2, 3), np.float32))
    _transpose_rows_nb(ptr, c, v, np.array([0], np.int64), np.empty(0, np.float32), 2)
