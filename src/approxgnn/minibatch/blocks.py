"""A model on one sampled mini-batch: the blocks' side of the
:class:`~approxgnn.nn.propagation.Propagation` interface.

:class:`BlockPropagation`: layer ``l`` aggregates over its block (``m_l`` targets × ``n_l``
sources); :meth:`~BlockPropagation.hidden` appends the rows served for layer ``l``'s hits to the
``m_l`` computed rows (the sampler ordered the next block's sources exactly so) and, for the
layers asked to ``record``, retains the gradient of the computed rows (a history's admission
criterion ``‖∂L/∂h_v‖``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..nn.propagation import Propagation
from ..ops import SparseOperator, spmm


class BlockPropagation(Propagation):
    """Propagation over the per-layer blocks of one sampled batch.

    ``ops[l]``: layer ``l``'s block (``m_l × n_l``); ``hits[l]``: ``[k_l, d]`` cached rows that
    follow layer ``l``'s computed rows in layer ``l+1``'s sources; ``record``: cached layers
    whose computed output is kept (``recorded[l]``, gradient retained) for admission.
    """

    def __init__(self, ops: list[SparseOperator], hits: dict[int, Tensor] | None = None,
                 record: tuple[int, ...] = ()) -> None:
        self.ops, self.hits, self.record = ops, hits or {}, set(record)
        self.recorded: dict[int, Tensor] = {}

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        op = self.ops[layer]
        if x.size(0) != op.shape[1]:
            raise ValueError(f"layer {layer}: input has {x.size(0)} rows, its block has {op.shape[1]} sources")
        return spmm(op, x)

    def targets(self, x: Tensor, layer: int) -> Tensor:
        return x[: self.ops[layer].shape[0]]

    def hidden(self, h: Tensor, layer: int) -> Tensor:
        if layer in self.record and h.requires_grad:
            h.retain_grad()  # ‖∂L/∂h_v‖ is the admission criterion; it costs nothing extra
            self.recorded[layer] = h
        hit = self.hits.get(layer)
        if hit is None or hit.size(0) == 0:
            return h
        return torch.cat([h, hit.to(h.dtype)], 0)
