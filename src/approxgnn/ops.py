"""Exact sparse-dense product with a cached transpose for the backward pass.

``torch``'s own CSR autograd rebuilds ``Aᵀ`` at every backward call; for a fixed graph that is
pure waste. :class:`SparseOperator` builds ``Aᵀ`` once (or reuses ``A`` when it is symmetric) and
:class:`ExactSpMM` uses it, writing the diagonal term and the product into one buffer. On CPU both
products run in the numba kernel of :mod:`approxgnn.csr_kernels` (faster than torch's CSR
``addmm`` there, and deterministic); on other devices in torch's kernels.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import csr_kernels
from .graph import CSRGraph, NormalizedAdjacency


class SparseOperator:
    """``y = off @ x + diag ⊙ x[:m]`` for an ``m × n`` CSR ``off`` and optional diagonal ``[m]``.

    ``m == n`` for a full graph; ``m < n`` for a sampled block whose targets are the first ``m``
    sources. Holds the torch CSR tensor and, lazily, its transpose.
    """

    def __init__(self, off: CSRGraph | Tensor, diag: Tensor | None = None, *, symmetric: bool = False,
                 shape: tuple[int, int] | None = None) -> None:
        if isinstance(off, CSRGraph):
            value = off.value if off.value is not None else torch.ones(off.nnz, device=off.device)
            m = off.num_nodes if shape is None else shape[0]
            n = off.num_nodes if shape is None else shape[1]
            # Float values keep their dtype (a float64 graph stays float64); others become float32.
            value = value if value.is_floating_point() else value.float()
            off = torch.sparse_csr_tensor(off.rowptr, off.col, value, (m, n))
        self.matrix = off
        self.diag = None if diag is None else diag.reshape(-1, 1).to(off.values().dtype)
        self.symmetric = symmetric
        self._transpose: Tensor | None = off if symmetric else None
        self._casts: dict[torch.dtype, SparseOperator] = {}

    @classmethod
    def from_adjacency(cls, adj: NormalizedAdjacency) -> "SparseOperator":
        return cls(adj.off, adj.diag, symmetric=adj.symmetric)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    def cast(self, dtype: torch.dtype) -> "SparseOperator":
        """This operator with values in ``dtype``: ``self`` if it already is, else a copy made on first
        use and kept, so a float64 model multiplies in float64 without converting at every call."""
        if dtype == self.dtype:
            return self
        op = self._casts.get(dtype)
        if op is None:
            op = self._casts[dtype] = self._map(lambda t: t.to(dtype))
        return op

    @property
    def transpose(self) -> Tensor:
        """``offᵀ`` as CSR, built on first use and kept."""
        if self._transpose is None:
            self._transpose = self.matrix.t().to_sparse_csr()
        return self._transpose

    def to(self, device: torch.device | str) -> "SparseOperator":
        return self._map(lambda t: t.to(device))

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "SparseOperator":
        """The same operator with ``fn`` applied to its matrix, diagonal and built transpose."""
        op = SparseOperator(fn(self.matrix), None if self.diag is None else fn(self.diag), symmetric=self.symmetric)
        if self._transpose is not None and not self.symmetric:
            op._transpose = fn(self._transpose)
        return op

    def forward(self, x: Tensor) -> Tensor:
        """No-grad product ``off @ x + diag ⊙ x[:m]`` in a single output buffer (in ``x``'s dtype)."""
        if x.dtype != self.dtype and x.is_floating_point():
            return self.cast(x.dtype).forward(x)
        return _addmm_diag(self.matrix, x, self.diag)

    def backward(self, g: Tensor) -> Tensor:
        """``∂L/∂x = offᵀ @ g`` plus the diagonal term scattered onto the first ``m`` rows."""
        if g.dtype != self.dtype and g.is_floating_point():
            return self.cast(g.dtype).backward(g)
        square = self.shape[0] == self.shape[1]
        out = _addmm_diag(self.transpose, g, self.diag if square else None)
        if self.diag is not None and not square:
            out[: g.size(0)].addcmul_(self.diag, g)
        return out


def _addmm_diag(matrix: Tensor, x: Tensor, diag: Tensor | None) -> Tensor:
    """``matrix @ x + diag ⊙ x[:m]`` in one fresh ``[m, d]`` buffer."""
    m = matrix.size(0)
    if csr_kernels.use_numba(x) and x.dtype == matrix.dtype:
        out = torch.empty((m, x.size(1)), dtype=x.dtype)
        return csr_kernels.csr_spmm(matrix.crow_indices(), matrix.col_indices(), matrix.values(), x.contiguous(),
                                    diag, out)
    if diag is None:
        return matrix @ x
    out = x[:m] * diag
    return torch.addmm(out, matrix, x, out=out)


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
