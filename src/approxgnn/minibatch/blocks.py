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

Source weights (``weights[l] = w``, ``[n_l]``, e.g. a staleness-aware down-weighting of served rows):
layer ``l`` aggregates ``y_t = (Σ_j a_tj w_j x_j) · (Σ_j a_tj) / (Σ_j a_tj w_j)`` (sums over the
block's row ``t``, its diagonal included), a weighted mean whose total weight per row is the
unweighted one's (rows with ``Σ a w = 0`` are left as they are).
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
                 mix: Callable[[Tensor, Tensor], Tensor] | None = None, aggregate: bool = False,
                 weights: dict[int, Tensor] | None = None) -> None:
        self.ops, self.served, self.record = ops, served or {}, set(record)
        self.partial, self.mix, self.aggregate = partial or {}, mix, aggregate
        self.weights = weights or {}
        self.recorded: dict[int, Tensor] = {}

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        op = self.ops[layer]
        if x.size(0) != op.shape[1]:
            raise ValueError(f"layer {layer}: input has {x.size(0)} rows, its block has {op.shape[1]} sources")
        w = self.weights.get(layer)
        y = spmm(op, x) if w is None else self._weighted(op, x, w.to(x))
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

    @staticmethod
    def _weighted(op: SparseOperator, x: Tensor, w: Tensor) -> Tensor:
        """The module docstring's weighted aggregation of ``x [n, d]`` with source weights ``w [n]``."""
        with torch.no_grad():  # the weights are constants: only x carries a gradient
            sums = spmm(op, torch.stack([torch.ones_like(w), w], 1))
            scale = torch.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1].clamp_min(1e-30), torch.ones_like(w[:1]))
        return spmm(op, x * w[:, None]) * scale[:, None]

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
        hit = hit.to(h.dtype)
        if p:  # the kept hits are the first p served rows; the others were pruned
            m = h.size(0) - p
            return torch.cat([h[:m], self.mix(h[m:], hit[:p]), hit[p:]], 0)
        return torch.cat([h, hit], 0)
