"""A feature cache that wraps any :class:`~.stores.FeatureStore` behind the same ``read(ids)``.

:class:`CachedFeatureStore` keeps the rows of the most valuable nodes (highest degree first) in a
fast buffer and forwards only the misses to its fallback store (GraphBolt's ``CPUCachedFeature``
over any ``Feature``). The buffer may be shared with another cache -- the history cache claims it
from the back -- so :meth:`CachedFeatureStore.truncate` invalidates rows *before* anyone
overwrites them.

Sizing: the buffer and the cache's metadata (slot map, order) together fit one byte budget. For a
buffer of ``A`` floats, feature width ``F`` and ``N`` nodes::

    total(A) = 4·A + metadata_bytes_for(N, min(N, ⌊A/F⌋))

:func:`fit_arena` finds the largest ``A`` with ``total(A) ≤ budget`` by bisection (``total``
never decreases with ``A``); the history cache adds its own metadata term to ``total``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..state import check_version
from .stores import FeatureStore, StoreFront, index_dtype


@njit(parallel=True, nogil=True, cache=True)
def _merge(out, slots, cached, fetched, miss):
    """``out[i] = cached[slots[i]]`` where ``slots[i] >= 0``; ``out[miss[j]] = fetched[j]``."""
    for i in prange(slots.shape[0]):
        if slots[i] >= 0:
            out[i] = cached[slots[i]]
    for j in prange(miss.shape[0]):
        out[miss[j]] = fetched[j]


def fit_arena(budget_bytes: int, total: Callable[[int], int], smallest: int, num_nodes: int) -> int:
    """The largest arena ``A`` (floats, ``A ≥ smallest``) with ``total(A) ≤ budget_bytes``.

    Raises ``ValueError`` naming ``--cache-mb`` and the minimum when not even ``smallest`` (one
    row) fits with its metadata.
    """
    need = total(smallest)
    if budget_bytes < need:
        raise ValueError(f"--cache-mb {budget_bytes / 2**20:.4g} cannot hold the caches' metadata "
                         f"({num_nodes} nodes) and one row: it needs at least {need / 2**20:.4g} MiB "
                         f"({need} bytes)")
    lo, hi = smallest, budget_bytes // 4  # total(lo) ≤ budget; total(hi + 1) > budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if total(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


class CachedFeatureStore(StoreFront):
    """Rows of ``order[:capacity]`` held in ``buffer`` (1-D float32, on the compute device), in
    front of ``fallback``.

    Row ``i`` of the cache holds node ``order[i]``. Only the first ``num_valid`` rows are served;
    :meth:`truncate` lowers it and unmaps the lost nodes. ``rows_served`` counts reads answered
    from the buffer; the fallback counts its own.
    """

    VERSION = 1

    def __init__(self, fallback: FeatureStore, order: np.ndarray, buffer: Tensor, *, fill_chunk: int = 1 << 16) -> None:
        self.fallback = fallback
        self.capacity = min(len(order), buffer.numel() // fallback.dim)
        ids = index_dtype(fallback.num_nodes)
        self.order = np.ascontiguousarray(order[: self.capacity], dtype=ids)
        self.rows = buffer[: self.capacity * fallback.dim].view(self.capacity, fallback.dim)
        self.slot = np.full(fallback.num_nodes, -1, ids)
        self.slot[self.order] = np.arange(self.capacity)
        self.num_valid = self.capacity
        self.rows_served = 0
        self._fill_chunk = fill_chunk
        self._fill(0)  # one-off fill; excluded from epoch figures

    @classmethod
    def within_budget(cls, fallback: FeatureStore, order: np.ndarray, budget_bytes: int,
                      device: torch.device) -> "CachedFeatureStore":
        """A cache whose buffer and metadata together fit ``budget_bytes`` (module docstring)."""
        n, f = fallback.num_nodes, fallback.dim
        floats = fit_arena(budget_bytes, lambda a: feature_cache_bytes(a, n, f), f, n)
        return cls(fallback, order, torch.empty(floats, dtype=torch.float32, device=device))

    @staticmethod
    def metadata_bytes_for(num_nodes: int, rows: int) -> int:
        """Bytes of metadata for ``rows`` cached rows: ``slot [N]`` and ``order [rows]``, 4 bytes
        each while node ids fit in int32 (8 beyond)."""
        return (num_nodes + rows) * np.dtype(index_dtype(num_nodes)).itemsize

    @property
    def metadata_bytes(self) -> int:
        """Bytes of the arrays this cache owns besides the buffer."""
        return self.slot.nbytes + self.order.nbytes

    @property
    def bytes_used(self) -> int:
        return self.num_valid * self.dim * 4

    def truncate(self, num_rows: int) -> None:
        """Invalidate rows ``num_rows…`` (they are about to be overwritten)."""
        if num_rows < self.num_valid:
            self.slot[self.order[max(num_rows, 0) : self.num_valid]] = -1
            self.num_valid = max(num_rows, 0)

    def refill(self) -> None:
        """Serve every row again: re-read those :meth:`truncate` invalidated from the fallback (which
        counts the bytes), once nothing else holds their part of the buffer."""
        lo = self.num_valid
        self._fill(lo)
        self.slot[self.order[lo:]] = np.arange(lo, self.capacity)
        self.num_valid = self.capacity

    def _fill(self, lo: int) -> None:
        step = self._fill_chunk
        for s in range(lo, self.capacity, step):
            self.rows[s : s + step] = self.fallback.read(self.order[s : s + step]).to(self.rows.device)

    def uncached(self, ids: np.ndarray) -> np.ndarray:
        """The ids among ``ids`` this cache does not serve now (what a read forwards to its fallback)."""
        ids = np.asarray(ids, dtype=np.int64)
        return ids[self.slot[ids] < 0]

    def read(self, ids: np.ndarray) -> Tensor:
        """``x[ids]`` on the buffer's device: valid cached rows from the buffer, misses from the fallback."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        slots = self.slot[ids]
        miss = np.flatnonzero(slots < 0)
        fetched = self.fallback.read(ids[miss])  # the only rows that leave the slow store
        self.rows_served += len(ids) - len(miss)
        if self.rows.device.type == "cpu":  # one parallel pass over host memory
            out = np.empty((len(ids), self.dim), np.float32)
            _merge(out, slots, self.rows.numpy(), fetched.numpy(), miss)
            return torch.from_numpy(out)
        hit = slots >= 0
        assert (slots[hit] < self.num_valid).all(), "feature cache would serve an invalidated row"
        out = torch.empty(len(ids), self.dim, dtype=torch.float32, device=self.rows.device)
        if len(miss):
            out[torch.from_numpy(miss).to(out.device)] = fetched.to(out.device)
        if len(miss) < len(ids):
            hit_pos = torch.from_numpy(np.flatnonzero(hit)).to(out.device)
            out[hit_pos] = self.rows[torch.from_numpy(slots[hit].astype(np.int64)).to(out.device)]
        return out

    def state_dict(self) -> dict[str, Any]:
        # The rows themselves are re-read from the fallback on load; only the valid prefix matters.
        return {"version": self.VERSION, "num_valid": self.num_valid, "rows_served": self.rows_served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, self.VERSION, "feature cache")
        if int(state["num_valid"]) > self.num_valid:
            raise ValueError("cannot restore a feature cache larger than this one (different budget?)")
        self.truncate(int(state["num_valid"]))
        self.rows_served = int(state["rows_served"])


def feature_cache_bytes(arena: int, num_nodes: int, feature_dim: int) -> int:
    """``total(arena)`` of the module docstring: buffer bytes plus the feature cache's metadata."""
    return 4 * arena + CachedFeatureStore.metadata_bytes_for(num_nodes, min(num_nodes, arena // feature_dim))
