"""Layer-wise neighbour sampler in numba, with cache-aware pruning.

A model of ``L`` layers run on a mini-batch of seeds needs, at layer ``l``, the nodes whose output
``h^(l)`` is used above. We build them top-down, one hop per layer (PyG's ``num_neighbors``
order: ``fanouts[0]`` expands the seeds, i.e. the last layer):

* ``layer_nodes[L-1]`` = the seeds.
* Hop ``k`` expands the nodes that layer ``l = L-1-k`` must *compute* (``m_l`` of them, always a
  prefix of ``layer_nodes[l]``): each draws ``min(fanout, deg)`` distinct neighbours uniformly
  (``-1``: all of them). The union, relabelled, is the source list of layer ``l``'s block:
  ``[the m_l targets themselves ; new nodes that miss ; new nodes that hit]``, so the targets are
  the first ``m_l`` sources (what :class:`~approxgnn.ops.SparseOperator` expects).
* **Pruning** (``prune``): when layer ``l-1`` is cached, a *new* node whose ``h^(l-1)`` is a
  fresh cache entry is a *hit*: it is placed after the misses and is **not** a target of the next
  hop, so its sub-tree is never sampled, gathered or computed. Only new nodes can hit: a node
  that layer ``l`` computes (the seeds in particular) is computed at every layer below too.

Randomness is a counter-based hash of ``(key, hop, node)`` (splitmix64), so a batch is a pure
function of its key — independent of thread scheduling — and a resumed run redraws it exactly.
Use :func:`batch_key` to derive the key from ``(seed, epoch, batch)``.

With a precomputed first hop (``first_hop``, :mod:`approxgnn.precompute`) the last hop is never
sampled: layer 0's output needs only its targets' own rows of ``X`` and of the precomputed table, so
``blocks[0]`` is None, ``input_nodes`` are layer 0's computed targets and ``fanouts[-1]`` is unused
(that aggregation is exact, over the full neighbourhood).

For exact layer-wise inference, :meth:`NeighborSampler.closed_neighbourhood` gives a layer's
receptive field and :meth:`NeighborSampler.full_block` / :meth:`NeighborSampler.rows_block` give
full-neighbourhood blocks (relabelled, or with columns mapped into an existing input matrix).

Block values (the normalisation of a *sampled* row):

* ``mean`` (SAGE): ``1 / k_i`` over the ``k_i`` sampled neighbours (0 for an isolated node).
* ``gcn``: the full graph's ``Â_ij = 1/sqrt((d_i+1)(d_j+1))`` rescaled by ``d_i / k_i`` so the
  sampled row sum is an unbiased estimate of the full one; the self-loop ``1/(d_i+1)`` stays an
  exact diagonal. ``d`` are *global* degrees, so a fanout of -1 reproduces ``Â`` exactly.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange

from .._hash import GOLDEN, mix64, mix_key
from ..graph import CSRGraph
from ..ops import SparseOperator


def batch_key(seed: int, epoch: int, batch: int) -> int:
    """The sampler key of batch ``batch`` of epoch ``epoch`` in a run seeded ``seed``."""
    return mix_key(seed, epoch, batch)


@njit(nogil=True, cache=True)
def _row_counts(rowptr, targets, fanout):
    m = targets.shape[0]
    ptr = np.empty(m + 1, np.int64)
    ptr[0] = 0
    for i in range(m):
        d = rowptr[targets[i] + 1] - rowptr[targets[i]]
        k = d if (fanout < 0 or fanout >= d) else fanout
        ptr[i + 1] = ptr[i] + k
    return ptr


@njit(inline="always", cache=True)
def _sample_row(rowptr, col, v, nbr, lo, k, key):  # pragma: no cover - jitted
    """Fill ``nbr[lo:lo+k]`` with ``k`` distinct neighbours of node ``v``, in CSR order.

    Draw ``t`` is ``mix64(key ^ v·γ + (t+1)·γ)``: a function of ``(key, v, t)`` alone.
    """
    start, d = rowptr[v], rowptr[v + 1] - rowptr[v]
    if k == d:  # every neighbour: no randomness needed
        for j in range(k):
            nbr[lo + j] = col[start + j]
        return
    state = np.uint64(key) ^ (np.uint64(v) * GOLDEN)
    if k <= 32:
        # Floyd's algorithm: k distinct positions in [0, d) with k draws, O(k^2) checks.
        for t in range(k):
            j = d - k + t
            state += GOLDEN
            r = np.int64(mix64(state) % np.uint64(j + 1))
            for s in range(t):
                if nbr[lo + s] == r:
                    r = j
                    break
            nbr[lo + t] = r
    else:
        # Partial Fisher-Yates on a scratch copy of the positions.
        pos = np.arange(d)
        for t in range(k):
            state += GOLDEN
            r = t + np.int64(mix64(state) % np.uint64(d - t))
            pos[t], pos[r] = pos[r], pos[t]
            nbr[lo + t] = pos[t]
    nbr[lo:lo + k].sort()  # neighbours in CSR order: deterministic, cache friendly
    for t in range(k):
        nbr[lo + t] = col[start + nbr[lo + t]]


# Two kernels, parallel and serial, over the same inlined row body. They must be two Python
# functions: numba's on-disk cache names an entry after the function's qualified name and line,
# not its compile flags, so two jits of one function would load each other's machine code.
# Small hops run serially: waking threads costs more than the work, and on a busy machine a
# parallel region waits for its slowest (descheduled) thread.
@njit(parallel=True, nogil=True, cache=True)
def _sample_rows_par(rowptr, col, targets, ptr, key):  # pragma: no cover - jitted
    """``nbr[ptr[i]:ptr[i+1]]`` = distinct sampled neighbours of ``targets[i]`` (threads over i)."""
    nbr = np.empty(ptr[targets.shape[0]], np.int64)
    for i in prange(targets.shape[0]):
        _sample_row(rowptr, col, targets[i], nbr, ptr[i], ptr[i + 1] - ptr[i], key)
    return nbr


@njit(nogil=True, cache=True)
def _sample_rows_seq(rowptr, col, targets, ptr, key):  # pragma: no cover - jitted
    """:func:`_sample_rows_par` on one thread."""
    nbr = np.empty(ptr[targets.shape[0]], np.int64)
    for i in range(targets.shape[0]):
        _sample_row(rowptr, col, targets[i], nbr, ptr[i], ptr[i + 1] - ptr[i], key)
    return nbr


_PARALLEL_MIN_TARGETS = 16384


def _sample_rows(rowptr, col, targets, ptr, key):
    kernel = _sample_rows_par if len(targets) >= _PARALLEL_MIN_TARGETS else _sample_rows_seq
    return kernel(rowptr, col, targets, ptr, key)


@njit(nogil=True, cache=True)
def _relabel(targets, nbr, local, node_slot, slot_iter, now, staleness, check):
    """Local ids: targets ``0..m-1``, then new misses, then new hits (``check``: look up hits).

    ``local`` is an all ``-1`` scratch of size N, restored before returning. A new node ``u`` hits
    when ``node_slot[u] >= 0`` and ``now - slot_iter[node_slot[u]] <= staleness``.
    Returns ``(nodes, col_local, n_miss, n_hit)``.
    """
    m = targets.shape[0]
    for i in range(m):
        local[targets[i]] = i
    new_miss = np.empty(nbr.shape[0], np.int64)
    new_hit = np.empty(nbr.shape[0], np.int64)
    n_miss = 0
    n_hit = 0
    for e in range(nbr.shape[0]):
        u = nbr[e]
        if local[u] != -1:
            continue
        hit = False
        if check:
            s = node_slot[u]
            hit = s >= 0 and now - slot_iter[s] <= staleness
        if hit:
            local[u] = -2 - n_hit  # final id known once all misses are counted
            new_hit[n_hit] = u
            n_hit += 1
        else:
            local[u] = m + n_miss
            new_miss[n_miss] = u
            n_miss += 1
    col_local = np.empty(nbr.shape[0], np.int64)
    for e in range(nbr.shape[0]):
        c = local[nbr[e]]
        col_local[e] = m + n_miss + (-2 - c) if c < -1 else c
    nodes = np.empty(m + n_miss + n_hit, np.int64)
    nodes[:m] = targets
    nodes[m:m + n_miss] = new_miss[:n_miss]
    nodes[m + n_miss:] = new_hit[:n_hit]
    for i in range(nodes.shape[0]):
        local[nodes[i]] = -1
    return nodes, col_local, n_miss, n_hit


@njit(nogil=True, cache=True)
def _block_values(ptr, targets, nodes, col_local, deg, gcn):
    """Per-edge weights (module docstring) and, for GCN, the diagonal ``1/(d_i+1)``."""
    m = targets.shape[0]
    val = np.empty(col_local.shape[0], np.float32)
    diag = np.empty(m if gcn else 0, np.float32)
    for i in prange(m):
        lo, hi = ptr[i], ptr[i + 1]
        k = hi - lo
        if k == 0:
            if gcn:
                diag[i] = 1.0 / (deg[targets[i]] + 1.0)
            continue
        if gcn:
            di = deg[targets[i]]
            scale = (di / k) / np.sqrt(di + 1.0)
            for e in range(lo, hi):
                val[e] = scale / np.sqrt(deg[nodes[col_local[e]]] + 1.0)
            diag[i] = 1.0 / (di + 1.0)
        else:
            for e in range(lo, hi):
                val[e] = 1.0 / k
    return val, diag


@njit(parallel=True, nogil=True, cache=True)
def _full_rows(rowptr, col, targets, col_map, deg, gcn):
    """Every neighbour of every target, columns renamed by ``col_map`` (global id → row of the
    input matrix), with the block values of the module docstring (``k_i = d_i``)."""
    m = targets.shape[0]
    ptr = np.empty(m + 1, np.int64)
    ptr[0] = 0
    for i in range(m):
        ptr[i + 1] = ptr[i] + rowptr[targets[i] + 1] - rowptr[targets[i]]
    cols = np.empty(ptr[m], np.int64)
    val = np.empty(ptr[m], np.float32)
    diag = np.empty(m if gcn else 0, np.float32)
    for i in prange(m):
        v = targets[i]
        start, d = rowptr[v], ptr[i + 1] - ptr[i]
        for j in range(d):
            u = col[start + j]
            cols[ptr[i] + j] = col_map[u]
            val[ptr[i] + j] = 1.0 / np.sqrt((d + 1.0) * (deg[u] + 1.0)) if gcn else 1.0 / d
        if gcn:
            diag[i] = 1.0 / (d + 1.0)
    return ptr, cols, val, diag


@njit(nogil=True, cache=True)
def _closed_neighbourhood(rowptr, col, nodes, mark):
    """Sorted ``nodes ∪ N(nodes)``; ``mark`` is an all-False scratch of size N, restored."""
    count = 0
    for v in nodes:
        if not mark[v]:
            mark[v] = True
            count += 1
        for e in range(rowptr[v], rowptr[v + 1]):
            u = col[e]
            if not mark[u]:
                mark[u] = True
                count += 1
    out = np.empty(count, np.int64)
    k = 0
    for u in range(mark.shape[0]):
        if mark[u]:
            out[k] = u
            k += 1
            mark[u] = False
    return out


class PruneTest(NamedTuple):
    """Fresh-hit test of one cached layer, read by the sampler kernel.

    Node ``u`` hits when ``node_slot[u] >= 0`` and ``now - slot_iter[node_slot[u]] <= staleness``.
    ``keep``: ``None`` prunes a hit's sub-tree (it is served, not computed); an int ``k >= 0``
    keeps the hit as a computed node whose next hop draws ``min(k, fanout)`` neighbours (``k = 0``:
    none, the layer's aggregate is served instead; ``KEEP_ALL``: the hop's own fanout) -- it is
    then one of the ``num_partial`` last computed nodes of its layer. ``keep_share < 1`` keeps
    only that share of the hits (drawn per node), and prunes the rest.
    """

    node_slot: np.ndarray  # int32/int64 [N]
    slot_iter: np.ndarray  # int64 [slots]
    now: int
    staleness: int
    keep: int | None = None
    # With ``keep``: the probability that a hit is kept (a pure function of the batch key, the hop
    # and the node); the others are pruned. The kept hits come first among the hits.
    keep_share: float = 1.0


KEEP_ALL = 1 << 40  # PruneTest.keep: a kept hit draws as many neighbours as a miss


@njit(nogil=True, cache=True)
def _keep_draws(nodes, key, share):  # pragma: no cover - jitted
    """Bool ``[len(nodes)]``: node ``v`` is kept when ``mix64(key ^ v·γ + γ) / 2^64 < share``."""
    out = np.empty(nodes.shape[0], np.bool_)
    scale = 1.0 / 18446744073709551616.0
    for i in range(nodes.shape[0]):
        z = np.uint64(key) ^ (np.uint64(nodes[i]) * GOLDEN)
        out[i] = np.float64(mix64(z + GOLDEN)) * scale < share
    return out


@dataclass
class Block:
    """Layer ``l``'s bipartite block: ``m`` targets × ``n`` sources, targets = first ``m`` sources.

    ``adj``: the block's CSR (:class:`~approxgnn.graph.CSRGraph` with ``num_nodes = m``,
    ``num_cols = n``, local source ids, float32 values; its tensors share the sampler's numpy
    arrays); ``diag``: float32 ``[m]`` (GCN) or ``None``.
    """

    adj: CSRGraph
    diag: torch.Tensor | None

    @classmethod
    def from_arrays(cls, rowptr: np.ndarray, col: np.ndarray, value: np.ndarray, diag: np.ndarray | None,
                    num_sources: int) -> "Block":
        """Wrap the sampler's fresh (writable) arrays, without copying them."""
        adj = CSRGraph(torch.from_numpy(rowptr), torch.from_numpy(col), len(rowptr) - 1, torch.from_numpy(value),
                       num_cols=num_sources)
        return cls(adj, None if diag is None else torch.from_numpy(diag))

    @property
    def num_targets(self) -> int:
        return self.adj.num_nodes

    @property
    def num_sources(self) -> int:
        return self.adj.shape[1]

    def operator(self, device: torch.device | str = "cpu") -> SparseOperator:
        """As a rectangular :class:`SparseOperator` (``y = off @ x + diag ⊙ x[:m]``)."""
        return SparseOperator(self.adj, self.diag).to(device)


@dataclass
class SampledBatch:
    """The computation graph of one mini-batch (``L`` layers).

    * ``layer_nodes[l]``: global ids of the nodes whose ``h^(l)`` is used, ordered
      ``[computed (num_computed[l]) ; cache hits]``; ``layer_nodes[L-1]`` are the seeds.
    * ``input_nodes``: nodes whose raw features layer 0 reads (all computed).
    * ``blocks[l]``: ``num_computed[l] × len(layer_nodes[l-1])`` (``len(input_nodes)`` for l=0);
      ``blocks[0]`` is None when the first hop is precomputed (``input_nodes`` are then layer 0's
      computed targets).
    * ``num_partial[l]``: hits that are also computed (:attr:`PruneTest.keep`), the last
      ``num_partial[l]`` of the ``num_computed[l]`` computed nodes, from fewer neighbours.
    * ``hit_ages[l]``: int64 ``[len(hits(l))]``, the age in iterations of each hit's served row
      (set by the history that serves them; empty until then).
    """

    seeds: np.ndarray
    layer_nodes: list[np.ndarray]
    input_nodes: np.ndarray
    blocks: list[Block]
    num_computed: list[int]
    num_partial: list[int] = field(default_factory=list)
    hit_ages: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.num_partial:
            self.num_partial = [0] * len(self.num_computed)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def hits(self, layer: int) -> np.ndarray:
        """Global ids served from the cache at hidden layer ``layer`` (kept hits first, then pruned ones)."""
        return self.layer_nodes[layer][self.num_computed[layer] - self.num_partial[layer]:]

    def misses(self, layer: int) -> np.ndarray:
        """Global ids computed at layer ``layer`` that are not hits (the seeds first)."""
        return self.layer_nodes[layer][: self.num_computed[layer] - self.num_partial[layer]]

    def nodes_per_hop(self) -> list[int]:
        """``[seeds, nodes after hop 1, …, input nodes]`` (hits included where they occur)."""
        return [len(self.layer_nodes[l]) for l in range(self.num_layers - 1, -1, -1)] + [len(self.input_nodes)]


@dataclass
class NeighborSampler:
    """Uniform neighbour sampling without replacement on a CSR graph (module docstring).

    ``fanouts[k]`` is the fanout of hop ``k`` from the seeds (``-1``: all neighbours);
    ``norm`` is ``"mean"`` (SAGE) or ``"gcn"``; ``first_hop``: layer 0's aggregation is
    precomputed, so the last hop is not sampled (module docstring). One sampler serves one thread
    at a time (a lock guards the shared scratch array).
    """

    graph: CSRGraph
    fanouts: list[int]
    norm: str = "mean"
    first_hop: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.fanouts:
            raise ValueError("fanouts must list at least one layer")
        for f in self.fanouts:
            if f != -1 and f <= 0:
                raise ValueError(f"fanouts must be positive or -1 (all neighbours), got {f}")
        if self.norm not in ("mean", "gcn"):
            raise ValueError(f"norm must be 'mean' or 'gcn', got {self.norm!r}")
        self.rowptr = self.graph.rowptr.cpu().numpy()
        self.col = self.graph.col.cpu().numpy()
        self.deg = np.diff(self.rowptr).astype(np.float64)
        self._local = np.full(self.graph.num_nodes, -1, np.int64)
        self._no_slot = np.full(1, -1, np.int64)
        self._no_iter = np.zeros(1, np.int64)

    @property
    def num_layers(self) -> int:
        return len(self.fanouts)

    def sample(self, seeds: np.ndarray, key: int, prune: dict[int, PruneTest] | None = None) -> SampledBatch:
        """Sample the computation graph of ``seeds`` (distinct node ids, int64 ``[B]``).

        Raises ``ValueError`` on a repeated seed: it would be a target twice in the top block
        and weigh twice in the loss. Cost ``O(B log B)``, small next to the sampling.

        ``prune[l]`` (hidden layer ``l``) serves fresh cached ``h^(l)`` instead of expanding.
        """
        seeds = np.ascontiguousarray(seeds, dtype=np.int64)
        if seeds.ndim != 1 or seeds.size == 0:
            raise ValueError("seeds must be a non-empty 1-D array of node ids")
        if seeds.min() < 0 or seeds.max() >= self.graph.num_nodes:
            raise ValueError(f"seed ids must lie in [0, {self.graph.num_nodes})")
        ids, counts = np.unique(seeds, return_counts=True)
        if len(ids) != len(seeds):  # a repeated seed would be a target twice and count twice in the loss
            dup = ids[counts > 1]
            raise ValueError(f"seeds must be distinct: {len(dup)} node id(s) repeated, e.g. {dup[:5].tolist()}")
        prune = prune or {}
        num_layers = self.num_layers
        layer_nodes: list[np.ndarray | None] = [None] * num_layers
        blocks: list[Block | None] = [None] * num_layers
        num_computed, num_partial = [0] * num_layers, [0] * num_layers
        layer_nodes[-1], num_computed[-1] = seeds, len(seeds)
        targets = input_nodes = seeds
        kept: tuple[int, int | None] = (0, None)  # the last targets that are kept hits, and their fanout
        hops = self.fanouts[:-1] if self.first_hop else self.fanouts
        with self._lock:
            for hop, fanout in enumerate(hops):
                layer = num_layers - 1 - hop
                below = layer - 1  # the layer whose outputs this hop's new nodes provide
                test = prune.get(below) if below >= 0 else None
                block, nodes, n_comp, n_hit = self._hop(targets, fanout, mix_key(key, hop), test, kept)
                blocks[layer] = block
                kept = (0, None)
                if test is not None and test.keep is not None:  # (kept) hits stay computed, from fewer neighbours
                    n_comp, kept = n_comp + n_hit, (n_hit, test.keep)
                if below >= 0:
                    layer_nodes[below], num_computed[below], num_partial[below] = nodes, n_comp, kept[0]
                else:
                    input_nodes = nodes
                targets = nodes[:n_comp]
        if self.first_hop:  # layer 0 computes its targets from their own rows, no block
            input_nodes = layer_nodes[0][: num_computed[0]]
        return SampledBatch(seeds, layer_nodes, input_nodes, blocks, num_computed, num_partial)  # type: ignore[arg-type]

    def full_block(self, targets: np.ndarray) -> tuple[Block, np.ndarray]:
        """One hop with every neighbour (exact inference): the block and its source ids."""
        with self._lock:
            block, nodes, _, _ = self._hop(np.ascontiguousarray(targets, dtype=np.int64), -1, 0, None)
        return block, nodes

    def rows_block(self, targets: np.ndarray, col_map: np.ndarray, num_cols: int) -> Block:
        """Every neighbour of ``targets`` as a ``len(targets) × num_cols`` block whose columns are
        ``col_map[neighbour]`` (rows of an input matrix that holds all of them): exact inference
        without copying the sources. Here the targets are *not* the first sources."""
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        gcn = self.norm == "gcn"
        ptr, cols, val, diag = _full_rows(self.rowptr, self.col, targets, col_map, self.deg, gcn)
        return Block.from_arrays(ptr, cols, val, diag if gcn else None, num_cols)

    def closed_neighbourhood(self, nodes: np.ndarray) -> np.ndarray:
        """Sorted ids of ``nodes`` and all their neighbours (the receptive field of one layer)."""
        with self._lock:
            return _closed_neighbourhood(self.rowptr, self.col, np.ascontiguousarray(nodes, dtype=np.int64),
                                         np.zeros(self.graph.num_nodes, np.bool_))

    def _hop(self, targets: np.ndarray, fanout: int, key: int, test: PruneTest | None,
             kept: tuple[int, int | None] = (0, None)):
        """One hop: ``(block, sources, m + new misses, new hits)`` (with ``test.keep_share < 1``, the
        new hits kept: they come first among the hits). The last ``kept[0]`` targets
        are kept hits: they draw ``min(kept[1], fanout)`` neighbours (``fanout`` -1: ``kept[1]``)."""
        p, keep = kept
        if p:
            m = len(targets) - p
            k = keep if fanout < 0 else min(keep, fanout)
            ptr = _row_counts(self.rowptr, targets[:m], fanout)
            ptr = np.concatenate([ptr, ptr[-1] + _row_counts(self.rowptr, targets[m:], k)[1:]])
        else:
            ptr = _row_counts(self.rowptr, targets, fanout)
        nbr = _sample_rows(self.rowptr, self.col, targets, ptr, np.uint64(key))
        if test is None:
            args = (self._no_slot, self._no_iter, 0, 0, False)
        else:
            args = (test.node_slot, test.slot_iter, int(test.now), int(test.staleness), True)
        nodes, col_local, n_miss, n_hit = _relabel(targets, nbr, self._local, *args)
        if test is not None and test.keep is not None and test.keep_share < 1.0 and n_hit:
            n_hit = self._kept_first(nodes, col_local, len(targets) + int(n_miss), mix_key(key, 0xC0), test.keep_share)
        val, diag = _block_values(ptr, targets, nodes, col_local, self.deg, self.norm == "gcn")
        m = len(targets)
        block = Block.from_arrays(ptr, col_local, val, diag if self.norm == "gcn" else None, len(nodes))
        return block, nodes, m + int(n_miss), int(n_hit)

    @staticmethod
    def _kept_first(nodes: np.ndarray, col_local: np.ndarray, base: int, key: int, share: float) -> int:
        """Reorder the hits ``nodes[base:]`` (in place, relabelling ``col_local``) as [kept ; pruned],
        each kept with probability ``share`` (:func:`_keep_draws`); returns how many are kept."""
        keep = _keep_draws(nodes[base:], np.uint64(key), share)
        order = np.concatenate([np.flatnonzero(keep), np.flatnonzero(~keep)])
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        nodes[base:] = nodes[base:][order]
        hit = col_local >= base
        col_local[hit] = base + inv[col_local[hit] - base]
        return int(keep.sum())
