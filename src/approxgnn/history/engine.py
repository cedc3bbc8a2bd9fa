"""Cache policies around a :class:`~.cache.HistoryCache`: what to serve, what to admit, what to evict.

* ``refresh`` (ReFresh): entries older than ``staleness`` iterations are misses. After
  ``backward()`` and ``optimizer.step()``, the candidates of cached layer ``l`` are this batch's
  computed non-seed nodes without a fresh entry; with ``g_v = ‖∂L/∂h_v^(l)‖₂`` (the retained
  ``.grad``), those with ``g_v ≤ quantile_rate(g)`` are admitted, most stable first, with the
  value of this iteration's forward pass. With ``evict``, served hits whose gradient (taken on the
  cached rows) lies above their own ``rate`` quantile are dropped.
* ``gas`` (GNNAutoScale-style): no criteria — every computed non-seed embedding is pushed,
  entries never go stale, any present entry is served.

Served rows are constants for autograd (as in GAS): no gradient flows into a hit's sub-tree.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .cache import HistoryCache
from .sampler import PruneTest, SampledBatch

HISTORY_POLICIES = ("gas", "refresh")


def admission_order(grad_norm: Tensor, rate: float) -> Tensor:
    """Indices of the rows to admit: ``grad_norm ≤ quantile(grad_norm, rate)``, smallest first."""
    if grad_norm.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=grad_norm.device)
    thr = torch.quantile(grad_norm.double(), rate)
    idx = torch.nonzero(grad_norm.double() <= thr).flatten()
    return idx[torch.argsort(grad_norm[idx], stable=True)]


def eviction_mask(grad_norm: Tensor, rate: float) -> Tensor:
    """Rows whose ``grad_norm`` lies in the top ``1 − rate`` (strictly above the quantile)."""
    if grad_norm.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=grad_norm.device)
    return grad_norm.double() > torch.quantile(grad_norm.double(), rate)


class HistoryEngine:
    """Serves hits from ``cache`` and updates it after each step under ``policy``."""

    def __init__(self, cache: HistoryCache, policy: str = "refresh", rate: float = 0.9, evict: bool = False) -> None:
        if policy not in HISTORY_POLICIES:
            raise ValueError(f"history policy must be one of {HISTORY_POLICIES}, got {policy!r}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        self.cache, self.policy, self.rate = cache, policy, rate
        self.evict = evict and policy == "refresh"
        self.reset_stats()

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.cache.layers)

    def reset_stats(self) -> None:
        self.stats = {"served": 0, "nonseed": 0, "age_sum": 0, "candidates": 0, "admitted": 0, "evicted": 0}

    def prune_tests(self, now: int) -> dict[int, PruneTest]:
        """Per cached layer, the fresh-hit test the sampler prunes with at iteration ``now``."""
        return {l: self.cache.prune_test(l, now) for l in self.cache.layers}

    def serve(self, batch: SampledBatch, now: int) -> dict[int, Tensor]:
        """Copies of the cached rows of ``batch``'s hits (taken now: later writes cannot alter them)."""
        out = {}
        seeds = len(batch.seeds)
        for l in self.cache.layers:
            rows, ages = self.cache.read(l, batch.hits(l), now)
            out[l] = rows
            self.stats["served"] += len(ages)
            self.stats["age_sum"] += int(ages.sum())
            self.stats["nonseed"] += len(batch.layer_nodes[l]) - seeds
        return out

    def update(self, batch: SampledBatch, recorded: dict[int, Tensor], hits: dict[int, Tensor], now: int) -> None:
        """Admission (and eviction) after the optimizer step; drops the retained gradients."""
        seeds = len(batch.seeds)
        for l in self.cache.layers:
            h = recorded.get(l)
            m = batch.num_computed[l]
            if h is not None and m > seeds:
                self._admit(l, batch.layer_nodes[l][seeds:m], h, seeds, m, now)
            hit = hits.get(l)
            if self.evict and hit is not None and hit.grad is not None and hit.size(0):
                drop = eviction_mask(hit.grad.norm(dim=1), self.rate).cpu().numpy()
                self.stats["evicted"] += self.cache.evict(l, batch.hits(l)[drop])
            if h is not None:
                h.grad = None
            if hit is not None:
                hit.grad = None
        recorded.clear()

    def _admit(self, layer: int, nodes: np.ndarray, h: Tensor, lo: int, hi: int, now: int) -> None:
        """Admit rows ``lo:hi`` of ``h`` (the non-seed computed nodes ``nodes``) under the policy."""
        rows = h.detach()[lo:hi]
        if self.policy == "gas":  # push everything, overwriting older entries
            order = torch.arange(len(nodes))
        else:
            cand = torch.from_numpy(np.flatnonzero(~self.cache.fresh(layer, nodes, now)))
            g = h.grad[lo:hi] if h.grad is not None else torch.zeros_like(rows)
            norms = g[cand.to(g.device)].norm(dim=1)
            order = cand[admission_order(norms, self.rate).cpu()]
            self.stats["candidates"] += len(cand)
        self.stats["admitted"] += self.cache.admit(layer, nodes[order.numpy()], rows[order.to(rows.device)], now)

    def summary(self) -> dict[str, float]:
        """Hit rate (hits over non-seed nodes at the cached layers), mean age of hits, occupancy,
        and the bytes of the cache's metadata (counted in its budget)."""
        s = self.stats
        return {"hit_rate": s["served"] / s["nonseed"] if s["nonseed"] else 0.0,
                "mean_age": s["age_sum"] / s["served"] if s["served"] else 0.0,
                "occupancy": self.cache.occupancy(), "entries": self.cache.entries,
                "metadata_bytes": self.cache.metadata_bytes,
                "admitted": s["admitted"], "evicted": s["evicted"]}

    def state_dict(self) -> dict[str, Any]:
        return {"cache": self.cache.state_dict(), "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cache.load_state_dict(state["cache"])
        self.stats = dict(state["stats"])
