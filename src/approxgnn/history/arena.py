"""Sizing the shared cache arena so that rows *and* metadata fit the ``--cache-mb`` byte budget.

The feature cache and the history cache share one float32 arena (``cache.py``); each also owns
metadata arrays whose size depends on how many rows the arena can hold. For an arena of ``A``
floats, feature width ``F`` and embedding rows of ``d`` floats (the width, or half of it for float16
entries: :meth:`HistoryCache.row_floats_for`)::

    total(A) = 4·A + CachedFeatureStore.metadata_bytes_for(N, min(N, ⌊A/F⌋))
                   + HistoryCache.metadata_bytes_for(N, L, ⌊A/d⌋, staleness)     (history policies)

``total`` never decreases with ``A``, so the largest ``A`` with ``total(A) ≤ budget`` is found by
bisection (:func:`~approxgnn.minibatch.feature_cache.fit_arena`). Roughly
``A ≈ (budget − fixed) / (1 + per-row metadata / row bytes)``, where ``fixed`` is the per-node
slot maps (4 bytes per node and map while ids fit in int32).
"""
from __future__ import annotations

from ..minibatch.feature_cache import feature_cache_bytes, fit_arena
from .cache import HistoryCache


def embedding_rows(arena: int, row: int, share: float | None) -> int:
    """Embedding rows an arena of ``arena`` floats may hold: ``⌊share · arena / row⌋``
    (``share=None``: all of it, ``⌊arena / row⌋``)."""
    return arena // row if share is None else int(share * arena) // row


def cache_bytes(arena: int, num_nodes: int, feature_dim: int, row: int | None = None, num_layers: int = 0,
                staleness: int | None = None, share: float | None = None) -> int:
    """``total(arena)`` of the module docstring: arena bytes plus every metadata byte."""
    total = feature_cache_bytes(arena, num_nodes, feature_dim)
    if row is not None:
        total += HistoryCache.metadata_bytes_for(num_nodes, num_layers, embedding_rows(arena, row, share),
                                                 staleness)
    return total


def arena_floats(budget_bytes: int, num_nodes: int, feature_dim: int, row: int | None = None,
                 num_layers: int = 0, staleness: int | None = None, share: float | None = None) -> int:
    """The largest arena (in floats) whose rows and metadata fit ``budget_bytes``.

    ``row`` (an embedding row's floats)/``num_layers``/``staleness`` describe the history cache
    (``row=None``: feature cache only). Raises ``ValueError`` naming ``--cache-mb`` and the minimum
    when the budget cannot hold the metadata and one row. ``share``: the part of the arena embeddings may claim
    (:func:`embedding_rows`; the slots' metadata follows it).
    """
    smallest = row if row is not None else feature_dim  # one row of the cache's own kind
    if row is not None and share is not None and share < 1.0:
        smallest = max(smallest, feature_dim)  # the feature part must hold a row too
    return fit_arena(budget_bytes,
                     lambda a: cache_bytes(a, num_nodes, feature_dim, row, num_layers, staleness, share),
                     smallest, num_nodes)
