"""PyG-style mini-batches from approxgnn's numba sampler, pruned below history-cache hits.

:class:`NeighborBatchLoader` is to :class:`approxgnn.minibatch.NeighborSampler` what PyG's
``NeighborLoader`` is to its sampler: iterate it and get one ``torch_geometric.data.Data`` per
mini-batch. Sampling, feature reads, pruning and serving are :class:`~approxgnn.minibatch.BatchLoader`'s
(this module only lays the result out the way PyG does). A batch of ``B`` seeds over ``L`` hops:

* ``n_id [n]``: global node ids, grouped by hop: ``[seeds (B) | hop-1 new nodes | … | hop-L new]``;
  within a hop, the nodes that are expanded further come first, cache hits last.
  ``num_sampled_nodes = [B, n_1, …, n_L]`` (sums to ``n``), ``batch_size = B``: seeds first, so a
  model's ``out[:batch.batch_size]`` are the seeds' outputs.
* ``edge_index [2, E]``: local ids into ``n_id``, PyG's ``source_to_target`` flow
  (``edge_index[0]`` the neighbour ``j``, ``edge_index[1]`` the node ``i`` that aggregates it),
  grouped by hop: ``num_sampled_edges = [e_1, …, e_L]``; a hop-``k`` edge's target lies in the
  first ``k`` node groups and its source in the first ``k+1``.
* ``x [n, F]``: the input features of the nodes whose raw features layer 0 reads; zero rows for
  cache hits, whose sub-trees were never sampled and whose features are never read.
* ``y [n]`` when the loader has labels; ``sampled_batch``: the
  :class:`~approxgnn.minibatch.loader.Batch` (blocks, served hits) that
  :class:`~approxgnn.pyg.history.HistoryGNN` runs on.

Semantics: as in DGL's blocks (and our own trainer), hop ``k`` samples a fresh neighbourhood for
*every* node that layer ``L−k`` computes, so layer ``L−k`` must aggregate over hop ``k``'s edges
only. That is what :class:`~approxgnn.pyg.history.HistoryGNN` does. A plain PyG forward over the
whole ``edge_index`` aggregates the union of the hops instead; with full neighbourhoods
(``num_neighbors=[-1, …]``), no cache and a mean aggregation the two agree. With a cache attached,
a hit may reappear at a deeper hop, where it needs a lower layer's output of its own: it then gets
a second row in ``n_id`` (as in PyG's disjoint mode), so ``n_id`` can repeat a node only then.
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from ..graph import CSRGraph
from ..minibatch import ArrayFeatureStore, BatchLoader, FeatureStore, NeighborSampler, first_hop_store
from ..minibatch.loader import Batch, HistoryServer, epoch_seeds
from ..minibatch.sampler import SampledBatch, batch_key


class BatchHistory(HistoryServer, Protocol):
    """What the loader needs of an attached history (:class:`~approxgnn.pyg.history.HistoryGNN`):
    the :class:`~approxgnn.minibatch.loader.HistoryServer` methods, the iteration the next batch
    is trained at, and the start of an epoch (the cache's figures are per epoch)."""

    iteration: int

    def on_epoch_start(self, epoch: int) -> None: ...


def _as_numpy(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)


def _seed_ids(input_nodes: Any, num_nodes: int) -> np.ndarray:
    """``None`` (all nodes), a bool mask ``[N]`` or node ids → int64 ids."""
    if input_nodes is None:
        return np.arange(num_nodes, dtype=np.int64)
    ids = _as_numpy(input_nodes)
    if ids.dtype == np.bool_:
        if ids.shape != (num_nodes,):
            raise ValueError(f"input_nodes mask has shape {ids.shape}, expected ({num_nodes},)")
        ids = np.flatnonzero(ids)
    ids = ids.astype(np.int64).ravel()
    if ids.size == 0:
        raise ValueError("input_nodes selects no node")
    return ids


class NeighborBatchLoader:
    """Neighbour-sampled mini-batches of ``data`` as PyG ``Data`` objects (module docstring).

    ``data``: anything with ``x [N, F]``, ``edge_index [2, E]`` and optionally ``y [N]``
    (a PyG ``Data`` or an approxgnn ``Dataset``); the graph is symmetrised and deduplicated as
    everywhere in approxgnn. ``num_neighbors``: fanouts per hop, PyG's order (``-1``: all).
    ``input_nodes``: the seed nodes (a bool mask or ids; default all). ``norm``: the block
    normalisation of the model that will run on the batches, ``"mean"`` (GraphSAGE) or ``"gcn"``.
    Epoch ``e``'s batches are a permutation drawn from ``(seed, e)`` (``shuffle``) and batch
    ``b``'s sample from ``(seed, e, b)``, so a run is reproducible.

    ``precompute``: layer 0's aggregation is computed once over full neighbourhoods
    (:mod:`approxgnn.precompute`, for a model without input dropout, as PyG's ``BasicGNN``): the
    last hop is not sampled, and a batch's ``x`` holds the rows layer 0 reads -- GCN's ``[ÂX | Â1]``,
    GraphSAGE's ``[X | mean]`` -- which :class:`~approxgnn.pyg.history.HistoryGNN` understands.
    ``precompute_dtype``: ``"float32"`` or ``"float16"``, how the table is stored (``x`` is float32).
    """

    def __init__(self, data: Any, num_neighbors: Sequence[int], batch_size: int = 1024, input_nodes: Any = None, *,
                 shuffle: bool = True, seed: int = 0, norm: str = "mean",
                 device: torch.device | str = "cpu", precompute: bool = False,
                 precompute_dtype: str = "float32") -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        x = _as_numpy(data.x)
        self.graph = CSRGraph.from_edge_index(_as_numpy(data.edge_index), int(x.shape[0]))
        self.sampler = NeighborSampler(self.graph, list(num_neighbors), norm, first_hop=precompute)
        self.store: FeatureStore = ArrayFeatureStore(x)
        self.num_features, self.precompute = int(x.shape[1]), precompute
        if precompute:
            self.store, self.table = first_hop_store(self.graph, self.store, norm, dtype=precompute_dtype)
        self.features: FeatureStore = self.store
        self.device = torch.device(device)
        y = getattr(data, "y", None)
        self.y = None if y is None else torch.as_tensor(_as_numpy(y)).to(self.device)
        self.ids = _seed_ids(input_nodes, self.graph.num_nodes)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        self.history: BatchHistory | None = None
        self._loader = BatchLoader(self.sampler, self.features, None, self.device)

    def attach(self, history: BatchHistory | None, features: FeatureStore | None = None) -> None:
        """Prune and serve with ``history`` from now on, reading features through ``features``
        (e.g. a cache over :attr:`store` sharing the history's byte budget; default the store)."""
        self.history = history
        self.features = self.store if features is None else features
        self._loader = BatchLoader(self.sampler, self.features, history, self.device)

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            batches = epoch_seeds(self.ids, self.batch_size, self.seed, epoch)
        else:
            batches = [self.ids[i : i + self.batch_size] for i in range(0, len(self.ids), self.batch_size)]
        if self.history is not None:
            self.history.on_epoch_start(epoch)
        for b, seeds in enumerate(batches):
            # Loaded when the previous batch's update is done: the history as of this iteration.
            now = self.history.iteration if self.history is not None else 0
            yield to_pyg_batch(self._loader.load(seeds, batch_key(self.seed, epoch, b), now), self.y)


def pyg_layout(sample: SampledBatch) -> tuple[np.ndarray, np.ndarray, list[int], list[int], np.ndarray]:
    """The PyG layout of ``sample`` (module docstring): ``n_id``, ``edge_index [2, E]`` (local),
    ``num_sampled_nodes``, ``num_sampled_edges``, and the local ids of ``sample.input_nodes``.

    Walking down the hops, ``pos`` holds the local ids of layer ``l``'s rows (``layer_nodes[l]``);
    block ``l``'s sources are its first ``m_l`` rows (its targets) followed by hop-new nodes,
    which get the next free local ids. A precomputed first hop has no block 0: the walk stops at
    layer 0's rows, whose first ``len(input_nodes)`` are the input nodes.
    """
    L, B = sample.num_layers, len(sample.seeds)
    pos = np.arange(B, dtype=np.int64)
    groups, edges, n_nodes, n_edges, total = [sample.seeds], [np.empty((2, 0), np.int64)], [B], [], B
    for hop in range(1, L + 1):
        layer = L - hop
        block = sample.blocks[layer]
        if block is None:  # the first hop, precomputed
            break
        sources = sample.layer_nodes[layer - 1] if layer > 0 else sample.input_nodes
        m = block.num_targets
        new = sources[m:]
        src_pos = np.concatenate([pos[:m], total + np.arange(len(new), dtype=np.int64)])
        target = np.repeat(np.arange(m, dtype=np.int64), block.adj.degree().numpy())
        edges.append(np.stack([src_pos[block.adj.col.numpy()], pos[target]]))
        groups.append(new)
        n_nodes.append(len(new))
        n_edges.append(block.adj.nnz)
        total += len(new)
        pos = src_pos
    return np.concatenate(groups), np.concatenate(edges, axis=1), n_nodes, n_edges, pos[: len(sample.input_nodes)]


def to_pyg_batch(batch: Batch, y: Tensor | None = None) -> Any:
    """``batch`` as a PyG ``Data`` (module docstring); ``y``: labels of all nodes, or None."""
    from torch_geometric.data import Data  # optional dependency: imported on use

    n_id, edge_index, n_nodes, n_edges, input_pos = pyg_layout(batch.sample)
    device = batch.x.device
    x = batch.x.new_zeros(len(n_id), batch.x.size(1))
    x[torch.from_numpy(input_pos).to(device)] = batch.x
    n_id_t = torch.from_numpy(n_id).to(device)
    data = Data(x=x, edge_index=torch.from_numpy(edge_index).to(device), n_id=n_id_t)
    if y is not None:
        data.y = y[n_id_t.to(y.device)]
    data.batch_size = len(batch.sample.seeds)
    data.num_sampled_nodes = n_nodes
    data.num_sampled_edges = n_edges
    data.sampled_batch = batch
    return data
