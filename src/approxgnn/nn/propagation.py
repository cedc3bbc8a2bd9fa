"""The one interface between models and engines.

A model never touches a sparse matrix. At layer ``l`` it calls ``prop(x, l)`` for the
aggregation ``Â_l @ x``, ``prop.targets(x, l)`` for the rows that layer ``l`` produces (all rows
in full-batch training, the first ``m_l`` in a sampled block), and ``prop.hidden(h, l)`` on the
output of every hidden layer. Engines implement this class:

* exact full batch (:class:`ExactPropagation`),
* RSC's sampled backward (``approxgnn.rsc``),
* sampled blocks with a historical cache (``approxgnn.history``),

so models do not know which engine runs them. This class holds only what models call; the hooks
trainers drive (schedule, figures, state) are the separate :class:`~.engine.Engine` protocol.
"""
from __future__ import annotations

from torch import Tensor

from ..ops import SparseOperator, spmm


class Propagation:
    """What a model calls. Defaults: every row is a target, hidden outputs pass unchanged."""

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        raise NotImplementedError

    def targets(self, x: Tensor, layer: int) -> Tensor:
        """Rows of ``x`` that layer ``layer`` writes (its self/residual terms use these)."""
        return x

    def hidden(self, h: Tensor, layer: int) -> Tensor:
        """Called on the output of hidden layer ``layer``; returns the next layer's input."""
        return h


class ExactPropagation(Propagation):
    """``Â @ x`` exactly, the same operator at every layer."""

    def __init__(self, op: SparseOperator) -> None:
        self.op = op

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        return spmm(self.op, x)
