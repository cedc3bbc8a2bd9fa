"""Exact layer-wise inference over full neighbourhoods, as PyG/DGL/GAS infer on large graphs; and
:func:`sampled_inference`, PyG ``NeighborLoader``'s estimate, for graphs where even that is too slow.

Layer ``l``'s output is computed, in chunks of ``chunk_size`` targets, for every node of the
evaluated nodes' receptive field (``R_{L-1} = nodes``, ``R_{l-1} = R_l ∪ N(R_l)``), from layer
``l−1``'s outputs over full neighbourhoods, each node once. No history cache is read.

:class:`LayerwisePropagation` runs *one* layer of an unmodified model: the layers below run on a
one-row dummy, the hidden hook below swaps in the real input, and the hook of the wanted layer
stops the forward pass by raising :class:`LayerOutput` with that layer's output.

**Bounded memory**: with ``stream`` the feature table is read chunk by chunk through the store
(each chunk's full-neighbourhood sources, never the whole table, not even as a memory map); with
``spill_dir`` every layer but the last is written to a float32 ``.npy`` in a fresh temporary directory under
``spill_dir`` as its chunks complete, then read back by row (:class:`~.disk_store.DiskFeatureStore`)
for the layer above; the directory is removed when inference ends, also on an error. Memory is
then one chunk's blocks and rows, whatever ``N`` is. The sums are the same sums over the same
rows, so the logits equal the in-memory ones (to float rounding of a different summation grouping
at most; tests/test_inference_bounded.py).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._hash import mix_key
from ..nn.propagation import Propagation
from ..ops import SparseOperator, spmm
from ..datasets.layout_write import create_npy
from .blocks import BlockPropagation
from .disk_store import DiskFeatureStore
from .loader import BatchLoader, Prefetcher
from .sampler import NeighborSampler
from .stores import ArrayFeatureStore, FeatureStore


class LayerOutput(Exception):
    """Carries the output of the layer :class:`LayerwisePropagation` was asked for."""

    def __init__(self, h: Tensor) -> None:
        super().__init__("layer output")
        self.h = h


class LayerwisePropagation(Propagation):
    """Evaluate layer ``layer`` only, on a full-neighbourhood block ``op`` over input rows ``x_in``.

    Call the model on ``x_in`` when ``layer == 0``, else on any one-row input of the model's input
    width; catch :class:`LayerOutput` for hidden layers (the last layer's output is the model's
    return value). ``target_rows``: where the targets sit in ``x_in`` (default: the first ``m``
    rows, as in a relabelled block); the diagonal term then reads those rows.
    """

    def __init__(self, layer: int, op: SparseOperator | None, x_in: Any, target_rows: Tensor | None = None) -> None:
        # op None: layer 0 with its aggregation precomputed (x_in a FirstHop), nothing to multiply.
        self.layer, self.x_in, self.rows = layer, x_in, target_rows
        self.op, self.diag = (op, None) if target_rows is None or op is None else (SparseOperator(op.matrix), op.diag)

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        if layer < self.layer:
            return x[:1]  # a layer below: run on the dummy row, result unused
        out = spmm(self.op, x)
        if self.diag is not None:
            out = out + self.diag * x[self.rows]
        return out

    def targets(self, x: Tensor, layer: int) -> Tensor:
        if layer < self.layer:
            return x[:1]
        return x[: self.op.shape[0]] if self.rows is None else x[self.rows]

    def hidden(self, h: Tensor, layer: int) -> Tensor:
        if layer == self.layer - 1:
            return self.x_in  # the real input of the wanted layer
        if layer == self.layer:
            raise LayerOutput(h)
        return h


@torch.no_grad()
def layerwise_inference(model: torch.nn.Module, sampler: NeighborSampler, store: ArrayFeatureStore,
                        nodes: np.ndarray, *, features: FeatureStore | None = None, chunk_size: int = 65536,
                        device: torch.device = torch.device("cpu"), progress: bool = False,
                        part: tuple[int, int] = (0, 1), gather: Callable[[Tensor, int], Tensor] | None = None,
                        first_hop: Callable[[Tensor], Any] | None = None,
                        stream: bool = False, spill_dir: str | Path | None = None) -> Tensor:
    """Exact logits ``[len(nodes), C]`` of ``model`` (module docstring), in eval mode.

    Sharded over ``W`` processes with ``part = (r, W)``: each computes, per layer, the ``r``-th of
    ``W`` contiguous slices of that layer's targets (``np.array_split``), and ``gather(rows, n)``
    returns the ``[n, d]`` concatenation of every process's slice in rank order (e.g. an
    ``all_gather``), so that every process holds the whole layer for the next one. An empty
    slice is passed as a ``[0, 0]`` tensor (its width unknown here).

    A model that aggregates before its linear maps (SAGE, ``norm == "mean"``) reads the whole input
    matrix (``store.full()``) through blocks with mapped columns; one that transforms first (GCN)
    gets each chunk's sources read through ``features`` (default ``store``; e.g. a cache over it),
    so that it transforms only those.

    ``first_hop``: layer 0's aggregation is precomputed and ``store`` holds the joined rows (own
    features and table, :mod:`approxgnn.precompute`); ``first_hop(rows)`` turns read rows into the
    model's layer-0 input (a :class:`~approxgnn.nn.FirstHop`). Layer 0 then reads its targets' rows
    only, with no block: that is exact already.

    ``stream``: read layer 0's rows through ``features`` chunk by chunk, never ``store.full()``;
    ``spill_dir``: write hidden layers to files under it (module docstring; one process only).
    """
    if spill_dir is None:
        return _inference(model, sampler, store, nodes, features, chunk_size, device, progress, part, gather,
                          first_hop, stream, None)
    if part[1] != 1:
        raise ValueError("inference in bounded memory (spill_dir) runs in one process; a sharded evaluation "
                         "gathers every layer in memory")
    Path(spill_dir).mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="approxgnn-eval-", dir=spill_dir)
    try:
        return _inference(model, sampler, store, nodes, features, chunk_size, device, progress, part, gather,
                          first_hop, stream, Path(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _inference(model, sampler, store, nodes, features, chunk_size, device, progress, part, gather, first_hop,
               stream: bool, spill: Path | None) -> Tensor:
    model.eval()
    features = store if features is None else features
    n = sampler.graph.num_nodes
    needed = [np.asarray(nodes, dtype=np.int64)]
    for _ in range(sampler.num_layers - 1):
        needed.insert(0, sampler.closed_neighbourhood(needed[0]))
    mapped = model.norm == "mean"
    dummy = torch.zeros(1, store.dim, device=device)
    if first_hop is not None:
        dummy = first_hop(dummy)  # the layers below run on one row of the model's real input kind
    rank, world = part
    slices = [np.array_split(np.arange(len(t)), world)[rank] for t in needed]
    bar = tqdm(total=sum(-(-len(s) // chunk_size) for s in slices), desc="eval", disable=not progress,
               leave=False, dynamic_ncols=True)
    h: Tensor | DiskFeatureStore | None = None  # outputs of the layer below; row pos[v] holds node v
    pos = np.arange(n)  # layer 0 reads the features: row v is node v
    spilled: DiskFeatureStore | None = None  # the layer below, when it was written to a file
    for layer, targets in enumerate(needed):
        # Layer 0 reads the feature store in place on the CPU; on an accelerator it gathers each
        # chunk's rows instead of copying every feature over. Streamed or spilled: a layer reads its rows.
        by_rows = mapped and (spill is None if layer > 0 else device.type == "cpu" and not stream
                              and first_hop is None)
        if by_rows and layer == 0:
            h = store.full()
        mine = targets[slices[layer]]
        last = layer == len(needed) - 1
        out: Tensor | _LayerFile | None = None
        for s in range(0, len(mine), chunk_size):
            chunk = mine[s : s + chunk_size]
            if layer == 0 and first_hop is not None:
                x_in = first_hop(features.read(chunk).to(device))
                prop = LayerwisePropagation(0, None, x_in)
            elif by_rows:
                x_in = h
                op = sampler.rows_block(chunk, pos, len(h)).operator(device)
                prop = LayerwisePropagation(layer, op, x_in, torch.from_numpy(pos[chunk]).to(device))
            else:
                block, src = sampler.full_block(chunk)
                x_in = features.read(src).to(device) if layer == 0 else _rows(h, pos[src], device)
                prop = LayerwisePropagation(layer, block.operator(device), x_in)
            o = _run_layer(model, x_in if layer == 0 else dummy, prop)
            if out is None:
                out = (torch.empty(len(mine), o.size(1), device=device) if spill is None or last
                       else _LayerFile(spill / f"layer{layer}.npy", len(mine), o.size(1)))
            out[s : s + o.size(0)] = o
            bar.update()
        if spilled is not None:  # the layer below is consumed
            spilled.close()
            spilled.path.unlink()
            spilled = None
        if isinstance(out, _LayerFile):
            out = spilled = out.reader()
        h = out if gather is None else gather(
            out if out is not None else torch.empty(0, 0, device=device), len(targets))
        pos = np.full(n, -1, np.int64)
        pos[targets] = np.arange(len(targets))
    bar.close()
    return h


def _run_layer(model: torch.nn.Module, x: Tensor, prop: LayerwisePropagation) -> Tensor:
    try:
        return model(x, prop)
    except LayerOutput as stop:
        return stop.h


def _rows(h: Tensor | DiskFeatureStore, idx: np.ndarray, device: torch.device) -> Tensor:
    """Rows ``idx`` of the layer below: indexed in memory, or read from its file."""
    if isinstance(h, DiskFeatureStore):
        return h.read(idx).to(device)
    return h[torch.from_numpy(idx).to(device)]


class _LayerFile:
    """One layer's output ``[n, d]`` written chunk by chunk to a float32 ``.npy`` (rows page-aligned),
    then read back by row (:meth:`reader`)."""

    def __init__(self, path: Path, n: int, d: int) -> None:
        self.path = path
        create_npy(path, (n, d), "float32")
        self.rows = np.load(path, mmap_mode="r+")

    def __setitem__(self, rows: slice, value: Tensor) -> None:
        self.rows[rows] = value.detach().cpu().numpy()

    def reader(self) -> DiskFeatureStore:
        self.rows.flush()
        del self.rows  # written pages go to the file; the next layer reads it without the page cache
        return DiskFeatureStore(self.path)


@torch.no_grad()
def sampled_inference(model: torch.nn.Module, sampler: NeighborSampler, features: FeatureStore, nodes: np.ndarray,
                      *, batch_size: int, key: int, device: torch.device = torch.device("cpu"),
                      first_hop: Callable[[Tensor], Any] | None = None, progress: bool = False,
                      prefetch: bool = True, part: tuple[int, int] = (0, 1),
                      gather: Callable[[Tensor, int], Tensor] | None = None) -> Tensor:
    """Logits ``[len(nodes), C]`` of ``model`` (eval mode) on *sampled* neighbourhoods.

    What PyG's ``NeighborLoader`` gives on a graph too large for :func:`layerwise_inference`:
    ``batch_size`` targets at a time, each batch's computation graph drawn by ``sampler`` (its
    fanouts; ``-1`` everywhere makes it exact), rows read through ``features``, the next batch
    loaded while this one computes. Batch ``i`` is drawn with ``mix_key(key, i)``, so every call
    with the same ``nodes`` sees the same neighbourhoods: successive evaluations differ only by
    the weights. ``first_hop`` as in :func:`layerwise_inference`. Sharded with ``part = (r, W)``:
    this process takes the ``r``-th of ``W`` contiguous slices of ``nodes`` and ``gather(rows, n)``
    returns every slice's logits in rank order.
    """
    model.eval()
    mine = np.array_split(np.asarray(nodes, dtype=np.int64), part[1])[part[0]]
    loader = BatchLoader(sampler, features, None, device)
    chunks = [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]
    outs = []
    with Prefetcher(prefetch) as pf, tqdm(total=len(chunks), desc="evaluate (sampled)", disable=not progress,
                                          leave=False, dynamic_ncols=True) as bar:
        nxt = pf.submit(loader.load, chunks[0], mix_key(key, 0), 0) if chunks else None
        for i in range(len(chunks)):
            batch = nxt.result()
            nxt = pf.submit(loader.load, chunks[i + 1], mix_key(key, i + 1), 0) if i + 1 < len(chunks) else None
            x = first_hop(batch.x) if first_hop is not None else batch.x
            outs.append(model(x, BlockPropagation(batch.ops)))
            bar.update()
    out = torch.cat(outs) if outs else torch.empty(0, 0, device=device)
    return out if gather is None else gather(out, len(nodes))
