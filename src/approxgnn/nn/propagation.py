"""The one interface between models and engines.

A model never touches a sparse matrix. At layer ``l`` it calls ``prop(x, l)`` for the
aggregation ``Â_l @ x``, ``prop.targets(x, l)`` for the rows that layer ``l`` produces (all rows
in full-batch training, the first ``m_l`` in a sampled block), ``prop.pre_activation(h, l)`` on a
hidden layer's output before its normalisation and activation, and ``prop.hidden(h, l)`` after them. Engines implement this class:

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

    def pre_activation(self, h: Tensor, layer: int) -> Tensor:
        """Called on hidden layer ``layer``'s output before batch norm and activation; returns the
        rows to normalise and activate."""
        return h

    def hidden(self, h: Tensor, layer: int) -> Tensor:
        """Called on the output of hidden layer ``layer``; returns the next layer's input."""
        return h


class ExactPropagation(Propagation):
    """``Â @ x`` exactly, the same operator at every layer."""

    def __init__(self, op: SparseOperator) -> None:
        self.op = op

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        return spmm(self.op, x)
