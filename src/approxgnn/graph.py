"""CSR graph and the normalisations the models propagate with.

GCN normalisation keeps the self-loop term *separate* from the off-diagonal matrix:

    Â = D̃^{-1/2} (A + I) D̃^{-1/2},   D̃ = D + I
      = Â_off + diag(1 / (deg + 1))

so an approximate engine can sample ``Â_off`` alone and add the diagonal exactly (rsc.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import csr_kernels


@dataclass
class CSRGraph:
    """Compressed sparse rows, the one CSR type of the library: row ``i`` holds the distinct column
    ids ``col[rowptr[i]:rowptr[i+1]]`` (int64, or int32 in a memory-mapped layout), sorted, except
    in a sampled block, whose rows keep the sampler's draw order.

    A graph is square (``num_nodes`` rows and columns); a rectangular matrix, such as a sampled
    mini-batch block (``m`` targets × ``n`` sources) or RSC's transposed row slice, sets
    ``num_cols``. The types that need a CSR (:class:`~approxgnn.minibatch.sampler.Block`,
    :class:`~approxgnn.rsc.spmm.SampledSlice`, :class:`~approxgnn.ops.SparseOperator`) hold one of
    these rather than their own arrays, so ``nnz``, ``degree``, the transpose and
    :meth:`validate` exist once.

    ``value`` is ``None`` for an unweighted graph, else a tensor aligned with ``col``.
    ``symmetric`` records that the structure equals its transpose (known by construction, so
    nobody has to sort ``nnz`` entries to find out). Tensors may live on any device.
    """

    rowptr: Tensor
    col: Tensor
    num_nodes: int
    value: Tensor | None = None
    symmetric: bool = False
    num_cols: int | None = None  # None: square, ``num_nodes`` columns

    def __post_init__(self) -> None:
        if self.num_cols is None:
            self.num_cols = self.num_nodes

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)``."""
        return self.num_nodes, int(self.num_cols)  # type: ignore[arg-type]

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def device(self) -> torch.device:
        return self.col.device

    def degree(self) -> Tensor:
        """Out-degree (row length), int64 ``[N]``."""
        return self.rowptr[1:] - self.rowptr[:-1]

    def row(self) -> Tensor:
        """Row index of every stored entry, int64 ``[nnz]``."""
        return torch.repeat_interleave(torch.arange(self.num_nodes, device=self.device), self.degree(),
                                       output_size=self.nnz)

    def validate(self) -> "CSRGraph":
        """Check the CSR invariants and return ``self``; ``ValueError`` naming the first one broken:
        ``rowptr`` has ``rows + 1`` entries, runs from 0 to ``nnz`` without decreasing, column ids
        lie in ``[0, num_cols)``, ``value`` (if any) has one entry per column id. ``O(nnz)``."""
        m, n = self.shape
        if self.rowptr.dim() != 1 or self.rowptr.numel() != m + 1:
            raise ValueError(f"rowptr must have {m + 1} entries for {m} rows, has {tuple(self.rowptr.shape)}")
        if int(self.rowptr[0]) != 0 or int(self.rowptr[-1]) != self.nnz:
            raise ValueError(f"rowptr must run from 0 to nnz={self.nnz}, runs from {int(self.rowptr[0])} "
                             f"to {int(self.rowptr[-1])}")
        if bool((self.degree() < 0).any()):
            raise ValueError("rowptr decreases somewhere: not CSR row pointers")
        if self.nnz and (int(self.col.min()) < 0 or int(self.col.max()) >= n):
            raise ValueError(f"col holds a column id outside [0, {n})")
        if self.value is not None and self.value.shape != self.col.shape:
            raise ValueError(f"value has shape {tuple(self.value.shape)}, col {tuple(self.col.shape)}")
        return self

    def with_value(self, value: Tensor | None) -> "CSRGraph":
        """The same structure (shared, not copied) with other values, e.g. a normalisation or a cast."""
        return CSRGraph(self.rowptr, self.col, self.num_nodes, value, self.symmetric, self.num_cols)

    def to(self, device: torch.device | str) -> "CSRGraph":
        v = None if self.value is None else self.value.to(device)
        return CSRGraph(self.rowptr.to(device), self.col.to(device), self.num_nodes, v, self.symmetric, self.num_cols)

    def to_torch(self, dtype: torch.dtype | None = torch.float32) -> Tensor:
        """As a ``torch.sparse_csr_tensor`` of :attr:`shape` (values default to 1; ``dtype=None``
        keeps the values' own dtype). Wraps the arrays, no copy when the dtype matches."""
        v = self.value if self.value is not None else torch.ones(self.nnz, dtype=dtype or torch.float32,
                                                                 device=self.device)
        return torch.sparse_csr_tensor(self.rowptr, self.col, v if dtype is None else v.to(dtype), self.shape)

    @classmethod
    def from_torch(cls, matrix: Tensor, *, symmetric: bool = False) -> "CSRGraph":
        """Wrap a ``torch.sparse_csr_tensor`` (its arrays are shared, made contiguous if needed)."""
        m, n = matrix.shape
        return cls(matrix.crow_indices().contiguous(), matrix.col_indices().contiguous(), int(m),
                   matrix.values().detach().contiguous(), symmetric, int(n))

    def transpose(self) -> "CSRGraph":
        """``Aᵀ`` in CSR, ``[num_cols, num_nodes]``, rows sorted (:func:`transposed_rows` of every row)."""
        t = self.transposed_rows(torch.arange(self.num_nodes, device=self.device))
        return CSRGraph(t.rowptr, t.col, t.num_nodes, None if self.value is None else t.value, self.symmetric,
                        t.num_cols)

    def transposed_rows(self, rows: Tensor, scale: Tensor | None = None) -> "CSRGraph":
        r"""CSR of :math:`(\mathrm{diag}(s)\,A[S,:])^\top`, ``[num_cols, num_nodes]``, for sorted
        row ids ``rows`` = S (int64 ``[k]``) and optional ``scale`` = s ``[k]``.

        The kept rows' original ids become the column ids, so a product with it reads ``G``
        directly (no ``G[S]`` gather). Cost ``O(nnz(A[S,:]) + num_cols)``
        (:func:`approxgnn.csr_kernels.transpose_rows`). An unweighted matrix is treated as ones.
        """
        val = self.value if self.value is not None else torch.ones(self.nnz, device=self.device)
        ptr, col, v = csr_kernels.transpose_rows(self.rowptr, self.col, val, rows, scale, self.shape[1])
        return CSRGraph(ptr, col, self.shape[1], v, False, self.num_nodes)

    @classmethod
    def from_arrays(cls, rowptr: np.ndarray, col: np.ndarray, num_nodes: int, *, symmetric: bool = True,
                    value: np.ndarray | None = None, num_cols: int | None = None) -> "CSRGraph":
        """Wrap numpy CSR arrays (e.g. memory-mapped ``rowptr`` int64 and ``col`` int32/int64 of an
        on-disk layout, or a sampled block's arrays) without copying them: a graph on disk stays
        there until rows are touched."""
        import warnings

        with warnings.catch_warnings():  # read-only memmaps: nothing writes through these tensors
            warnings.simplefilter("ignore", UserWarning)
            v = None if value is None else torch.from_numpy(np.asarray(value))
            return cls(torch.from_numpy(np.asarray(rowptr)), torch.from_numpy(np.asarray(col)), num_nodes, v,
                       symmetric, num_cols)

    @classmethod
    def from_edge_index(
        cls,
        edge_index: Tensor | np.ndarray,
        num_nodes: int,
        *,
        symmetrize: bool = True,
        remove_self_loops: bool = True,
    ) -> "CSRGraph":
        """Build a clean unweighted graph from ``[2, E]`` (src, dst) pairs.

        Duplicates are removed; by default edges are made undirected and self-loops dropped
        (GCN adds its own through the separate diagonal).
        """
        ei = torch.as_tensor(np.asarray(edge_index) if not isinstance(edge_index, Tensor) else edge_index)
        if ei.dim() != 2 or ei.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(ei.shape)}")
        if ei.is_floating_point() or ei.dtype == torch.bool:
            raise ValueError(f"edge_index must be integer, got {ei.dtype}")
        if num_nodes <= 0:
            raise ValueError(f"num_nodes must be positive, got {num_nodes}")
        ei = ei.to(torch.int64)
        if ei.numel():
            if int(ei.min()) < 0:
                raise ValueError(f"edge_index holds a negative node id ({int(ei.min())})")
            if int(ei.max()) >= num_nodes:
                raise ValueError(f"edge_index holds node id {int(ei.max())} outside [0, {num_nodes})")
        src, dst = ei[0], ei[1]
        if symmetrize:
            src, dst = torch.cat([src, dst]), torch.cat([dst, src])
        if remove_self_loops:
            keep = src != dst
            src, dst = src[keep], dst[keep]
        # One sort of a combined key both orders by (row, col) and exposes duplicates.
        key = torch.unique(src * num_nodes + dst, sorted=True)
        row, col = key // num_nodes, key % num_nodes
        return cls(_rowptr_from_sorted(row, num_nodes), col, num_nodes, symmetric=symmetrize)


def _rowptr_from_sorted(row: Tensor, num_nodes: int) -> Tensor:
    counts = torch.bincount(row, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=row.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr


@dataclass
class NormalizedAdjacency:
    """``Â = off + diag(diag)``: off-diagonal CSR part (weighted) plus a dense diagonal ``[N]``.

    ``kind`` is ``"gcn"`` (symmetric, ``Â_off`` is its own transpose) or ``"mean"`` (row-normalised,
    no diagonal). ``row_norm`` is ``‖Â_off[i,:]‖₂`` per row, the RSC sampling weight.
    """

    off: CSRGraph
    diag: Tensor | None
    kind: str
    symmetric: bool

    @property
    def num_nodes(self) -> int:
        return self.off.num_nodes

    def row_norm(self) -> Tensor:
        v = self.off.value
        sq = torch.zeros(self.num_nodes, dtype=v.dtype, device=v.device)
        sq.index_add_(0, self.off.row(), v * v)
        return sq.sqrt()

    def to(self, device: torch.device | str) -> "NormalizedAdjacency":
        d = None if self.diag is None else self.diag.to(device)
        return NormalizedAdjacency(self.off.to(device), d, self.kind, self.symmetric)

    def dense(self) -> Tensor:
        """Dense ``[N, N]`` reference (tests only)."""
        a = self.off.to_torch().to_dense()
        if self.diag is not None:
            a = a + torch.diag(self.diag)
        return a


def gcn_norm(graph: CSRGraph) -> NormalizedAdjacency:
    """``Â_off[i,j] = 1/sqrt((d_i+1)(d_j+1))``, ``diag_i = 1/(d_i+1)`` for a graph without self-loops."""
    deg = graph.degree().to(torch.float32) + 1.0
    dinv = deg.rsqrt()
    val = dinv[graph.row()] * dinv[graph.col]
    off = graph.with_value(val)
    return NormalizedAdjacency(off, 1.0 / deg, "gcn", symmetric=graph.symmetric)


def mean_norm(graph: CSRGraph) -> NormalizedAdjacency:
    """Row-normalised mean aggregation ``Â[i,j] = 1/d_i`` (isolated rows stay zero), no diagonal."""
    deg = graph.degree().to(torch.float32)
    inv = torch.where(deg > 0, 1.0 / deg.clamp(min=1.0), torch.zeros_like(deg))
    off = CSRGraph(graph.rowptr, graph.col, graph.num_nodes, inv[graph.row()], symmetric=False)
    return NormalizedAdjacency(off, None, "mean", symmetric=False)


def normalize(graph: CSRGraph, kind: str) -> NormalizedAdjacency:
    if kind == "gcn":
        return gcn_norm(graph)
    if kind == "mean":
        return mean_norm(graph)
    raise ValueError(f"unknown normalisation {kind!r}; choose 'gcn' or 'mean'")

