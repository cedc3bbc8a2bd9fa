"""RSC as a propagation operator: exact forward, sampled backward, per-layer caches and budgets.

:class:`SampledPropagation` plugs into the models exactly like
:class:`~approxgnn.nn.propagation.ExactPropagation`. Each budgeted layer owns a
:class:`LayerSampler` (its allocation, EMA statistics, cached slice, output buffer, private RNG and
counters), so nothing is shared between layers, or between two models in one process.

Per backward call of layer ``l`` in the approximate phase:

* cache older than ``R`` iterations (or none): score rows ``‖Â_i‖·‖G_i‖``, sort, update the EMA
  statistics, select rows within the layer's allocation, build the transposed slice (a *resample*);
* otherwise reuse the cached rows and slice (a *cache hit*);
* multiply into the layer's reused ``[N, d]`` buffer, initialised with the exact diagonal term.

The returned gradient lives in that buffer until the layer's next backward call. Autograd never
keeps it (leaf gradients are cloned because the buffer is still referenced), but a tensor hook
that stores the gradient must ``clone()`` it.
"""
from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import Tensor

from .. import csr_kernels
from ..graph import CSRGraph
from ..nn.engine import Engine
from ..nn.propagation import Propagation
from ..ops import SparseOperator, spmm
from ..state import check_version
from .budget import Allocation, LayerStats, allocate_budget
from .config import RSCConfig
from .profile import LayerProfile, RSCProfile
from .schedule import APPROX, EXACT, WARMUP, Schedule
from .spmm import SampledSlice, SampledSpMM, build_slice, cumulative_nnz, row_scores, sampled_backward, \
    select_importance, select_poisson, select_topk

_COUNTERS = ("resamples", "cache_hits", "approx_steps", "exact_steps", "nnz_kept_sum")
_TIMERS = ("sample_time_s", "spmm_time_s")


class LayerSampler:
    """Sampled-backward state of one layer (width ``d``); :meth:`backward` is called by autograd."""

    def __init__(self, layer: int, width: int, op: SparseOperator, adj: CSRGraph, degree: Tensor, row_norm: Tensor,
                 cfg: RSCConfig, seed: int) -> None:
        self.layer, self.width = layer, width
        self.op, self.adj, self.degree, self.row_norm, self.cfg = op, adj, degree, row_norm, cfg
        self.mode = EXACT
        self.alloc: Allocation | None = None
        self.stats: LayerStats | None = None
        self.slice: SampledSlice | None = None
        self.age = 0
        self.counters = {k: 0 for k in _COUNTERS}
        self.timers = {k: 0.0 for k in _TIMERS}
        self.generator = torch.Generator(device=adj.col.device)
        self.generator.manual_seed(seed)
        self._out: Tensor | None = None

    # -- autograd entry --------------------------------------------------------------------------
    def backward(self, g: Tensor) -> Tensor:
        """``∂L/∂X`` for upstream gradient ``g [N, d]``: sampled in APPROX mode, else exact."""
        if self.mode == APPROX and self.alloc is not None:
            return self._approx(g)
        t0 = time.perf_counter()
        out = self.op.backward(g)
        self.timers["spmm_time_s"] += time.perf_counter() - t0
        self.counters["exact_steps"] += 1
        if self.mode == WARMUP:
            t0 = time.perf_counter()
            sorted_scores, order = self._score(g)
            self._observe(sorted_scores, cumulative_nnz(order, self.degree), out)
            self.timers["sample_time_s"] += time.perf_counter() - t0
        return out

    def _approx(self, g: Tensor) -> Tensor:
        t0 = time.perf_counter()
        resample = self.slice is None or self.age >= self.cfg.cache_interval
        if resample:
            sorted_scores, order = self._score(g)
            cum = cumulative_nnz(order, self.degree)
            self.slice = self._select(sorted_scores, order, cum)
            self.age = 0
            self.counters["resamples"] += 1
        else:
            self.counters["cache_hits"] += 1
        t1 = time.perf_counter()
        out = sampled_backward(self.slice, g, self.op.diag, self._buffer(g))
        t2 = time.perf_counter()
        if resample:  # statistics only at resamples: the sort is already paid for there
            self._observe(sorted_scores, cum, out)
        self.age += 1
        self.counters["approx_steps"] += 1
        self.counters["nnz_kept_sum"] += self.slice.t.nnz
        self.timers["sample_time_s"] += (t1 - t0) + (time.perf_counter() - t2)
        self.timers["spmm_time_s"] += t2 - t1
        return out

    # -- pieces ----------------------------------------------------------------------------------
    def _score(self, g: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sort(row_scores(self.row_norm, g), descending=True)

    def _select(self, sorted_scores: Tensor, order: Tensor, cum: Tensor) -> SampledSlice:
        a = self.alloc
        assert a is not None
        if self.cfg.selection in ("poisson", "importance"):
            scores = torch.empty_like(sorted_scores).scatter_(0, order, sorted_scores)
            select = select_poisson if self.cfg.selection == "poisson" else select_importance
            rows, scale = select(scores, self.degree, a.max_nnz, self.generator)
            return build_slice(self.adj, rows, scale)
        return build_slice(self.adj, select_topk(sorted_scores, order, self.degree, a.max_nnz, cum=cum))

    def _observe(self, sorted_scores: Tensor, cum: Tensor, out: Tensor) -> None:
        fnorm = float(torch.linalg.vector_norm(out))
        if self.stats is None:
            self.stats = LayerStats(sorted_scores.float().clone(), cum, fnorm, self.width)
        else:
            self.stats.update(sorted_scores, cum, fnorm, self.cfg.ema)

    def _buffer(self, g: Tensor) -> Tensor:
        # A fresh [N, d] tensor costs page faults on every call (~60 ms at 500k×128 on CPU, more
        # than the sampled product itself), so each layer keeps one.
        o = self._out
        if o is None or o.shape != g.shape or o.dtype != g.dtype or o.device != g.device:
            o = self._out = torch.empty_like(g, memory_format=torch.contiguous_format)
        return o

    def set_allocation(self, alloc: Allocation) -> None:
        if self.alloc != alloc:
            self.slice = None  # the cached sample may exceed the new allowance
        self.alloc = alloc

    def release(self) -> None:
        """Drop the cache and buffer (after the switch to exact)."""
        self.slice, self._out = None, None

    # -- reporting and checkpoints ---------------------------------------------------------------
    def profile(self) -> LayerProfile:
        c, n, a, s = self.counters, self.adj.nnz, self.alloc, self.slice
        steps = c["approx_steps"]
        return LayerProfile(
            width=self.width, mode=self.mode, ratio=None if a is None else a.ratio,
            max_nnz=None if a is None else a.max_nnz, rows_kept=None if s is None else s.rows,
            nnz_kept=None if s is None else s.t.nnz,
            nnz_kept_frac_mean=(c["nnz_kept_sum"] / steps / n) if steps and n else None,
            **{k: v for k, v in c.items() if k != "nnz_kept_sum"}, **self.timers,
            kept_rows=None if s is None else s.index.clone())

    def state_dict(self) -> dict[str, Any]:
        a = self.alloc
        return {
            "alloc": None if a is None else {"ratio": a.ratio, "rows": a.rows, "max_nnz": a.max_nnz,
                                             "planned_nnz": a.planned_nnz},
            "stats": None if self.stats is None else self.stats.state_dict(),
            "index": None if self.slice is None else self.slice.index.cpu(),
            "scale": None if self.slice is None or self.slice.scale is None else self.slice.scale.cpu(),
            "age": self.age,
            "counters": dict(self.counters),
            "timers": dict(self.timers),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        dev = self.adj.col.device
        a = s["alloc"]
        self.alloc = None if a is None else Allocation(float(a["ratio"]), int(a["rows"]), int(a["max_nnz"]),
                                                       int(a.get("planned_nnz", a["max_nnz"])))
        self.stats = None if s["stats"] is None else LayerStats.from_state(s["stats"], dev)
        self.slice = None
        if s["index"] is not None:  # rebuild the cached slice exactly as it was
            scale = None if s["scale"] is None else s["scale"].to(dev)
            self.slice = build_slice(self.adj, s["index"].to(dev), scale)
        self.age = int(s["age"])
        self.counters.update({k: int(v) for k, v in s["counters"].items()})
        self.timers.update({k: float(v) for k, v in s["timers"].items()})
        self.generator.set_state(s["generator"])


def _ratio(p: LayerProfile, n: int) -> str:
    """Fraction of ``n`` rows kept by the current sample (else the allocated ratio; '-' before any)."""
    if p.rows_kept is not None and n:
        return f"{p.rows_kept / n:.2f}"
    return "-" if p.ratio is None else f"{p.ratio:.2f}"


class SampledPropagation(Propagation, Engine):
    """RSC's training-time operator: ``Â @ x`` exactly, ``Âᵀ G`` sampled under a FLOPs budget.

    It is both what the model calls (:class:`Propagation`) and what the trainer drives
    (:class:`Engine`: the schedule's epoch hooks, :meth:`stats`, :meth:`state_dict`).
    :attr:`samplers` maps each budgeted layer to its :class:`LayerSampler`; :meth:`profile` is the
    public, typed view of what they do (benchmarks read it, :meth:`stats` is built from it), and
    :meth:`backward` runs one layer's backward product outside autograd.

    Args:
        op: the exact operator (``Â_off`` CSR + diagonal); its forward is reused as is.
        row_norm: ``‖Â_off[i,:]‖₂`` per row ``[N]`` (for mean aggregation ``1/sqrt(deg_i)``).
        widths: ``{layer: SpMM width}`` of the layers whose SpMM has a backward
            (``model.spmm_widths()``); other layers run exactly.
        cfg: :class:`RSCConfig`.
        epochs: planned epochs (for ``switch_time``).
        seed: seed of the per-layer generators (importance sampling); default ``torch.initial_seed()``.
    """

    def __init__(self, op: SparseOperator, row_norm: Tensor, widths: dict[int, int], cfg: RSCConfig, *,
                 epochs: int, seed: int | None = None) -> None:
        cfg.validate()
        if op.shape[0] != op.shape[1]:
            raise ValueError(f"RSC needs a square full-graph operator, got shape {op.shape}")
        self.op, self.cfg = op, cfg
        self.widths: dict[int, int] = {}
        self.adj = op.off.validate()
        self.nnz = self.adj.nnz
        self._degree = self.adj.degree()
        self._row_norm = row_norm.to(self.adj.device, op.dtype).contiguous()
        if self._row_norm.numel() != self.adj.num_nodes:
            raise ValueError(f"row_norm has {self._row_norm.numel()} entries for {self.adj.num_nodes} rows")
        self._seed = torch.initial_seed() if seed is None else seed
        self.samplers: dict[int, LayerSampler] = {}  # budgeted layer -> its sampled-backward state
        self.small: dict[int, int] = {}  # layers too small to pay (cfg.min_layer_flops): always exact
        self.tune_time_s = 0.0
        self.schedule = Schedule(cfg, epochs)
        self.phase = EXACT
        self.tunes = 0
        for l, d in sorted(widths.items()):
            self.add_layer(l, d)
        if self.adj.device.type == "cpu":
            csr_kernels.warm_up()  # JIT / cache load happens here, not inside a timed epoch

    def add_layer(self, layer: int, width: int) -> None:
        """Budget layer ``layer`` (SpMM width ``width``), in the current phase; a no-op if it is known.

        For callers that learn the layers as they run (the PyG adapter meets them in the first
        training step): a layer joining while approximating first gathers statistics, exactly.
        """
        known = self.samplers[layer].width if layer in self.samplers else self.small.get(layer)
        if known is not None:
            if known != width:
                raise ValueError(f"layer {layer}: SpMM width changed from {known} to {width}")
            return
        if width < 1:
            raise ValueError(f"layer {layer}: SpMM width must be >= 1, got {width}")
        if self.nnz * width < self.cfg.min_layer_flops:
            self.small[layer] = width  # exact, no statistics: sampling it would cost more than it saves
            return
        self.widths[layer] = width
        seed = (self._seed + 1_000_003 * (layer + 1)) % 2**63
        self.samplers[layer] = LayerSampler(layer, width, self.op, self.adj, self._degree, self._row_norm, self.cfg, seed)
        self.samplers = dict(sorted(self.samplers.items()))
        self._set_mode(self.samplers[layer], self.phase)

    def remove_layer(self, layer: int) -> None:
        """Stop budgeting layer ``layer`` (its product is no longer computed: e.g. its aggregation
        was precomputed); the next re-allocation shares the budget among the others."""
        self.samplers.pop(layer, None)
        self.widths.pop(layer, None)

    # -- the model-facing interface ----------------------------------------------------------------
    def __call__(self, x: Tensor, layer: int) -> Tensor:
        sampler = self.samplers.get(layer)
        if sampler is None or self.cfg.budget >= 1.0 or not (torch.is_grad_enabled() and x.requires_grad):
            return spmm(self.op, x)
        return SampledSpMM.apply(x, self.op, sampler)

    def backward(self, layer: int, g: Tensor) -> Tensor:
        """``∂L/∂X`` of layer ``layer``'s product for the upstream gradient ``g [N, d]``, exactly as
        autograd gets it in a training step (sampled, from the cached sample, or exact, by the
        layer's mode; counters and timers advance). For operator-level benchmarks and tests. The
        result may live in the layer's reused buffer: ``clone()`` it to keep it past the next call."""
        sampler = self.samplers.get(layer)
        if sampler is None or self.cfg.budget >= 1.0:
            return self.op.backward(g.contiguous())
        return sampler.backward(g.contiguous())

    # -- the trainer-facing interface (Engine) ------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if num_epochs != self.schedule.epochs:
            self._reschedule(num_epochs)
        # C = 1 keeps every FLOP: that is the exact backward, so take it (bit-identical training).
        phase = EXACT if self.cfg.budget >= 1.0 else self.schedule.phase(epoch)
        # A layer that joined late (the PyG adapter meets layers as they run) is allocated as soon
        # as its warm-up step has gathered statistics, not only at the next regular re-allocation.
        joined = any(s.alloc is None for s in self.samplers.values())
        if phase == APPROX and self.samplers and (self.schedule.tune_due(epoch) or joined):
            if all(s.stats is not None for s in self.samplers.values()):
                self.tune(epoch)
        for s in self.samplers.values():
            self._set_mode(s, phase)
        self.phase = phase

    @staticmethod
    def _set_mode(s: LayerSampler, phase: str) -> None:
        # No statistics yet (e.g. warmup=0, or a layer added late): one exact step gathers them.
        s.mode = WARMUP if phase == APPROX and s.alloc is None else phase
        if phase == EXACT:
            s.release()

    def on_epoch_end(self, epoch: int, val_metric: float) -> None:
        self.schedule.observe(epoch, val_metric)

    def tune(self, epoch: int) -> dict[int, Allocation]:
        """Re-allocate the budget from the current statistics (called by the schedule)."""
        t0 = time.perf_counter()
        stats = {l: s.stats for l, s in self.samplers.items() if s.stats is not None}
        allocs = allocate_budget(stats, self.nnz, self.cfg.budget, step=self.cfg.step, mode=self.cfg.allocation)
        self.tune_time_s += time.perf_counter() - t0
        for l, a in allocs.items():
            self.samplers[l].set_allocation(a)
        self.schedule.tuned(epoch)
        self.tunes += 1
        return allocs

    def _reschedule(self, epochs: int) -> None:
        state = self.schedule.state_dict()
        self.schedule = Schedule(self.cfg, epochs)
        self.schedule.load_state_dict(state)

    # -- reporting ---------------------------------------------------------------------------------
    def profile(self) -> RSCProfile:
        """The public profiling hook: phase, per-layer allocation, current sample, counters and
        timers as typed records (:class:`~approxgnn.rsc.profile.RSCProfile`). A snapshot: later
        steps do not change it."""
        sched = self.schedule
        return RSCProfile(phase=self.phase, by_layer={l: s.profile() for l, s in self.samplers.items()},
                          exact_small_layers=tuple(sorted(self.small)), nnz=self.nnz, tunes=self.tunes,
                          tune_time_s=self.tune_time_s, switch_epoch=sched.switch_epoch,
                          guard_epoch=sched.guard_epoch)

    def stats(self) -> dict[str, Any]:
        """Short scalars for the progress bar, per-layer details for ``result.json`` (from :meth:`profile`)."""
        p = self.profile()
        return {
            "rsc": p.phase,
            "ratios": ",".join(_ratio(lp, self.adj.num_nodes) for lp in p.by_layer.values()),
            "flops_kept": p.flops_kept,
            "sample_s": p.sum("sample_time_s"),
            "resamples": p.sum("resamples"),
            "cache_hits": p.sum("cache_hits"),
            "detail": {
                "budget": self.cfg.budget, "allocation": self.cfg.allocation, "selection": self.cfg.selection,
                "tunes": p.tunes, "tune_time_s": p.tune_time_s, "switch_epoch": p.switch_epoch,
                "guard_epoch": p.guard_epoch, "backward_spmm_s": p.sum("spmm_time_s"), "nnz_offdiag": p.nnz,
                "layers": {l: lp.record() for l, lp in p.by_layer.items()},
                "exact_small_layers": list(p.exact_small_layers),
            },
        }

    @property
    def layers(self) -> dict[int, LayerSampler]:
        """Deprecated name of :attr:`samplers` (``layers`` is a tuple of layer ids elsewhere)."""
        warnings.warn("SampledPropagation.layers is deprecated; use .samplers (the per-layer samplers) or "
                      ".profile().by_layer (what they are doing)", DeprecationWarning, stacklevel=2)
        return self.samplers

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "phase": self.phase, "tunes": self.tunes, "schedule": self.schedule.state_dict(),
                "layers": {l: s.state_dict() for l, s in self.samplers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, 1, "RSC")
        if set(state["layers"]) != set(self.samplers):
            raise ValueError(f"RSC state holds layers {sorted(state['layers'])}, model has {sorted(self.samplers)}")
        self.schedule.load_state_dict(state["schedule"])
        self.tunes = int(state["tunes"])
        self.phase = state["phase"]
        for l, s in state["layers"].items():
            self.samplers[l].load_state_dict(s)
