"""The history engine: one object that builds, prunes, serves, updates and checkpoints the cache.

Per mini-batch, the trainer's loader asks :meth:`HistoryEngine.prune_tests` (the sampler skips
the sub-trees of fresh hits) and :meth:`HistoryEngine.serve` (copies of the hits' rows); after
``backward()`` and the optimiser step the trainer calls :meth:`HistoryEngine.update`, which admits
(and evicts) under the :mod:`policy <.policies>`. Served rows are constants for autograd (as in
GAS): no gradient flows into a hit's sub-tree. The trainer drives the rest through the
:class:`~approxgnn.nn.engine.Engine` protocol.

**Switch to exact** (``switch_time < 1``, as RSC's): from epoch ``⌊switch_time · E⌋`` on, the engine
prunes and serves nothing and admits nothing; the cache is cleared and the feature cache re-reads
rows into the whole budget. Training then ends on fresh inputs and full gradients, which a history
cache denies the layers below its hits. **Warm start** (``start_time > 0``): before epoch
``⌊start_time · E⌋`` the engine is idle the same way (nothing cached yet, so nothing to clear).

**What a hit holds** (``cached_value``, ``hit_fanout``; :meth:`HistoryEngine.propagation` builds the
batch's :class:`~approxgnn.minibatch.BlockPropagation`): a layer's output, pruning the hit's
sub-tree (GAS, ReFresh); the same output mixed with a recomputation from ``hit_fanout`` neighbours
(LMC); or the layer's input neighbour mean, so that the layer's weights, batch norm and activation
apply fresh to it. :attr:`HistoryEngine.oracle` (diagnostics, never a policy) computes every hit
in full and serves either its exact value without gradient (``"value"``) or its cached value with
the full gradient (``"gradient"``), splitting a cache's loss into value error and withheld gradient.

**Corrections for what a hit withholds** (issue 20; the oracles showed the loss is the gradient a
pruned hit denies the layers below it):

* ``control_variate`` ρ (VR-GCN, Chen et al. 2018): VR-GCN estimates ``Σ_u P_vu h_u`` as
  ``Σ_u P_vu h̄_u + (D/k) Σ_{u∈S} P_vu (h_u − h̄_u)``: the history ``h̄`` for every neighbour,
  corrected by a small recomputed sample. Our hits are the rows that have a history, so the
  sample is drawn per hit: each hit is recomputed with probability ρ (:attr:`PruneTest.keep_share`,
  a pure function of the batch key) and served as ``h = h̄ + (h_fresh − h̄)/ρ``, the others as
  ``h̄``. Per hit ``E[h] = h_fresh``: the layer above sees an unbiased estimate of the fresh rows,
  and the recomputed hits pass their gradient on (scaled ``1/ρ``, as their weight in the estimate).
* ``staleness_decay`` β (VISAGNN, arXiv 2511.12434, staleness-aware message passing): the layer
  above a cached layer weighs its sources ``w = exp(−β · age / staleness)`` (age: iterations
  since the served row was written; 1 for computed rows), renormalised per target
  (:class:`~approxgnn.minibatch.BlockPropagation`'s ``weights``): the older a served row, the
  less it counts and the more the computed (fresh, gradient-carrying) rows do.
* ``refresh_every`` (REST, arXiv 2410.05416): forward-only rewrites of the oldest entries between
  steps, by :class:`~.refresh.HistoryRefresher` (built by :func:`~.caches.build_caches`).

:meth:`HistoryEngine.build` assembles the pieces under one byte budget: the arena
(:mod:`.arena`), the feature cache over the given store (its front), the history cache (its back).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..minibatch.blocks import BlockPropagation
from ..minibatch.feature_cache import CachedFeatureStore
from ..minibatch.sampler import KEEP_ALL, PruneTest, SampledBatch
from ..minibatch.stores import FeatureStore
from ..nn.engine import Engine, switch_epoch
from ..ops import SparseOperator
from ..state import check_version
from .arena import arena_floats, embedding_rows
from .cache import HistoryCache
from .config import HistoryConfig
from .policies import HistoryPolicy, make_policy


def staleness_weight(ages: np.ndarray, decay: float, scale: int) -> Tensor:
    """``w = exp(−decay · age / scale)`` (float32 ``[k]``) for served rows of ``ages [k]``
    iterations: 1 at age 0, ``e^{−decay}`` at the staleness limit ``scale``."""
    a = torch.as_tensor(np.asarray(ages, dtype=np.float64))
    return torch.exp(-decay * a / float(scale)).float()


class HistoryEngine(Engine):
    """Serves hits from ``cache`` and updates it after each step under ``policy``.

    ``policy``: a :class:`~.policies.HistoryPolicy`, or its name (then built with ``rate``,
    ``evict`` and the cache's staleness); kept as :attr:`rules` (everywhere else a policy is
    its name). ``features``: the cached feature store sharing the
    cache's arena, owned (and checkpointed) by the engine when given.
    """

    VERSION = 1

    ORACLES = ("value", "gradient")

    def __init__(self, cache: HistoryCache, policy: str | HistoryPolicy = "refresh", rate: float = 0.9,
                 evict: bool = False, *, features: CachedFeatureStore | None = None, switch_time: float = 1.0,
                 start_time: float = 0.0, cached_value: str = "output", hit_fanout: int | None = None,
                 hit_mix: float = 0.5, control_variate: float | None = None, staleness_decay: float = 0.0,
                 decay_scale: int | None = None) -> None:
        if isinstance(policy, str):
            policy = make_policy(policy, rate, cache.staleness, evict)
        self.cache, self.rules, self.features = cache, policy, features
        self.switch_time, self.start_time, self.exact, self.warming = switch_time, start_time, False, start_time > 0
        self.cached_value, self.hit_fanout, self.hit_mix = cached_value, hit_fanout, hit_mix
        self.control_variate, self.staleness_decay = control_variate, staleness_decay
        # the age at which a served row weighs e^{-decay}: the staleness limit (GAS has none: 200)
        self.decay_scale = decay_scale or cache.staleness or 200
        self.oracle: str | None = None  # diagnostics only (module docstring); set before training
        self.reset_counts()

    @classmethod
    def build(cls, cfg: HistoryConfig, store: FeatureStore, order: np.ndarray, weight: np.ndarray,
              num_layers: int, hidden: int, budget_bytes: int, device: torch.device) -> "HistoryEngine":
        """Arena, feature cache (rows of ``order``) and history cache within ``budget_bytes``.

        ``weight [N]`` (float64, e.g. degrees, used in place) guards capacity: a uniform sampler
        reaches a node about in proportion to it.
        """
        layers = cfg.cached_layers if cfg.cached_layers is not None else [num_layers - 2]
        if num_layers < 2 or not layers:
            raise ValueError(f"policy {cfg.policy!r} caches hidden layers; a {num_layers}-layer model has none")
        layers = sorted(set(layers))
        policy = make_policy(cfg.policy, cfg.rate, cfg.staleness, cfg.evict)
        # The budget holds the caches' metadata too: the arena is what is left of it.
        share = cfg.resolved_embedding_share()
        share = None if share >= 1.0 else share  # 1.0: all of the arena, exactly as before the knob
        dtype = getattr(torch, cfg.entry_dtype)
        row = HistoryCache.row_floats_for(hidden, dtype)
        floats = arena_floats(budget_bytes, store.num_nodes, store.dim, row, len(layers), policy.staleness, share)
        arena = torch.empty(floats, dtype=torch.float32, device=device)
        features = CachedFeatureStore(store, order, arena)
        cache = HistoryCache(store.num_nodes, layers, hidden, arena, features, policy.staleness, weight=weight,
                             max_rows=embedding_rows(floats, row, share), dtype=dtype)
        # ``auto`` is resolved by whoever knows the model (TrainConfig, HistoryGNN); without one, output.
        cached_value = "output" if cfg.cached_value == "auto" else cfg.cached_value
        return cls(cache, policy, features=features, switch_time=cfg.switch_time, start_time=cfg.start_time,
                   cached_value=cached_value, hit_fanout=cfg.hit_fanout, hit_mix=cfg.hit_mix,
                   control_variate=cfg.control_variate, staleness_decay=cfg.staleness_decay,
                   decay_scale=cfg.staleness)

    @property
    def cached_layers(self) -> tuple[int, ...]:
        """The hidden layers whose outputs are cached (layer ids)."""
        return tuple(self.cache.layers)

    @property
    def layers(self) -> tuple[int, ...]:
        """Deprecated name of :attr:`cached_layers` (RSC's per-layer samplers are ``samplers``)."""
        warnings.warn("HistoryEngine.layers is deprecated; use .cached_layers", DeprecationWarning, stacklevel=2)
        return self.cached_layers

    def reset_counts(self) -> None:
        self.counts = {"served": 0, "nonseed": 0, "age_sum": 0, "candidates": 0, "admitted": 0, "evicted": 0,
                       "expired": 0, "recomputed": 0, "refreshed": 0}

    # ---- per batch -----------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Neither read nor written: warming up, or exact since the switch."""
        return self.exact or self.warming

    def keep(self) -> int | None:
        """The sampler's :attr:`PruneTest.keep` for hits: ``None`` prunes them; else the fanout they
        are still computed with (0 for a served aggregate; all for an oracle)."""
        if self.oracle is not None:
            if self.oracle not in self.ORACLES:
                raise ValueError(f"oracle must be one of {self.ORACLES} or None, got {self.oracle!r}")
            if self.cached_value != "output":
                raise ValueError("the oracles compare against cached outputs")
            return KEEP_ALL
        if self.cached_value == "aggregate":
            return 0
        if self.control_variate is not None and self.hit_fanout is None:
            return KEEP_ALL  # the recomputed share draws as many neighbours as a miss
        return self.hit_fanout

    def mix(self, fresh: Tensor, hist: Tensor) -> Tensor:
        """A kept hit's row from its recomputation ``fresh`` and its cached row ``hist`` ``[k, d]``:
        LMC's ``fresh + (1 − λ)(hist − fresh.detach())``, or with a control variate ρ
        ``hist + (fresh − hist)/ρ`` (module docstring)."""
        if self.oracle == "value":
            return fresh.detach()  # exact value, no gradient into the sub-tree
        if self.oracle is None and self.control_variate is not None:
            return hist + (fresh - hist) / self.control_variate
        lam = 0.0 if self.oracle == "gradient" else self.hit_mix  # gradient: the cached value, full gradient
        return fresh + (1.0 - lam) * (hist - fresh.detach())

    def prune_tests(self, now: int) -> dict[int, PruneTest]:
        """Per cached layer, the fresh-hit test the sampler prunes with at iteration ``now`` (none
        while idle)."""
        if self.idle:
            return {}
        keep = self.keep()
        share = self.control_variate if self.control_variate is not None and self.oracle is None else 1.0
        return {l: self.cache.prune_test(l, now)._replace(keep=keep, keep_share=share) for l in self.cache.layers}

    def propagation(self, batch: SampledBatch, ops: list[SparseOperator | None], served: dict[int, Tensor],
                    record: bool = True) -> BlockPropagation:
        """The propagation of ``batch``'s forward pass: the ``served`` rows joined as configured, the cached
        layers recorded for admission when ``record`` (training)."""
        partial = {l: batch.num_partial[l] for l in self.cache.layers}
        weights = {}
        if self.staleness_decay > 0 and self.oracle is None:
            for l in self.cache.layers:  # the layer above l aggregates l's rows: computed first, then hits
                ages = batch.hit_ages.get(l)
                if ages is not None and len(ages):
                    fresh = torch.ones(batch.num_computed[l] - batch.num_partial[l])
                    weights[l + 1] = torch.cat([fresh, staleness_weight(ages, self.staleness_decay, self.decay_scale)])
        return BlockPropagation(ops, served, self.cached_layers if record else (), partial, self.mix,
                                aggregate=self.cached_value == "aggregate" and self.oracle is None, weights=weights)

    def serve(self, batch: SampledBatch, now: int, device: torch.device | None = None) -> dict[int, Tensor]:
        """Copies ``[k_l, d]`` of the cached rows of ``batch``'s hits, on ``device`` (taken now:
        later writes cannot alter them). They require grad when the policy evicts, which ranks
        hits by the gradient on their rows."""
        out = {}
        seeds = len(batch.seeds)
        for l in self.cache.layers:
            rows, ages = self.cache.read(l, batch.hits(l), now)
            out[l] = rows if device is None else rows.to(device)
            batch.hit_ages[l] = ages
            if self.rules.evicts:
                out[l].requires_grad_(True)
            self.counts["served"] += len(ages)
            self.counts["recomputed"] += batch.num_partial[l]  # kept hits: computed too (LMC, control variate)
            self.counts["age_sum"] += int(ages.sum())
            self.counts["nonseed"] += len(batch.layer_nodes[l]) - seeds
        return out

    def update(self, batch: SampledBatch, recorded: dict[int, Tensor], served: dict[int, Tensor], now: int) -> None:
        """Admission (and eviction) after the optimiser step; drops the retained gradients.

        ``recorded[l]``: layer ``l``'s computed output ``[m_l, d]`` with its gradient retained
        (seeds first); ``served[l]``: the rows :meth:`serve` gave this batch (of ``batch.hits(l)``).
        """
        seeds = len(batch.seeds)
        for l in self.cache.layers:
            h = recorded.get(l)
            m = batch.num_computed[l] - batch.num_partial[l]  # kept hits are fresh entries already
            if h is not None and m > seeds and not self.idle:
                self._admit(l, batch.layer_nodes[l][seeds:m], h, seeds, m, now)
            hit = served.get(l)
            if self.rules.evicts and hit is not None and hit.grad is not None and hit.size(0):
                drop = self.rules.evict(hit.grad)
                self.counts["evicted"] += self.cache.evict(l, batch.hits(l)[drop])
            if h is not None:
                h.grad = None
            if hit is not None:
                hit.grad = None
        recorded.clear()

    def _admit(self, layer: int, nodes: np.ndarray, h: Tensor, lo: int, hi: int, now: int) -> None:
        """Admit rows ``lo:hi`` of ``h`` (the non-seed computed nodes ``nodes``) under the policy."""
        rows = h.detach()[lo:hi]
        grad = h.grad[lo:hi] if h.grad is not None else None
        order, candidates = self.rules.admit(rows, grad, lambda: self.cache.fresh(layer, nodes, now))
        self.counts["candidates"] += candidates
        expired = self.cache.expired
        self.counts["admitted"] += self.cache.admit(layer, nodes[order.numpy()], rows[order.to(rows.device)], now)
        self.counts["expired"] += self.cache.expired - expired

    # ---- Engine protocol -----------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.reset_counts()  # figures are per epoch
        self.warming = self.start_time > 0 and epoch < switch_epoch(self.start_time, num_epochs)
        # switch_time 1 never switches, whatever num_epochs is
        if not self.exact and self.switch_time < 1.0 and epoch >= switch_epoch(self.switch_time, num_epochs):
            self.go_exact()

    def go_exact(self) -> None:
        """Stop pruning, serving and admitting; give the whole budget back to feature rows (their
        re-reads count as bytes read)."""
        self.exact = True
        self.cache.clear()
        if self.features is not None:
            self.features.refill()

    def stats(self) -> dict[str, Any]:
        """Hit rate (hits over non-seed nodes at the cached layers), mean age of hits, occupancy,
        entries, the bytes of the cache's metadata (counted in its budget), admissions, evictions and
        expiries (entries rewritten or replaced after they had gone stale), hits also recomputed
        (``recomputed``: LMC's or the control variate's) and entries rewritten by forward-only
        refreshes (``refreshed``), the last five this epoch."""
        s = self.counts
        return {**self.rates(s), "occupancy": self.cache.occupancy(), "entries": self.cache.entries,
                "metadata_bytes": self.cache.metadata_bytes,
                "admitted": s["admitted"], "evicted": s["evicted"], "expired": s.get("expired", 0),
                "recomputed": s.get("recomputed", 0), "refreshed": s.get("refreshed", 0), "exact": self.exact}

    @staticmethod
    def rates(counts: dict[str, int]) -> dict[str, float]:
        """The hit rate ``served / nonseed`` (hits over the non-seed nodes at the cached layers) and
        the mean age of hits ``age_sum / served`` (iterations), 0 where nothing was counted, of
        :attr:`counts` -- or of counts summed over several engines (the ranks of one run)."""
        return {"hit_rate": counts["served"] / counts["nonseed"] if counts["nonseed"] else 0.0,
                "mean_age": counts["age_sum"] / counts["served"] if counts["served"] else 0.0}

    def state_dict(self) -> dict[str, Any]:
        state = {"version": self.VERSION, "cache": self.cache.state_dict(), "counts": dict(self.counts),
                 "exact": self.exact}
        if self.features is not None:
            state["features"] = self.features.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, self.VERSION, "history engine")
        self.cache.load_state_dict(state["cache"])
        self.counts = {**self.counts, **state["counts"]}  # "expired" is absent from older states
        self.exact = bool(state.get("exact", False))  # so is "exact": they never switched
        if self.features is not None:
            self.features.load_state_dict(state["features"])
