r"""A PyG layer's adjacency input → the library's normalised operator, built once per graph.

PyG layers take the graph as ``edge_index [2, E]`` (plus optional ``edge_weight [E]``), as a torch
sparse ``adj_t [N, N]`` or as a ``torch_sparse.SparseTensor``. Each conv normalises it its own way:

* ``"gcn"`` (``GCNConv``, ``GCN2Conv`` with ``normalize=True``): PyG's own ``gcn_norm`` is called
  (so self-loops, ``improved``, edge weights and ``flow`` follow PyG to the letter), giving
  :math:`\hat A = \hat D^{-1/2}(A + fI)\hat D^{-1/2}`;
* ``"sum"`` (``normalize=False``): the weighted adjacency as given;
* ``"mean"`` (``SAGEConv``, mean aggregation): :math:`\hat A_{ij} = v_{ij} / c_i`, ``c_i`` the
  number of stored entries of row ``i`` (edges into ``i``; duplicates count, as in PyG).

Rows are targets, columns sources: ``out = Â @ x`` is PyG's aggregation. The diagonal is split off
(:class:`~approxgnn.graph.NormalizedAdjacency`: ``Â = Â_off + diag``) so RSC samples ``Â_off`` only.
:class:`GraphCache` keeps the built operators, keyed by the identity of the input tensors.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..graph import CSRGraph, NormalizedAdjacency
from ..ops import SparseOperator

# (kind, self-loop fill value, add_self_loops, flow): how one conv normalises its input.
Spec = tuple[str, float, bool, str]


@dataclass
class GraphEntry:
    """One normalised graph: the exact operator, its RSC row norms, and (once bound) its RSC engine."""

    adj: Any
    weight: Tensor | None
    versions: tuple[int, int]
    op: SparseOperator
    row_norm: Tensor
    engine: Any = None


def _version(t: Any) -> int:
    """In-place edits bump a tensor's version: a cached graph whose input changed is rebuilt."""
    return int(getattr(t, "_version", 0)) if isinstance(t, Tensor) else 0


def _triplets(adj: Any, weight: Tensor | None, n: int, spec: Spec, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(target, source, value)`` of the normalised adjacency (duplicates not yet summed)."""
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.typing import SparseTensor
    from torch_geometric.utils import to_edge_index

    kind, fill, loops, flow = spec
    if kind == "gcn":  # PyG's own normalisation, then read the entries back
        if isinstance(adj, SparseTensor):
            row, col, val = gcn_norm(adj, None, n, fill == 2.0, loops, flow, dtype).coo()
        elif adj.is_sparse or adj.layout == torch.sparse_csr:
            norm, _ = gcn_norm(adj, None, n, fill == 2.0, loops, flow, dtype)
            (row, col), val = to_edge_index(norm)
        else:
            ei, val = gcn_norm(adj, weight, n, fill == 2.0, loops, flow, dtype)
            row, col = (ei[1], ei[0]) if flow == "source_to_target" else (ei[0], ei[1])
        return row, col, val.to(dtype)
    if isinstance(adj, SparseTensor):
        row, col, val = adj.coo()
        if kind == "mean" or val is None:  # SAGEConv drops SparseTensor values
            val = torch.ones(row.numel(), dtype=dtype, device=row.device)
    elif adj.is_sparse or adj.layout == torch.sparse_csr:
        (row, col), val = to_edge_index(adj.to_sparse_coo().coalesce())
    else:
        row, col = (adj[1], adj[0]) if flow == "source_to_target" else (adj[0], adj[1])
        val = weight if weight is not None and kind == "sum" else torch.ones(row.numel(), device=row.device)
    val = val.to(dtype)
    if kind == "mean":
        count = torch.bincount(row, minlength=n).clamp_(min=1).to(dtype)
        val = val / count[row]
    return row, col, val


def normalized_adjacency(adj: Any, weight: Tensor | None, n: int, spec: Spec, dtype: torch.dtype) -> NormalizedAdjacency:
    """The normalised ``[n, n]`` operator of a PyG adjacency input, as ``Â_off`` CSR plus diagonal."""
    row, col, val = _triplets(adj, weight, n, spec, dtype)
    row, col = row.long(), col.long()
    if row.numel() and (int(torch.minimum(row.min(), col.min())) < 0 or int(torch.maximum(row.max(), col.max())) >= n):
        raise ValueError(f"the graph holds a node id outside [0, {n}) for {n} nodes of x")
    loop = row == col
    diag = torch.zeros(n, dtype=dtype, device=val.device).index_add_(0, row[loop], val[loop])
    keep = ~loop
    coo = torch.sparse_coo_tensor(torch.stack([row[keep], col[keep]]), val[keep], (n, n)).coalesce()
    csr = coo.to_sparse_csr()  # sums duplicates; rows sorted, columns sorted within rows
    off = CSRGraph(csr.crow_indices(), csr.col_indices(), n, csr.values())
    sym = _is_symmetric(off)
    off.symmetric = sym
    return NormalizedAdjacency(off, diag if bool((diag != 0).any()) else None, spec[0], sym)


def _is_symmetric(g: CSRGraph) -> bool:
    """``Â_off == Â_offᵀ`` (values up to a few ulps: ``d_i^{-1/2} d_j^{-1/2}`` rounds by order)."""
    t = g.transpose()
    return (torch.equal(g.rowptr, t.rowptr) and torch.equal(g.col, t.col)
            and torch.allclose(g.value, t.value, rtol=1e-6, atol=0.0))


class GraphCache:
    """Normalised operators by input graph: built on first use, reused while the input is unchanged.

    Keyed by the *identity* of the adjacency (and weight) tensors, the node count, dtype and the
    conv's normalisation; an in-place edit of an input tensor invalidates its entry. The entry
    holds a reference to its inputs, so their ids cannot be recycled while it lives. At most
    ``size`` graphs are kept (least recently used first out), except entries an engine is bound to.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, GraphEntry] = OrderedDict()

    def get(self, adj: Any, weight: Tensor | None, n: int, dtype: torch.dtype, spec: Spec) -> GraphEntry:
        key = (id(adj), id(weight), n, dtype, spec)
        versions = (_version(adj), _version(weight))
        e = self._entries.get(key)
        if e is None or e.adj is not adj or e.weight is not weight or e.versions != versions:
            a = normalized_adjacency(adj, weight, n, spec, dtype)
            e = GraphEntry(adj, weight, versions, SparseOperator.from_adjacency(a), a.row_norm())
            self._entries[key] = e
        self._entries.move_to_end(key)
        unbound = [k for k, v in self._entries.items() if v.engine is None]
        while len(self._entries) > self.size and unbound:
            del self._entries[unbound.pop(0)]
        return e

    def entries(self) -> list[GraphEntry]:
        return list(self._entries.values())
