"""The history engine's side of the :class:`~approxgnn.nn.propagation.Propagation` interface.

* :class:`BlockPropagation` runs a model on a sampled mini-batch: layer ``l`` aggregates over its
  block (``m_l`` targets × ``n_l`` sources); :meth:`~BlockPropagation.hidden` appends the cached
  rows of layer ``l``'s hits to the ``m_l`` computed rows (the sampler ordered the next block's
  sources exactly so) and retains the gradient of the computed rows for admission.
* :class:`LayerwisePropagation` runs *one* layer of an unmodified model for exact, layer-wise
  inference (how PyG/DGL/GAS infer on large graphs): the layers below are run on a one-row dummy,
  the hidden hook below swaps in the real input, and the hook of the wanted layer stops the
  forward pass by raising :class:`LayerOutput` with that layer's output.
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

    def __init__(self, layer: int, op: SparseOperator, x_in: Tensor, target_rows: Tensor | None = None) -> None:
        self.layer, self.x_in, self.rows = layer, x_in, target_rows
        self.op, self.diag = (op, None) if target_rows is None else (SparseOperator(op.matrix), op.diag)

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
