"""The one protocol between trainers and approximation engines.

A trainer drives its engine through these hooks and nothing else: the schedule (:meth:`Engine.
on_epoch_start`, :meth:`Engine.on_epoch_end`), figures for progress bars and ``result.json``
(:meth:`Engine.stats`) and checkpoint state (:meth:`Engine.state_dict`). Models never see them:
they talk to a :class:`~.propagation.Propagation`. An engine that *is* the model's operator (RSC's
``SampledPropagation``) implements both; one that feeds batches (the history engine) only this.

The base class is the exact engine: no schedule, no figures, no state.
"""
from __future__ import annotations

import math
from typing import Any


def switch_epoch(switch_time: float, epochs: int) -> int:
    """``⌊switch_time · epochs⌋``: the first exact epoch of an engine that approximates the first
    ``switch_time`` ∈ [0, 1] of the run (``epochs`` when it never switches)."""
    return int(math.floor(switch_time * epochs + 1e-9))


class Engine:
    """Trainer-facing hooks of an approximation engine (defaults: do nothing, hold nothing)."""

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called before epoch ``epoch`` of ``num_epochs`` trains (e.g. RSC's switch to exact)."""

    def on_epoch_end(self, epoch: int, val_metric: float) -> None:
        """Validation feedback after each epoch (e.g. RSC's validation-guarded switch)."""

    def stats(self) -> dict[str, Any]:
        """Engine figures for the progress bar and ``result.json``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-exactly; carries a ``version`` key."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")
