"""What RSC is doing right now, as typed records: the public profiling hook.

:meth:`SampledPropagation.profile() <approxgnn.rsc.SampledPropagation.profile>` returns an
:class:`RSCProfile`; benchmarks and tests read it instead of the engine's attributes, and the
engine's ``stats()`` (progress bar, ``result.json``) is built from it, so both report the same
figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .schedule import APPROX


@dataclass(frozen=True)
class LayerProfile:
    """One budgeted layer (its SpMM has a backward of width ``width``).

    * ``mode``: ``"warmup"`` (exact, gathering statistics), ``"approx"`` (sampled) or ``"exact"``;
    * ``ratio`` / ``max_nnz``: the allocation (``None`` before the first one);
    * ``rows_kept`` / ``nnz_kept``: the current cached sample (``None`` when there is none);
      ``kept_rows``: its row ids (sorted int64 ``[rows_kept]``, a copy) or ``None``;
    * ``nnz_kept_frac_mean``: mean fraction of ``nnz(Â_off)`` kept over the approximate steps;
    * counters since construction (or the checkpoint): ``resamples`` (new samples drawn),
      ``cache_hits`` (steps reusing the cached sample), ``approx_steps``, ``exact_steps``;
    * timers: ``sample_time_s`` (scoring, selection, slicing, statistics), ``spmm_time_s``
      (backward products).
    """

    width: int
    mode: str
    ratio: float | None
    max_nnz: int | None
    rows_kept: int | None
    nnz_kept: int | None
    nnz_kept_frac_mean: float | None
    resamples: int
    cache_hits: int
    approx_steps: int
    exact_steps: int
    sample_time_s: float
    spmm_time_s: float
    kept_rows: Tensor | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, object]:
        """The JSON-friendly fields (``kept_rows`` left out), as ``result.json`` stores them."""
        return {k: v for k, v in self.__dict__.items() if k != "kept_rows"}


@dataclass(frozen=True)
class RSCProfile:
    """The whole engine: its ``phase`` (the schedule's, for the current epoch), the budgeted
    layers (``by_layer``: ``{layer: LayerProfile}``), the layers too small to budget (always exact),
    the off-diagonal non-zeros ``nnz``, and the re-allocations made (``tunes``, ``tune_time_s``)."""

    phase: str
    by_layer: dict[int, LayerProfile]
    exact_small_layers: tuple[int, ...]
    nnz: int
    tunes: int
    tune_time_s: float
    switch_epoch: int
    guard_epoch: int | None

    @property
    def approximating(self) -> bool:
        """Every budgeted layer samples its backward now (allocated, past its statistics step)."""
        return self.phase == APPROX and bool(self.by_layer) and all(p.mode == APPROX for p in self.by_layer.values())

    @property
    def flops_kept(self) -> float:
        """Fraction of the exact backward-SpMM multiply-adds the next step performs, ``Σ_l kept_l·d_l /
        Σ_l nnz·d_l``: an approximating layer keeps its sample's non-zeros (0 before it has one), the
        others all of them; 1.0 with no layer."""
        total = sum(self.nnz * p.width for p in self.by_layer.values())
        kept = sum(((p.nnz_kept or 0) if p.mode == APPROX else self.nnz) * p.width for p in self.by_layer.values())
        return kept / total if total else 1.0

    def sum(self, name: str) -> float:
        """A counter or timer of :class:`LayerProfile` summed over the layers."""
        return sum(getattr(p, name) for p in self.by_layer.values())
