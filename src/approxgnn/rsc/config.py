"""RSC configuration (spec: docs/rsc.md)."""
from __future__ import annotations

from dataclasses import dataclass

ALLOCATIONS = ("delta", "delta_per_flop", "uniform")
SELECTIONS = ("topk", "poisson", "importance")
# Named settings (``--rsc-preset``); explicit flags override them. ``paper`` is the published
# configuration (Liu et al., ICML 2023): deterministic top-k at C = 0.1, greedy argmin Δ.
PRESETS: dict[str, dict[str, object]] = {
    "paper": {"budget": 0.1, "selection": "topk", "allocation": "delta", "cache_interval": 10, "tune_interval": 10,
              "switch_time": 0.8, "step": 0.02, "ema": 0.5},
}


@dataclass
class RSCConfig:
    """Knobs of randomized sparse computation.

    * ``budget`` C ∈ (0, 1]: fraction of backward-SpMM FLOPs kept, ``C·nnz(Â_off)·Σ_l d_l``
      (``d_l`` the real SpMM width of layer ``l``).
    * ``cache_interval`` R: iterations a sampled index set and its transposed slice are reused.
    * ``tune_interval``: epochs between greedy re-allocations; ``warmup``: exact epochs that
      gather statistics before the first allocation.
    * ``switch_time`` ∈ [0, 1]: fraction of epochs run approximately before going exact.
    * ``allocation``: ``delta`` (official argmin Δ), ``delta_per_flop`` (Δ per FLOP saved) or
      ``uniform`` (the same FLOPs fraction C in every layer); ``selection``: ``poisson`` (cost-optimal
      unbiased sampling, a deterministic top part plus a rescaled sampled rest), ``topk`` (the
      paper's biased rule) or ``importance`` (with replacement, an ablation).
    * ``step``: greedy shrink step; ``ema``: weight of the newest statistics.
    * ``val_guard`` (beyond the paper): while approximating, go exact from the next epoch when the
      validation metric has not improved for ``val_patience`` epochs (a stall) or falls more than
      ``val_tolerance`` below the best seen so far (a drop).
    * ``min_layer_flops`` (beyond the paper): a layer whose backward product ``nnz(Â_off)·d_l``
      is below this many multiply-adds stays exact, outside the budget: scoring, sorting and
      slicing its rows would cost more than sampling saves (0: every layer is budgeted).

    The defaults (C = 0.3, Poisson selection) are chosen by measurement (``benchmarks/RESULTS.md``):
    the paper's top-k at C = 0.1 (``from_preset("paper")``) lost 3-4 pp on graphs where accuracy
    can move, and on a CPU C = 0.3 costs about the same time as C = 0.1, because the backward SpMM
    is then a small part of the step either way.

    Every value is checked here, at construction, so a bad one fails before any data is loaded.
    """

    budget: float = 0.3
    cache_interval: int = 10
    tune_interval: int = 10
    switch_time: float = 0.8
    allocation: str = "delta_per_flop"
    selection: str = "poisson"
    step: float = 0.02
    warmup: int = 2
    ema: float = 0.5
    val_guard: bool = False
    val_tolerance: float = 0.02
    val_patience: int = 10
    min_layer_flops: int = 0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> "RSCConfig":
        """The settings of preset ``name`` (:data:`PRESETS`), with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown rsc preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})  # type: ignore[arg-type]

    def validate(self) -> None:
        for name in ("budget", "switch_time", "step", "ema", "val_tolerance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"rsc {name} must be a number, got {v!r}")
        for name in ("cache_interval", "tune_interval", "warmup", "val_patience", "min_layer_flops"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"rsc {name} must be an integer, got {v!r}")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"rsc budget must be in (0, 1], got {self.budget}")
        if not 0.0 <= self.switch_time <= 1.0:
            raise ValueError(f"rsc switch_time must be in [0, 1], got {self.switch_time}")
        for name in ("cache_interval", "tune_interval", "val_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"rsc {name} must be >= 1, got {getattr(self, name)}")
        if self.min_layer_flops < 0:
            raise ValueError(f"rsc min_layer_flops must be >= 0, got {self.min_layer_flops}")
        if self.warmup < 0:
            raise ValueError(f"rsc warmup must be >= 0, got {self.warmup}")
        if not 0.0 < self.step < 1.0:
            raise ValueError(f"rsc step must be in (0, 1), got {self.step}")
        if not 0.0 < self.ema <= 1.0:
            raise ValueError(f"rsc ema must be in (0, 1], got {self.ema}")
        if self.val_tolerance < 0:
            raise ValueError(f"rsc val_tolerance must be >= 0, got {self.val_tolerance}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"rsc allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"rsc selection must be one of {SELECTIONS}, got {self.selection!r}")
