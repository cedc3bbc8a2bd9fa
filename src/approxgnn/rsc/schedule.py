"""When RSC approximates, re-tunes its budget, and goes back to exact.

Per epoch ``e`` of ``E``:

* ``e < warmup``: **warm-up** — exact backward, statistics gathered for the first allocation;
* ``warmup ≤ e < ⌊switch_time·E⌋``: **approx** — sampled backward; the budget is re-allocated
  every ``tune_interval`` epochs;
* afterwards: **exact** — no sampling, no tuning (recovers generalisation, RSC §switching).

Optional validation guard (beyond the paper): while approximating, go exact from the next epoch
when the validation metric has not improved for ``val_patience`` epochs (stall) or falls more than
``val_tolerance`` below the best seen so far (drop).
"""
from __future__ import annotations

import math
from typing import Any

from ..nn.engine import switch_epoch
from .config import RSCConfig

WARMUP, APPROX, EXACT = "warmup", "approx", "exact"


class Schedule:
    """Epoch-level decisions; holds only counters, so it is cheap to checkpoint."""

    def __init__(self, cfg: RSCConfig, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.cfg = cfg
        self.epochs = epochs
        self.switch_epoch = switch_epoch(cfg.switch_time, epochs)
        self.guard_epoch: int | None = None  # first exact epoch chosen by the validation guard
        self.last_tune: int | None = None
        self.best_val = -math.inf
        self.since_best = 0

    def phase(self, epoch: int) -> str:
        if epoch >= self.switch_epoch or (self.guard_epoch is not None and epoch >= self.guard_epoch):
            return EXACT
        if epoch < self.cfg.warmup:
            return WARMUP
        return APPROX

    def tune_due(self, epoch: int) -> bool:
        """Re-allocate at the first approximate epoch, then every ``tune_interval`` epochs."""
        return self.last_tune is None or epoch - self.last_tune >= self.cfg.tune_interval

    def tuned(self, epoch: int) -> None:
        self.last_tune = epoch

    def observe(self, epoch: int, val: float) -> bool:
        """Feed the epoch's validation metric; True when the guard just switched to exact."""
        approximating = self.phase(epoch) == APPROX
        if math.isnan(val):
            return False
        if val > self.best_val:
            self.best_val, self.since_best = val, 0
        else:
            self.since_best += 1
        if not (self.cfg.val_guard and approximating and self.guard_epoch is None):
            return False
        stalled = self.since_best >= self.cfg.val_patience
        dropped = val < self.best_val - self.cfg.val_tolerance
        if stalled or dropped:
            self.guard_epoch = epoch + 1
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"guard_epoch": -1 if self.guard_epoch is None else self.guard_epoch,
                "last_tune": -1 if self.last_tune is None else self.last_tune,
                "best_val": self.best_val, "since_best": self.since_best}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.guard_epoch = None if s["guard_epoch"] < 0 else int(s["guard_epoch"])
        self.last_tune = None if s["last_tune"] < 0 else int(s["last_tune"])
        self.best_val = float(s["best_val"])
        self.since_best = int(s["since_best"])
