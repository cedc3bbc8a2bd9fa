"""Forward-only refreshes of the history between training steps (REST, arXiv 2410.05416).

REST decouples the two passes of a historical-embedding method: besides the forward pass of every
training step, extra forward passes without a backward rewrite the history more often, so that a
served row was written by weights closer to the current ones. Here, after every ``every``-th step
(:meth:`HistoryRefresher.due`), for each cached layer ``l``:

1. take the ``rows`` oldest entries of layer ``l`` (by write iteration, then slot; stale entries
   not yet reused included, so a refresh can revive them);
2. sample their ``l + 1``-hop computation graph, unpruned (a sampler over the model's last
   ``l + 1`` fanouts, seeds = those nodes), and read its input rows through the run's feature store
   (the feature cache serves what it holds; the rest is counted as bytes read, as any batch's);
3. run the model in evaluation mode (no dropout, batch norm's running statistics; nothing is
   learned and no random number is drawn) under ``torch.no_grad()``, stopping at layer ``l``:
   its output (``cached_value="output"``) or its input neighbour mean (``"aggregate"``) for the
   seeds, ``[rows, d]``;
4. rewrite those entries in place at the current iteration (:meth:`HistoryCache.admit`: the
   nodes keep their own slots, so no other entry moves).

The refresh holds no state (it is a function of the iteration, the cache and the model), so a
resumed run repeats it exactly. Its time is part of the step's and its reads part of the epoch's.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..minibatch.blocks import BlockPropagation
from ..minibatch.sampler import NeighborSampler
from ..minibatch.stores import FeatureStore
from .engine import HistoryEngine


class _Reached(Exception):
    """Raised by :class:`_StopAt` with layer ``l``'s rows: the layers above are not needed."""

    def __init__(self, rows: Tensor) -> None:
        super().__init__()
        self.rows = rows


class _StopAt(BlockPropagation):
    """The blocks of an unpruned sample; raises :class:`_Reached` at layer ``layer``'s cached value."""

    def __init__(self, ops: list, layer: int, aggregate: bool) -> None:
        super().__init__(ops)
        self.layer, self.stop_at_aggregate = layer, aggregate

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        y = super().__call__(x, layer)
        if self.stop_at_aggregate and layer == self.layer:
            raise _Reached(y)
        return y

    def hidden(self, h: Tensor, layer: int) -> Tensor:
        if layer == self.layer:
            raise _Reached(h)
        return h


class HistoryRefresher:
    """Rewrites ``rows`` of the oldest entries of each cached layer of ``engine`` after every
    ``every``-th step (module docstring). ``sampler``: the run's (its graph, fanouts, norm and
    first-hop mode; a sampler of the last ``l + 1`` hops is built per cached layer ``l``)."""

    def __init__(self, engine: HistoryEngine, sampler: NeighborSampler, every: int, rows: int) -> None:
        if every < 1 or rows < 1:
            raise ValueError(f"refresh every {every} step(s), {rows} row(s): both must be >= 1")
        self.engine, self.every, self.rows = engine, every, rows
        hops = sampler.num_layers
        self.samplers = {l: NeighborSampler(sampler.graph, list(sampler.fanouts[hops - 1 - l:]), sampler.norm,
                                            first_hop=sampler.first_hop) for l in engine.cached_layers}
        self.rewritten = 0  # entries rewritten since the counter was last read

    def due(self, step: int) -> bool:
        """Whether a refresh follows step ``step`` (0-based): after steps ``every − 1, 2·every − 1, …``."""
        return (step + 1) % self.every == 0 and not self.engine.idle

    @torch.no_grad()
    def run(self, model: nn.Module, features: FeatureStore, make_input: Callable[[Tensor], Any], now: int, key: int,
            device: torch.device) -> int:
        """One refresh at iteration ``now`` with ``model`` (called as ``model(make_input(rows), prop)``);
        ``key`` draws the samples. Returns the entries rewritten."""
        was_training = model.training
        model.eval()
        done = 0
        try:
            for l in self.engine.cached_layers:
                nodes = self.engine.cache.oldest(l, self.rows)
                if len(nodes) == 0:
                    continue
                rows = self._layer_rows(model, features, make_input, l, nodes, key + l, device)
                done += self.engine.cache.admit(l, nodes, rows[: len(nodes)], now)
        finally:
            model.train(was_training)
        self.rewritten += done
        self.engine.counts["refreshed"] = self.engine.counts.get("refreshed", 0) + done  # this epoch's figure
        return done

    def _layer_rows(self, model: nn.Module, features: FeatureStore, make_input: Callable[[Tensor], Any], layer: int,
                    nodes: np.ndarray, key: int, device: torch.device) -> Tensor:
        sample = self.samplers[layer].sample(nodes, key)
        x = features.read(sample.input_nodes).to(device)
        ops = [None if b is None else b.operator(device) for b in sample.blocks]
        try:
            model(make_input(x), _StopAt(ops, layer, self.engine.cached_value == "aggregate"))
        except _Reached as r:
            return r.rows
        raise RuntimeError(f"the model never reached cached layer {layer}")
