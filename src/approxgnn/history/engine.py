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
cache denies the layers below its hits.

:meth:`HistoryEngine.build` assembles the pieces under one byte budget: the arena
(:mod:`.arena`), the feature cache over the given store (its front), the history cache (its back).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..minibatch.feature_cache import CachedFeatureStore
from ..minibatch.sampler import PruneTest, SampledBatch
from ..minibatch.stores import FeatureStore
from ..nn.engine import Engine, switch_epoch
from ..state import check_version
from .arena import arena_floats, embedding_rows
from .cache import HistoryCache
from .config import HistoryConfig
from .policies import HistoryPolicy, make_policy


class HistoryEngine(Engine):
    """Serves hits from ``cache`` and updates it after each step under ``policy``.

    ``policy``: a :class:`~.policies.HistoryPolicy`, or its name (then built with ``rate``,
    ``evict`` and the cache's staleness). ``features``: the cached feature store sharing the
    cache's arena, owned (and checkpointed) by the engine when given.
    """

    VERSION = 1

    def __init__(self, cache: HistoryCache, policy: str | HistoryPolicy = "refresh", rate: float = 0.9,
                 evict: bool = False, *, features: CachedFeatureStore | None = None, switch_time: float = 1.0) -> None:
        if isinstance(policy, str):
            policy = make_policy(policy, rate, cache.staleness, evict)
        self.cache, self.policy, self.features = cache, policy, features
        self.switch_time, self.exact = switch_time, False
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
        floats = arena_floats(budget_bytes, store.num_nodes, store.dim, hidden, len(layers), policy.max_age, share)
        arena = torch.empty(floats, dtype=torch.float32, device=device)
        features = CachedFeatureStore(store, order, arena)
        cache = HistoryCache(store.num_nodes, layers, hidden, arena, features, policy.max_age, weight=weight,
                             max_rows=embedding_rows(floats, hidden, share))
        return cls(cache, policy, features=features, switch_time=cfg.switch_time)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.cache.layers)

    def reset_counts(self) -> None:
        self.counts = {"served": 0, "nonseed": 0, "age_sum": 0, "candidates": 0, "admitted": 0, "evicted": 0,
                       "expired": 0}

    # ---- per batch -----------------------------------------------------------------------
    def prune_tests(self, now: int) -> dict[int, PruneTest]:
        """Per cached layer, the fresh-hit test the sampler prunes with at iteration ``now`` (none
        once exact)."""
        if self.exact:
            return {}
        return {l: self.cache.prune_test(l, now) for l in self.cache.layers}

    def serve(self, batch: SampledBatch, now: int, device: torch.device | None = None) -> dict[int, Tensor]:
        """Copies ``[k_l, d]`` of the cached rows of ``batch``'s hits, on ``device`` (taken now:
        later writes cannot alter them). They require grad when the policy evicts, which ranks
        hits by the gradient on their rows."""
        out = {}
        seeds = len(batch.seeds)
        for l in self.cache.layers:
            rows, ages = self.cache.read(l, batch.hits(l), now)
            out[l] = rows if device is None else rows.to(device)
            if self.policy.evicts:
                out[l].requires_grad_(True)
            self.counts["served"] += len(ages)
            self.counts["age_sum"] += int(ages.sum())
            self.counts["nonseed"] += len(batch.layer_nodes[l]) - seeds
        return out

    def update(self, batch: SampledBatch, recorded: dict[int, Tensor], hits: dict[int, Tensor], now: int) -> None:
        """Admission (and eviction) after the optimiser step; drops the retained gradients.

        ``recorded[l]``: layer ``l``'s computed output ``[m_l, d]`` with its gradient retained
        (seeds first); ``hits[l]``: the rows :meth:`serve` gave this batch.
        """
        seeds = len(batch.seeds)
        for l in self.cache.layers:
            h = recorded.get(l)
            m = batch.num_computed[l]
            if h is not None and m > seeds and not self.exact:
                self._admit(l, batch.layer_nodes[l][seeds:m], h, seeds, m, now)
            hit = hits.get(l)
            if self.policy.evicts and hit is not None and hit.grad is not None and hit.size(0):
                drop = self.policy.evict(hit.grad)
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
        order, candidates = self.policy.admit(rows, grad, lambda: self.cache.fresh(layer, nodes, now))
        self.counts["candidates"] += candidates
        expired = self.cache.expired
        self.counts["admitted"] += self.cache.admit(layer, nodes[order.numpy()], rows[order.to(rows.device)], now)
        self.counts["expired"] += self.cache.expired - expired

    # ---- Engine protocol -----------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.reset_counts()  # figures are per epoch
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
        expiries (entries rewritten or replaced after they had gone stale), the last three this epoch."""
        s = self.counts
        return {**self.rates(s), "occupancy": self.cache.occupancy(), "entries": self.cache.entries,
                "metadata_bytes": self.cache.metadata_bytes,
                "admitted": s["admitted"], "evicted": s["evicted"], "expired": s.get("expired", 0),
                "exact": self.exact}

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
