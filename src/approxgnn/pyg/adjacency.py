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
:class:`GraphCache` keeps the built operators and finds them again by the graph's *content*: an
adjacency rebuilt inside ``forward`` (``edge_index.flip([0])`` in ``DirGNNConv``) reuses its operator.
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
    """One normalised graph: the exact operator, its RSC row norms, and (once bound) its RSC engine.

    ``adj``/``weight`` are the input tensors it was built from (``versions`` their in-place edit
    counters then): the witness a later input is compared with. ``alias`` is the latest other
    input found equal to them, so a tensor reused across epochs is matched by identity.
    """

    adj: Any
    weight: Tensor | None
    versions: tuple[int, int]
    op: SparseOperator
    row_norm: Tensor
    engine: Any = None
    name: str = ""
    spec: Any = None
    alias: tuple[Any, Tensor | None, tuple[int, int]] | None = None


def _version(t: Any) -> int:
    """In-place edits bump a tensor's version: a cached graph whose input changed is rebuilt."""
    return int(getattr(t, "_version", 0)) if isinstance(t, Tensor) else 0


def _parts(a: Any) -> tuple[Tensor | None, ...]:
    """The tensors that define a graph input (indices and values), for an exact comparison."""
    from torch_geometric.typing import SparseTensor

    if a is None:
        return ()
    if isinstance(a, SparseTensor):
        return a.coo()
    if a.layout == torch.sparse_coo:
        return a._indices(), a._values()
    if a.layout == torch.sparse_csr:
        return a.crow_indices(), a.col_indices(), a.values()
    return (a,)


def fingerprint(adj: Any, weight: Tensor | None) -> tuple:
    """A cheap key (O(1): kind, shapes, dtypes, device, non-zeros) that two equal inputs share."""
    def one(t: Tensor | None) -> tuple:
        return () if t is None else (tuple(t.shape), t.dtype, t.device)
    return (type(adj).__name__, getattr(adj, "layout", None), tuple(one(t) for t in _parts(adj)), one(weight))


def same_graph(a: Any, wa: Tensor | None, b: Any, wb: Tensor | None) -> bool:
    """Exactly the same indices and values (an O(E) comparison, no hashing, no false match)."""
    pa, pb = _parts(a) + _parts(wa), _parts(b) + _parts(wb)
    return len(pa) == len(pb) and all(
        (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape and x.dtype == y.dtype
                                      and torch.equal(x, y)) for x, y in zip(pa, pb))


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
    """Normalised operators by input graph: built on first use, reused while the graph is the same.

    Looked up by the node count, dtype, the conv's normalisation and :func:`fingerprint`; an entry
    is reused when the input *is* the tensor it last matched (unchanged since: in-place edits bump
    the version), or else when its indices and values equal those the entry was built from
    (:func:`same_graph`), so an adjacency rebuilt in ``forward`` costs one comparison, not a new
    operator. An entry whose source tensor was edited in place can no longer vouch for its content
    and is not matched by content again. At most ``size`` graphs are kept (least recently used
    first out), except entries an engine is bound to.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, list[GraphEntry]] = OrderedDict()
        self.builds = 0

    def get(self, adj: Any, weight: Tensor | None, n: int, dtype: torch.dtype, spec: Spec) -> GraphEntry:
        key = (n, dtype, spec, fingerprint(adj, weight))
        versions = (_version(adj), _version(weight))
        found = None
        for e in self._entries.get(key, ()):  # identity first: the usual case, free
            for a, w, v in ((e.adj, e.weight, e.versions), e.alias or (None, None, None)):
                if a is adj and w is weight and v == versions:
                    found = e
        if found is None:
            for e in self._entries.get(key, ()):
                if (_version(e.adj), _version(e.weight)) == e.versions and same_graph(adj, weight, e.adj, e.weight):
                    found = e
                    e.alias = (adj, weight, versions)
                    break
        if found is None:
            a = normalized_adjacency(adj, weight, n, spec, dtype)
            found = GraphEntry(adj, weight, versions, SparseOperator.from_adjacency(a), a.row_norm())
            self._entries.setdefault(key, []).append(found)
            self.builds += 1
        self._entries.move_to_end(key)
        self._evict(found)
        return found

    def _evict(self, keep: GraphEntry) -> None:
        unbound = [(k, e) for k, es in self._entries.items() for e in es if e.engine is None and e is not keep]
        for k, e in unbound[:max(len(self.entries()) - self.size, 0)]:  # oldest first
            self._entries[k].remove(e)
            if not self._entries[k]:
                del self._entries[k]

    def entries(self) -> list[GraphEntry]:
        return [e for es in self._entries.values() for e in es]
