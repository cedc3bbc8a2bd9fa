"""A model on one sampled mini-batch: the blocks' side of the
:class:`~approxgnn.nn.propagation.Propagation` interface.

:class:`BlockPropagation`: layer ``l`` aggregates over its block (``m_l`` targets × ``n_l``
sources); :meth:`~BlockPropagation.hidden` appends the rows served for layer ``l``'s hits to the
``m_l`` computed rows (the sampler ordered the next block's sources exactly so) and, for the
layers asked to ``record``, retains the gradient of the computed rows (a history's admission
criterion ``‖∂L/∂h_v‖``).

Kept hits (``partial[l] = p``, :attr:`~.sampler.PruneTest.keep`): the last ``p`` of the ``m_l``
computed rows are hits computed from fewer neighbours; their served rows are combined with them
by ``mix(fresh, hist)`` (e.g. LMC's ``fresh + (1 − λ)(hist − fresh.detach())``). With
``aggregate``, what layer ``l`` serves is its *input aggregate*: the last ``p`` rows of
``Â_l x`` (drawn from no neighbour) are replaced by the served rows, and the layer's own linear
maps, normalisation and activation then run on them with the current weights.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..nn.propagation import Propagation
from ..ops import SparseOperator, spmm


class BlockPropagation(Propagation):
    """Propagation over the per-layer blocks of one sampled batch.

    ``ops[l]``: layer ``l``'s block (``m_l × n_l``); ``served[l]``: ``[k_l, d]`` cached rows that
    follow layer ``l``'s computed rows in layer ``l+1``'s sources; ``record``: cached layers
    whose computed output is kept (``recorded[l]``, gradient retained) for admission.
    """

    def __init__(self, ops: list[SparseOperator], served: dict[int, Tensor] | None = None,
                 record: tuple[int, ...] = (), partial: dict[int, int] | None = None,
                 mix: Callable[[Tensor, Tensor], Tensor] | None = None, aggregate: bool = False) -> None:
        self.ops, self.served, self.record = ops, served or {}, set(record)
        self.partial, self.mix, self.aggregate = partial or {}, mix, aggregate
        self.recorded: dict[int, Tensor] = {}

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        op = self.ops[layer]
        if x.size(0) != op.shape[1]:
            raise ValueError(f"layer {layer}: input has {x.size(0)} rows, its block has {op.shape[1]} sources")
        y = spmm(op, x)
        if not self.aggregate:
            return y
        p = self.partial.get(layer, 0)
        if layer in self.record:
            self.recorded[layer] = y
            if y.requires_grad:
                y.retain_grad()  # the admission criterion, on the aggregate this layer caches
        if not p:
            return y
        # The kept hits drew no neighbour: their rows of y are 0, the served aggregate replaces them.
        return torch.cat([y[: y.size(0) - p], self.served[layer].to(y.dtype)], 0)

    def targets(self, x: Tensor, layer: int) -> Tensor:
        return x[: self.ops[layer].shape[0]]

    def hidden(self, h: Tensor, layer: int) -> Tensor:
        if self.aggregate:
            return h  # hits were served at this layer's aggregation, not here
        if layer in self.record and h.requires_grad:
            h.retain_grad()  # ‖∂L/∂h_v‖ is the admission criterion; it costs nothing extra
            self.recorded[layer] = h
        hit = self.served.get(layer)
        if hit is None or hit.size(0) == 0:
            return h
        p = self.partial.get(layer, 0)
        if p:
            m = h.size(0) - p
            return torch.cat([h[:m], self.mix(h[m:], hit.to(h.dtype))], 0)
        return torch.cat([h, hit.to(h.dtype)], 0)
