"""Where raw node features come from: a counted store (RAM or ``.npy`` memmap) and a cache.

* :class:`FeatureStore` holds ``x [N, F]`` float32, in RAM or in a ``.npy`` file opened with
  ``np.memmap`` (so features may exceed RAM). Every read goes through :meth:`FeatureStore.gather`,
  which counts rows and bytes: the "memory access" figure ReFresh reduces.
* :class:`FeatureCache` keeps the rows of the most valuable nodes (highest degree first) in a
  fast in-memory buffer that it shares with the history cache (``cache.py``): the buffer is one
  byte budget, feature rows fill it from the front and embeddings claim it from the back, and
  every feature row an embedding overwrites is invalidated first (:meth:`FeatureCache.truncate`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor


def index_dtype(count: int) -> type:
    """int32 while every node id fits, else int64 (the slot map has one entry per node)."""
    return np.int32 if count <= 2**31 else np.int64


@njit(parallel=True, nogil=True, cache=True)
def _gather_rows(x, ids, out):
    """``out[i] = x[ids[i]]``; parallel, without the GIL (works on memmaps too)."""
    for i in prange(ids.shape[0]):
        out[i] = x[ids[i]]


@njit(parallel=True, nogil=True, cache=True)
def _gather_rows_cached(x, ids, slot, cached, out):
    """``out[i] = cached[slot[ids[i]]]`` where that slot is ``>= 0``, else ``x[ids[i]]``; returns
    the number of rows read from ``x``."""
    misses = 0
    for i in prange(ids.shape[0]):
        s = slot[ids[i]]
        if s >= 0:
            out[i] = cached[s]
        else:
            out[i] = x[ids[i]]
            misses += 1
    return misses


class FeatureStore:
    """Raw features ``x [N, F]`` (float32 array or ``np.memmap``) behind one counted gather."""

    def __init__(self, x: np.ndarray) -> None:
        if x.ndim != 2:
            raise ValueError(f"features must be 2-D [N, F], got shape {x.shape}")
        if isinstance(x, np.memmap):
            if x.dtype != np.float32:
                raise ValueError(f"memory-mapped features must be float32, got {x.dtype}")
        else:
            x = np.ascontiguousarray(x, dtype=np.float32)
        self.x = x
        self.rows_read = 0
        self.bytes_read = 0

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStore":
        """Memory-map a ``.npy`` written by :func:`write_features` (nothing is read yet)."""
        return cls(np.load(path, mmap_mode="r"))

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @property
    def row_bytes(self) -> int:
        return self.dim * 4

    @property
    def on_disk(self) -> bool:
        return isinstance(self.x, np.memmap)

    def gather(self, ids: np.ndarray, cache: tuple[np.ndarray, np.ndarray] | None = None) -> Tensor:
        """Rows ``x[ids]`` as a new float32 tensor ``[len(ids), F]``; counts the rows read from ``x``.

        ``cache = (slot [N], rows [C, F])`` (host memory) serves ``rows[slot[v]]`` for every
        ``slot[v] >= 0`` instead, in the same pass; those rows are not counted.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty((ids.shape[0], self.dim), np.float32)
        read = int(ids.size)
        if ids.size and cache is None:
            _gather_rows(self.x, ids, out)
        elif ids.size:
            read = int(_gather_rows_cached(self.x, ids, cache[0], cache[1], out))
        self.rows_read += read
        self.bytes_read += read * self.row_bytes
        return torch.from_numpy(out)

    def full(self) -> Tensor:
        """All of ``x`` as a tensor sharing its memory (a memmap stays on disk); counted as one
        full scan. For exact inference, which reads every row anyway."""
        self.rows_read += self.num_nodes
        self.bytes_read += self.num_nodes * self.row_bytes
        with warnings.catch_warnings():  # a read-only memmap: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.x)

    def counters(self) -> dict[str, int]:
        return {"rows_read": self.rows_read, "bytes_read": self.bytes_read}

    def state_dict(self) -> dict[str, Any]:
        return self.counters()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows_read, self.bytes_read = int(state["rows_read"]), int(state["bytes_read"])


class FeatureCache:
    """Rows of ``order[:capacity]`` held in ``buffer`` (a 1-D float32 tensor on the compute device).

    ``order`` lists node ids by priority (highest degree first); row ``i`` of the cache holds
    ``order[i]``. Only the first ``num_valid`` rows may be served: :meth:`truncate` lowers it when
    the history cache claims the buffer's tail, and unmaps the lost nodes *before* anyone can
    overwrite their rows.
    """

    def __init__(self, store: FeatureStore, order: np.ndarray, buffer: Tensor, *, fill_chunk: int = 1 << 16) -> None:
        self.store = store
        self.capacity = min(len(order), buffer.numel() // store.dim)
        ids = index_dtype(store.num_nodes)
        self.order = np.ascontiguousarray(order[: self.capacity], dtype=ids)
        self.rows = buffer[: self.capacity * store.dim].view(self.capacity, store.dim)
        self.slot = np.full(store.num_nodes, -1, ids)
        self.slot[self.order] = np.arange(self.capacity)
        self.num_valid = self.capacity
        self.rows_served = 0
        for s in range(0, self.capacity, fill_chunk):  # one-off fill; excluded from epoch figures
            self.rows[s : s + fill_chunk] = store.gather(self.order[s : s + fill_chunk]).to(buffer.device)

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
        return self.num_valid * self.store.row_bytes

    def truncate(self, num_rows: int) -> None:
        """Invalidate rows ``num_rows…`` (they are about to be overwritten)."""
        if num_rows < self.num_valid:
            self.slot[self.order[max(num_rows, 0) : self.num_valid]] = -1
            self.num_valid = max(num_rows, 0)

    def gather(self, ids: np.ndarray) -> Tensor:
        """``x[ids]`` on the buffer's device: valid cached rows from the buffer, the rest from the store."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.rows.device.type == "cpu":  # one fused pass through the store's counted gather
            before = self.store.rows_read
            out = self.store.gather(ids, cache=(self.slot, self.rows.numpy()))
            self.rows_served += len(ids) - (self.store.rows_read - before)
            return out
        slots = self.slot[ids]
        hit = slots >= 0
        assert (slots[hit] < self.num_valid).all(), "feature cache would serve an invalidated row"
        miss_pos = np.flatnonzero(~hit)
        out = torch.empty(len(ids), self.store.dim, dtype=torch.float32, device=self.rows.device)
        if len(miss_pos):
            out[torch.from_numpy(miss_pos).to(out.device)] = self.store.gather(ids[miss_pos]).to(out.device)
        if len(miss_pos) < len(ids):
            hit_pos = torch.from_numpy(np.flatnonzero(hit)).to(out.device)
            out[hit_pos] = self.rows[torch.from_numpy(slots[hit].astype(np.int64)).to(out.device)]
        self.rows_served += len(ids) - len(miss_pos)
        return out

    def state_dict(self) -> dict[str, Any]:
        # The rows themselves are re-read from the store on load; only the valid prefix matters.
        return {"num_valid": self.num_valid, "rows_served": self.rows_served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_valid"]) > self.num_valid:
            raise ValueError("cannot restore a feature cache larger than this one (different budget?)")
        self.truncate(int(state["num_valid"]))
        self.rows_served = int(state["rows_served"])


def degree_order(rowptr: np.ndarray) -> np.ndarray:
    """Node ids by degree, highest first (ties: lower id first)."""
    deg = np.diff(rowptr)
    return np.argsort(-deg, kind="stable")


def write_features(path: str | os.PathLike, x: np.ndarray, *, chunk: int = 1 << 16) -> np.memmap:
    """Write ``x`` (any array or memmap) to a float32 ``.npy`` in row chunks; return it memory-mapped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(x.shape))
    for s in range(0, x.shape[0], chunk):
        out[s : s + chunk] = x[s : s + chunk]
    out.flush()
    del out
    os.replace(tmp, path)  # a reader never sees a half-written file
    return np.load(path, mmap_mode="r")
