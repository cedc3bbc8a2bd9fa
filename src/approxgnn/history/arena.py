"""Sizing the shared cache arena so that rows *and* metadata fit the ``--cache-mb`` byte budget.

The feature cache and the history cache share one float32 arena (``cache.py``); each also owns
metadata arrays whose size depends on how many rows the arena can hold. For an arena of ``A``
floats, feature width ``F`` and embedding width ``d``::

    total(A) = 4·A + FeatureCache.metadata_bytes_for(N, min(N, ⌊A/F⌋))
                   + HistoryCache.metadata_bytes_for(N, L, ⌊A/d⌋, staleness)     (history policies)

``total`` never decreases with ``A``, so the largest ``A`` with ``total(A) ≤ budget`` is found by
bisection. Roughly ``A ≈ (budget − fixed) / (1 + per-row metadata / row bytes)``, where ``fixed``
is the per-node slot maps (4 bytes per node and map while ids fit in int32).
"""
from __future__ import annotations

from .cache import HistoryCache
from .features import FeatureCache


def cache_bytes(arena: int, num_nodes: int, feature_dim: int, hidden: int | None = None, num_layers: int = 0,
                staleness: int | None = None) -> int:
    """``total(arena)`` of the module docstring: arena bytes plus every metadata byte."""
    total = 4 * arena + FeatureCache.metadata_bytes_for(num_nodes, min(num_nodes, arena // feature_dim))
    if hidden is not None:
        total += HistoryCache.metadata_bytes_for(num_nodes, num_layers, arena // hidden, staleness)
    return total


def arena_floats(budget_bytes: int, num_nodes: int, feature_dim: int, hidden: int | None = None,
                 num_layers: int = 0, staleness: int | None = None) -> int:
    """The largest arena (in floats) whose rows and metadata fit ``budget_bytes``.

    ``hidden``/``num_layers``/``staleness`` describe the history cache (``hidden=None``: feature
    cache only). Raises ``ValueError`` naming ``--cache-mb`` and the minimum when the budget
    cannot hold the metadata and one row.
    """
    args = (num_nodes, feature_dim, hidden, num_layers, staleness)
    smallest = hidden if hidden is not None else feature_dim  # one row of the cache's own kind
    need = cache_bytes(smallest, *args)
    if budget_bytes < need:
        raise ValueError(f"--cache-mb {budget_bytes / 2**20:.4g} cannot hold the caches' metadata "
                         f"({num_nodes} nodes) and one row: it needs at least {need / 2**20:.4g} MiB "
                         f"({need} bytes)")
    lo, hi = smallest, budget_bytes // 4  # total(lo) ≤ budget; total(hi + 1) > budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cache_bytes(mid, *args) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo
