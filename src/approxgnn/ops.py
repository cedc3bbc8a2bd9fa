"""Exact sparse-dense product with a cached transpose for the backward pass.

``torch``'s own CSR autograd rebuilds ``Aᵀ`` at every backward call; for a fixed graph that is
pure waste. :class:`SparseOperator` builds ``Aᵀ`` once (or reuses ``A`` when it is symmetric) and
:class:`ExactSpMM` uses it, writing the diagonal term and the product into one buffer. Both
products run through :func:`spmm_diag`, the one diagonal-SpMM of the library: the numba kernel of
:mod:`approxgnn.csr_kernels` on CPU (faster than torch's CSR ``addmm`` there, and deterministic),
torch's kernels on other devices.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import csr_kernels
from .graph import CSRGraph, NormalizedAdjacency

__all__ = ["SparseOperator", "ExactSpMM", "spmm", "spmm_diag"]


class SparseOperator:
    """``y = off @ x + diag ⊙ x[:m]`` for an ``m × n`` CSR ``off`` and optional diagonal ``[m]``.

    ``m == n`` for a full graph; ``m < n`` for a sampled block whose targets are the first ``m``
    sources. Holds ``off`` as a :class:`~approxgnn.graph.CSRGraph` with float values and, lazily,
    its transpose (the same object when ``symmetric``).
    """

    def __init__(self, off: CSRGraph | Tensor, diag: Tensor | None = None, *, symmetric: bool = False,
                 shape: tuple[int, int] | None = None) -> None:
        if isinstance(off, Tensor):  # a torch.sparse_csr_tensor: its arrays are shared
            off = CSRGraph.from_torch(off)
        if shape is not None:
            off = CSRGraph(off.rowptr, off.col, shape[0], off.value, off.symmetric, shape[1])
        value = off.value if off.value is not None else torch.ones(off.nnz, device=off.device)
        # Float values keep their dtype (a float64 graph stays float64); others become float32.
        self.off = off.with_value(value if value.is_floating_point() else value.float())
        self.diag = None if diag is None else diag.reshape(-1, 1).to(self.dtype)
        self.symmetric = symmetric
        self._transpose: CSRGraph | None = self.off if symmetric else None
        self._casts: dict[torch.dtype, SparseOperator] = {}

    @classmethod
    def from_adjacency(cls, adj: NormalizedAdjacency) -> "SparseOperator":
        return cls(adj.off, adj.diag, symmetric=adj.symmetric)

    @property
    def matrix(self) -> Tensor:
        """``off`` as a ``torch.sparse_csr_tensor`` (wraps its arrays, no copy)."""
        return self.off.to_torch(None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.off.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.off.value.dtype  # type: ignore[union-attr]

    def cast(self, dtype: torch.dtype) -> "SparseOperator":
        """This operator with values in ``dtype``: ``self`` if it already is, else a copy made on first
        use and kept, so a float64 model multiplies in float64 without converting at every call."""
        if dtype == self.dtype:
            return self
        op = self._casts.get(dtype)
        if op is None:
            op = self._casts[dtype] = self._map(lambda g: g.with_value(g.value.to(dtype)), lambda t: t.to(dtype))
        return op

    @property
    def transpose(self) -> CSRGraph:
        """``offᵀ`` (``n × m``), built on first use and kept."""
        if self._transpose is None:
            self._transpose = self.off.transpose()
        return self._transpose

    def to(self, device: torch.device | str) -> "SparseOperator":
        return self._map(lambda g: g.to(device), lambda t: t.to(device))

    def _map(self, csr_fn: Callable[[CSRGraph], CSRGraph], fn: Callable[[Tensor], Tensor]) -> "SparseOperator":
        """The same operator with ``csr_fn`` applied to its matrix and built transpose, ``fn`` to its diagonal."""
        op = SparseOperator(csr_fn(self.off), None if self.diag is None else fn(self.diag), symmetric=self.symmetric)
        if self._transpose is not None and not self.symmetric:
            op._transpose = csr_fn(self._transpose)
        return op

    def forward(self, x: Tensor) -> Tensor:
        """No-grad product ``off @ x + diag ⊙ x[:m]`` in a single output buffer (in ``x``'s dtype)."""
        if x.dtype != self.dtype and x.is_floating_point():
            return self.cast(x.dtype).forward(x)
        return spmm_diag(self.off, x, self.diag)

    def backward(self, g: Tensor) -> Tensor:
        """``∂L/∂x = offᵀ @ g`` plus the diagonal term on the first ``m`` rows (``g: [m, d]``)."""
        if g.dtype != self.dtype and g.is_floating_point():
            return self.cast(g.dtype).backward(g)
        return spmm_diag(self.transpose, g, self.diag)


def spmm_diag(a: CSRGraph, x: Tensor, diag: Tensor | None = None, out: Tensor | None = None, *,
              backend: str = "auto") -> Tensor:
    r"""The library's one sparse-times-dense product with a diagonal:
    ``out = A @ x``, then ``out[:k] += diag ⊙ x[:k]`` for ``k = len(diag)``.

    Shapes: ``A`` ``[m, n]`` with values (:class:`~approxgnn.graph.CSRGraph`), ``x`` ``[n, d]``,
    ``diag`` ``[k]`` or ``[k, 1]`` with ``k ≤ min(m, n)`` (``k = m`` for an operator's forward,
    the targets being the first sources; ``k = n`` for its transpose), ``out`` ``[m, d]``,
    written in place (allocated if ``None``) and returned. ``backend``: ``"auto"`` runs the numba
    kernel (:func:`approxgnn.csr_kernels.csr_spmm`, deterministic) on CPU float tensors whose
    dtype matches ``A``'s values and torch's CSR ``addmm`` otherwise; ``"torch"`` always takes
    torch's path (any device).

    Used by the exact operator (both directions), RSC's sampled backward (``A`` = its transposed
    row slice), the precomputed first hop and the benchmarks.
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
    if a.value is None:
        raise ValueError("spmm_diag needs a weighted matrix (CSRGraph.value is None)")
    m, n = a.shape
    if x.size(0) != n:
        raise ValueError(f"x has {x.size(0)} rows, the matrix {n} columns")
    k = 0 if diag is None else diag.numel()
    if k > min(m, n):
        raise ValueError(f"diag has {k} entries, more than min(rows, columns) = {min(m, n)}")
    if out is None:
        out = torch.empty((m, x.size(1)), dtype=x.dtype, device=x.device)
    if backend == "auto" and csr_kernels.use_numba(x) and a.value.dtype == x.dtype:
        if diag is None or k == m:  # the kernel's diagonal covers every output row
            return csr_kernels.csr_spmm(a.rowptr, a.col, a.value, x.contiguous(), diag, out)
        # k < m (a block's transpose): the kernel would read x past its k rows for the diagonal.
        csr_kernels.csr_spmm(a.rowptr, a.col, a.value, x.contiguous(), None, out)
        out[:k].addcmul_(diag.reshape(-1, 1).to(x.dtype), x[:k])
        return out
    if diag is None:
        out.zero_()
    else:
        out[k:].zero_()
        torch.mul(x[:k], diag.reshape(-1, 1).to(x.dtype), out=out[:k])
    return torch.addmm(out, a.with_value(a.value.to(x.dtype)).to_torch(None), x, out=out)


class ExactSpMM(torch.autograd.Function):
    """Autograd wrapper around :class:`SparseOperator` (gradients flow to ``x`` only)."""

    @staticmethod
    def forward(ctx, x: Tensor, op: SparseOperator) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op.forward(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return ctx.op.backward(g.contiguous()), None


def spmm(op: SparseOperator, x: Tensor) -> Tensor:
    """``Â @ x`` exactly; backward uses the cached transpose."""
    if torch.is_grad_enabled() and x.requires_grad:
        return ExactSpMM.apply(x, op)
    return op.forward(x)
