"""The one interface between models and engines.

A model never touches a sparse matrix. At layer ``l`` it calls ``prop(x, l)`` for the
aggregation ``Â_l @ x``, ``prop.targets(x, l)`` for the rows that layer ``l`` produces (all rows
in full-batch training, the first ``m_l`` in a sampled block), and ``prop.hidden(h, l)`` on the
output of every hidden layer. Engines implement this class:

* exact full batch (:class:`ExactPropagation`),
* RSC's sampled backward (``approxgnn.rsc``),
* sampled blocks with a historical cache (``approxgnn.history``),

so models do not know which engine runs them. Trainers drive the engine's schedule through
:meth:`on_epoch_start` and read :meth:`stats` for progress bars and results.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..ops import SparseOperator, spmm


class Propagation:
    """Base class: identity hooks, no state. Subclasses implement :meth:`__call__`."""

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        raise NotImplementedError

    def targets(self, x: Tensor, layer: int) -> Tensor:
        """Rows of ``x`` that layer ``layer`` writes (its self/residual terms use these)."""
        return x

    def hidden(self, h: Tensor, layer: int) -> Tensor:
        """Called on the output of hidden layer ``layer``; returns the next layer's input."""
        return h

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Engine schedule hook (e.g. RSC's switch to exact)."""

    def on_epoch_end(self, epoch: int, val_metric: float) -> None:
        """Validation feedback after each epoch (e.g. RSC's validation-guarded switch)."""

    def stats(self) -> dict[str, Any]:
        """Engine figures for the progress bar and ``result.json``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class ExactPropagation(Propagation):
    """``Â @ x`` exactly, the same operator at every layer."""

    def __init__(self, op: SparseOperator) -> None:
        self.op = op

    def __call__(self, x: Tensor, layer: int) -> Tensor:
        return spmm(self.op, x)
