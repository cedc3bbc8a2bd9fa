"""A look-ahead cache: rows the next ``K`` batches will read, kept by Belady's rule over that window.

:class:`LookaheadCache` wraps any :class:`~.stores.FeatureStore` behind the same ``read(ids)``
(GraphBolt's ``CPUCachedFeature`` shape), but instead of a fixed set of rows it holds the rows a
*window* of upcoming requests will ask for. The window is the input rows of the next batches,
sampled ahead (:class:`~.loader.BatchLoader` draws them; the sampler is a pure function of a
batch's key, so drawing ahead changes no batch). Per batch ``i`` (window ``W = [i, i+1, …]``):

1. :meth:`read` serves the resident rows and reads the misses from the fallback. A missed row ``v``
   whose *next use* ``n(v) = min{t ≥ 1 : v ∈ W[t]}`` is finite is admitted under Belady's rule
   with bypass: of the residents and the admissible rows, the ``capacity`` of smallest
   ``(n(v), incoming, v)`` stay (a resident wins a tie: it costs no copy); rows never used in
   the window are never admitted.
2. :meth:`advance` drops ``W[0]``, appends the next prediction, and *prefetches* the next
   batch's predicted misses -- in a background thread (:class:`~.disk_store.DiskFeatureStore`'s
   reads release the GIL) while batch ``i`` trains. A prefetched row takes a free slot or the slot
   of a resident that costs no read to lose: one the window never reads, or one demand-paged
   Belady would evict at that step anyway (the next batch does not read it and it ranks below
   the capacity once the next batch's rows are in), so prefetching
   moves reads earlier without adding any: the rows fetched equal demand-paged Belady's with
   bypass (the optimum for a known request sequence; tests/test_lookahead.py checks it against
   an exhaustive search).

Every call that touches the buffer first waits for a prefetch in flight; a failed prefetch is
raised there as :class:`LookaheadError` (naming the rows and the store) and its slots are freed,
so a reader never sees a half-written row and never hangs.

Predictions may be wrong (under a history cache the real batch is pruned by the cache as it is
when the batch is drawn, later than its prediction): a wrongly predicted row costs buffer space,
an unpredicted one a read on demand; the rows returned are always the store's.

Memory: the buffer ``[capacity, F]`` float32, a slot map ``[N]`` and a next-use scratch ``[N]``
(int32 while ids fit), and the slots' owners ``[capacity]`` int64 (:meth:`bytes_for`).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..state import check_version
from .feature_cache import _merge, fit_arena
from .stores import FeatureStore, StoreFront, index_dtype

NEVER = np.iinfo(np.int32).max  # the next use of a row the window does not read


class LookaheadError(RuntimeError):
    """A background prefetch of the look-ahead cache failed (the cause is chained)."""


class LookaheadCache(StoreFront):
    """Up to ``capacity`` rows of ``fallback`` chosen by Belady's rule over a window of future
    requests (module docstring). ``background``: prefetch in a worker thread (else inline, with
    identical results). Counts ``rows_requested``, ``rows_served`` (from the buffer) and
    ``rows_prefetched``; the fallback counts what it read."""

    VERSION = 1

    def __init__(self, fallback: FeatureStore, capacity: int, *, background: bool = True) -> None:
        if capacity < 0:
            raise ValueError(f"look-ahead capacity must be >= 0 rows, got {capacity}")
        self.fallback = fallback
        n, f = fallback.num_nodes, fallback.dim
        self.capacity = int(capacity)
        self.rows = np.empty((self.capacity, f), np.float32)
        ids = index_dtype(n)
        self.slot = np.full(n, -1, ids)  # node -> slot, -1: not resident
        self.owner = np.full(self.capacity, -1, np.int64)  # slot -> node, -1: free
        self._next = np.full(n, NEVER, np.int32)  # scratch: next use in the window, NEVER outside a call
        self.window: deque[np.ndarray] = deque()  # predicted (distinct) ids of the next requests
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="approxgnn-lookahead") if background else None
        self._pending: tuple[Future, np.ndarray, np.ndarray] | None = None  # (read, ids, slots)
        self.rows_requested = self.rows_served = self.rows_prefetched = 0

    @classmethod
    def within_budget(cls, fallback: FeatureStore, budget_bytes: int, *, background: bool = True) -> "LookaheadCache":
        """The largest cache whose buffer and metadata fit ``budget_bytes``."""
        n, f = fallback.num_nodes, fallback.dim
        floats = fit_arena(budget_bytes, lambda a: cls.bytes_for(a // f, n, f), f, n)
        return cls(fallback, floats // f, background=background)

    @staticmethod
    def bytes_for(capacity: int, num_nodes: int, dim: int) -> int:
        """Bytes of a cache of ``capacity`` rows: the buffer, the slot map and next-use scratch
        (``[N]`` each, 4 bytes while ids fit in int32), the owners (8 bytes a slot)."""
        return capacity * (dim * 4 + 8) + num_nodes * (np.dtype(index_dtype(num_nodes)).itemsize + 4)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.slot.nbytes + self.owner.nbytes + self._next.nbytes

    # ---- the FeatureStore protocol (shape from StoreFront) ---------------------------------
    @property
    def resident(self) -> int:
        return int((self.owner >= 0).sum())

    def read(self, ids: np.ndarray) -> Tensor:
        """``x[ids]`` as a new CPU float32 tensor ``[len(ids), F]``: resident rows from the buffer,
        the rest from the fallback; misses the window reads again are admitted (module docstring)."""
        self._wait()
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_nodes):
            raise IndexError(f"row ids must lie in [0, {self.num_nodes})")
        slots = self.slot[ids]
        miss = np.flatnonzero(slots < 0)
        fetched = (self.fallback.read(ids[miss]).cpu().numpy() if len(miss)
                   else np.empty((0, self.dim), np.float32))
        out = np.empty((len(ids), self.dim), np.float32)
        _merge(out, slots, self.rows, fetched, miss)
        self.rows_requested += len(ids)
        self.rows_served += len(ids) - len(miss)
        if len(self.window) > 1 and len(miss) and self.capacity:
            self._admit(ids[miss], fetched)
        return torch.from_numpy(out)

    # ---- the window ----------------------------------------------------------------------
    def start(self, window: list[np.ndarray]) -> None:
        """Begin a window of predicted requests, the next one first; prefetch its misses."""
        self._wait()
        self.window = deque(_distinct(w) for w in window)
        self._prefetch()

    def advance(self, prediction: np.ndarray | None) -> None:
        """The request at the head of the window was read: drop it, append ``prediction`` (the
        request after the window's last; None: there is none), prefetch the new head's misses."""
        self._wait()
        if self.window:
            self.window.popleft()
        if prediction is not None:
            self.window.append(_distinct(prediction))
        self._prefetch()

    def _next_use(self, first: int) -> None:
        """Fill the scratch: ``_next[v]`` = the smallest ``t ≥ first`` with ``v ∈ window[t]``."""
        for t in range(len(self.window) - 1, first - 1, -1):
            self._next[self.window[t]] = t

    def _clear_next(self) -> None:
        for w in self.window:
            self._next[w] = NEVER

    def _admit(self, incoming: np.ndarray, fetched: np.ndarray) -> None:
        """Belady with bypass over residents and ``incoming`` (rows ``fetched``, any order, repeats)."""
        incoming, first = np.unique(incoming, return_index=True)
        self._next_use(1)
        try:
            use = self._next[incoming]
            keep = use < NEVER
            incoming, first, use = incoming[keep], first[keep], use[keep]
            if not len(incoming):
                return
            free = np.flatnonzero(self.owner < 0)
            if len(free) < len(incoming):
                res_slots = np.flatnonzero(self.owner >= 0)
                res = self.owner[res_slots]
                # One ordering over both: (next use, incoming after resident, id); the capacity smallest stay.
                far = len(self.window)  # past every use: NEVER clipped so that the key fits
                key = np.concatenate([(np.minimum(self._next[res], far).astype(np.int64) << 33) | res,
                                      (use.astype(np.int64) << 33) | (1 << 32) | incoming])
                stay = np.zeros(len(key), bool)
                stay[np.argpartition(key, self.capacity - 1)[: self.capacity]] = True
                gone = res_slots[~stay[: len(res)]]
                self.slot[self.owner[gone]] = -1
                self.owner[gone] = -1
                taken = stay[len(res):]
                incoming, first = incoming[taken], first[taken]
                free = np.flatnonzero(self.owner < 0)
            slots = free[: len(incoming)]
            self.rows[slots] = fetched[first]
            self.owner[slots] = incoming
            self.slot[incoming] = slots
        finally:
            self._clear_next()

    def _prefetch(self) -> None:
        """Read the window head's predicted misses ahead, into slots demand-paged Belady would
        free at that step anyway: free slots, and residents the head does not read that lose to
        the head's rows by next use after it or that the window never reads. Rows that will stay
        go first."""
        if not self.window or not self.capacity:
            return
        head = self.window[0]
        missing = head[self.slot[head] < 0]
        if not len(missing):
            return
        res_slots = np.flatnonzero(self.owner >= 0)
        res = self.owner[res_slots]
        read_now = np.zeros(self.capacity, bool)
        hit = self.slot[head]
        read_now[hit[hit >= 0]] = True  # served at the head's step: kept until then
        self._next_use(1)
        try:
            far = len(self.window)
            res_use = np.minimum(self._next[res], far).astype(np.int64)
            key = np.concatenate([(res_use << 33) | res,
                                  (np.minimum(self._next[missing], far).astype(np.int64) << 33) | (1 << 32) | missing])
        finally:
            self._clear_next()
        stay = np.ones(len(key), bool)
        if len(key) > self.capacity:  # after the head's step Belady keeps the capacity smallest
            stay[:] = False
            stay[np.argpartition(key, self.capacity - 1)[: self.capacity]] = True
        # Residents the head does not read that lose that ranking, or that the window never reads.
        gone = res_slots[~read_now[res_slots] & (~stay[: len(res)] | (res_use == far))]
        room = np.concatenate([np.flatnonzero(self.owner < 0), gone])
        order = np.lexsort((key[len(res):], ~stay[len(res):]))  # staying rows first, then by key
        missing = missing[order[: len(room)]]
        if not len(missing):
            return
        slots = np.sort(room[: len(missing)])
        evicted = self.owner[slots]
        self.slot[evicted[evicted >= 0]] = -1
        self.owner[slots] = missing
        self.slot[missing] = slots
        self.rows_prefetched += len(missing)
        job = (self._fetch, missing, slots)
        fut = self._pool.submit(*job) if self._pool is not None else _run(*job)
        self._pending = (fut, missing, slots)

    def _fetch(self, ids: np.ndarray, slots: np.ndarray) -> None:
        self.rows[slots] = self.fallback.read(ids).cpu().numpy()

    def _wait(self) -> None:
        """Finish the prefetch in flight; on failure free its slots and raise :class:`LookaheadError`."""
        if self._pending is None:
            return
        fut, ids, slots = self._pending
        self._pending = None
        try:
            fut.result()
        except BaseException as e:
            self.slot[ids] = -1
            self.owner[slots] = -1
            raise LookaheadError(f"look-ahead prefetch of {len(ids)} rows from {_name(self.fallback)} failed: "
                                 f"{type(e).__name__}: {e}") from e

    def clear(self) -> None:
        """Forget the window and every resident row."""
        self._wait()
        self.window.clear()
        self.slot[self.owner[self.owner >= 0]] = -1
        self.owner[:] = -1

    # ---- figures, state, lifetime --------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return {"rows_requested": self.rows_requested, "rows_served": self.rows_served,
                "rows_prefetched": self.rows_prefetched}

    def state_dict(self) -> dict[str, Any]:
        """Counters and the resident ids per slot (the rows are re-read on load). Taken between
        epochs, when the window is empty."""
        self._wait()
        if self.window:
            raise RuntimeError("the look-ahead cache's state is taken between epochs, with an empty window")
        return {"version": self.VERSION, "counters": self.counters(), "owner": torch.from_numpy(self.owner.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters and residents; the residents' rows are read from the fallback again
        (restore the fallback's own counters after this)."""
        check_version(state, self.VERSION, "look-ahead cache")
        owner = np.asarray(state["owner"], dtype=np.int64)
        if len(owner) != self.capacity:
            raise ValueError(f"the state holds a look-ahead cache of {len(owner)} rows, this one {self.capacity} "
                             "(a different --cache-mb or --lookahead-share?)")
        if len(owner) and owner.max() >= self.num_nodes:
            raise ValueError(f"the look-ahead state names row {owner.max()}, the store has {self.num_nodes}")
        self.clear()
        slots = np.flatnonzero(owner >= 0)
        if len(slots):
            self.rows[slots] = self.fallback.read(owner[slots]).cpu().numpy()
        self.owner[:] = owner
        self.slot[owner[slots]] = slots
        c = state["counters"]
        self.rows_requested, self.rows_served = int(c["rows_requested"]), int(c["rows_served"])
        self.rows_prefetched = int(c["rows_prefetched"])

    def close(self) -> None:
        """Finish a prefetch in flight (its error, if any, is dropped) and stop the thread."""
        try:
            self._wait()
        except LookaheadError:
            pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _distinct(ids: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(ids, dtype=np.int64))


def _name(store: Any) -> str:
    path = getattr(store, "path", None)
    return str(path) if path is not None else type(store).__name__


def _run(fn: Any, *args: Any) -> Future:
    """``fn(*args)`` now, as a completed (or failed) future."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except BaseException as e:  # noqa: BLE001 -- delivered by _wait, like a thread's error
        fut.set_exception(e)
    return fut
