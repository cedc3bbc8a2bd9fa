"""Exact layer-wise inference over full neighbourhoods, as PyG/DGL/GAS infer on large graphs.

Layer ``l``'s output is computed, in chunks of ``chunk_size`` targets, for every node of the
evaluated nodes' receptive field (``R_{L-1} = nodes``, ``R_{l-1} = R_l ∪ N(R_l)``), from layer
``l−1``'s outputs over full neighbourhoods, each node once. No history cache is read.

:class:`LayerwisePropagation` runs *one* layer of an unmodified model: the layers below run on a
one-row dummy, the hidden hook below swaps in the real input, and the hook of the wanted layer
stops the forward pass by raising :class:`LayerOutput` with that layer's output.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..nn.propagation import Propagation
from ..ops import SparseOperator, spmm
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
                        first_hop: Callable[[Tensor], Any] | None = None) -> Tensor:
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
    """
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
    h: Tensor | None = None  # outputs of the layer below; row pos[v] holds node v
    pos = np.arange(n)  # layer 0 reads the features: row v is node v
    for layer, targets in enumerate(needed):
        # Layer 0 reads the feature store in place on the CPU; on an accelerator it gathers each
        # chunk's rows instead of copying every feature over.
        by_rows = mapped and (layer > 0 or device.type == "cpu") and not (layer == 0 and first_hop is not None)
        if by_rows and layer == 0:
            h = store.full()
        mine = targets[slices[layer]]
        out: Tensor | None = None
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
                x_in = features.read(src).to(device) if layer == 0 else h[torch.from_numpy(pos[src]).to(device)]
                prop = LayerwisePropagation(layer, block.operator(device), x_in)
            o = _run_layer(model, x_in if layer == 0 else dummy, prop)
            if out is None:
                out = torch.empty(len(mine), o.size(1), device=device)
            out[s : s + o.size(0)] = o
            bar.update()
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
