"""The history table's replacement order, kept incrementally so a full table costs O(batch), not O(table).

:class:`~.cache.HistoryCache`'s capacity guard asks, per admission of ``k`` nodes at iteration ``now``:

* **free slots**: the ``n`` lowest-numbered claimed slots that are empty or stale
  (``now − w > staleness`` for an entry written at ``w``);
* **victims**: the ``r`` least valuable valid entries in ``(value, slot)`` order, where

      value = weight[node] · life,  life = staleness − (now − w) + 1     (with a per-node ``weight``)
      value = w                                                       (without: oldest first)

  and, with no staleness limit (``staleness = ∞``), ``life`` is the same for every entry, so
  ``value = weight[node]``. (The full scan this replaces used ``life = float(2^62 − age + 1)``
  there, whose rounding starts to tell ages apart after ~256 iterations: an accident, not a
  policy. With a limit, and for the weighted order, the choices are the same as the scan's;
  without weights, ties between equally old entries now go to the lowest slot instead of
  ``argpartition``'s arbitrary pick.)

Both used to be answered by scanning (and sorting) every claimed slot. Here:

* Free slots sit in a **min-heap of slot ids** (``in_heap`` keeps one copy per slot). Stale entries
  enter it when their run expires; evicted slots when evicted. A popped slot that is no longer
  reusable (its node rewrote it in place) is dropped.
* Valid entries sit in **runs**: the slots one admission wrote, sorted by ``(weight, slot)``
  (or by slot). All entries of a run share ``w``, hence ``life``, so the run stays sorted by
  value as it ages. The victims are a k-way merge of the runs' heads: ``O((r + B) log B)`` for
  ``B`` runs. An entry is live while its recorded version equals its slot's (every write or
  eviction bumps it), so replaced entries die without being looked for.
* Runs expire in write order (``now`` never decreases in training; if it does, everything is
  rebuilt from the slot arrays). When the log or the run table fills up, it is rebuilt from the
  slot arrays — ``O(S log S)`` at most once per ``S/k`` admissions (``S`` slots), and runs with
  one ``w`` (or all runs, without a staleness limit) merge into one.

Metadata per slot: 4 (heap) + 1 (``in_heap``) + 16 (log of 2·S (slot, version) int32 pairs) bytes;
fixed: 24 bytes per run-table row (:func:`run_capacity` rows).
"""
from __future__ import annotations

import numpy as np
from numba import njit

UNLIMITED_RUNS = 64  # run-table rows without a staleness limit: all runs merge into one on rebuild


def run_capacity(max_slots: int, staleness: int | None) -> int:
    """Rows of the run table: room for every distinct live write iteration (at most
    ``staleness + 1``) twice over, so a rebuild is needed at most every ``staleness`` iterations."""
    if staleness is None:
        return UNLIMITED_RUNS
    return min(4 * (staleness + 1), 2 * max_slots) + 2


def order_metadata_bytes(max_slots: int, staleness: int | None) -> int:
    """Bytes of the arrays a :class:`SlotOrder` owns (module docstring)."""
    return max_slots * (4 + 1 + 2 * 8) + run_capacity(max_slots, staleness) * 24


@njit(cache=True, nogil=True)
def _heap_push(heap, size, x):  # pragma: no cover - jitted
    i = size
    heap[i] = x
    while i > 0:
        p = (i - 1) >> 1
        if heap[p] <= heap[i]:
            break
        heap[p], heap[i] = heap[i], heap[p]
        i = p
    return size + 1


@njit(cache=True, nogil=True)
def _heap_pop(heap, size):  # pragma: no cover - jitted
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and heap[c + 1] < heap[c]:
            c += 1
        if heap[i] <= heap[c]:
            break
        heap[i], heap[c] = heap[c], heap[i]
        i = c
    return top, size


@njit(cache=True, nogil=True)
def _push_free(heap, size, in_heap, slots):  # pragma: no cover - jitted
    for s in slots:
        if not in_heap[s]:
            in_heap[s] = True
            size = _heap_push(heap, size, np.int32(s))
    return size


@njit(cache=True, nogil=True)
def _take_free(heap, size, in_heap, n, slot_node, slot_iter, now, staleness, out):  # pragma: no cover - jitted
    """Pop the ``n`` lowest reusable slots into ``out``; returns ``(count, size)``."""
    count = 0
    while count < n and size > 0:
        s, size = _heap_pop(heap, size)
        in_heap[s] = False
        if slot_node[s] < 0 or now - slot_iter[s] > staleness:
            out[count] = s
            count += 1
    return count, size


@njit(cache=True, nogil=True)
def _expire(run_lo, run_hi, run_iter, head, tail, limit, log_slot, log_ver, slot_ver, heap, size,
            in_heap):  # pragma: no cover - jitted
    """Move the live entries of runs written before ``limit`` to the free heap; returns ``(head, size)``."""
    while head < tail and run_iter[head] < limit:
        for p in range(run_lo[head], run_hi[head]):
            s = log_slot[p]
            if log_ver[p] == slot_ver[s] and not in_heap[s]:
                in_heap[s] = True
                size = _heap_push(heap, size, s)
        head += 1
    return head, size


@njit(cache=True, nogil=True)
def _before(v, s, i, j):  # pragma: no cover - jitted
    return v[i] < v[j] or (v[i] == v[j] and s[i] < s[j])


@njit(cache=True, nogil=True)
def _least_valuable(run_lo, run_hi, run_life, head, tail, log_slot, log_ver, slot_ver, slot_node, slot_iter,
                    weight, weighted, r, out_slot, out_val):  # pragma: no cover - jitted
    """k-way merge of the runs' live entries by ``(value, slot)``: the first ``r`` into ``out_*``.

    Dead entries at a run's head are dropped for good (``run_lo`` advances). Returns the count.
    """
    nb = tail - head
    hv = np.empty(nb, np.float64)  # heap of runs keyed by their current head's (value, slot)
    hs = np.empty(nb, np.int64)
    hb = np.empty(nb, np.int64)
    cur = np.empty(nb, np.int64)
    n = 0
    for b in range(head, tail):
        p = run_lo[b]
        while p < run_hi[b] and log_ver[p] != slot_ver[log_slot[p]]:
            p += 1
        run_lo[b] = p
        cur[b - head] = p
        if p < run_hi[b]:
            s = log_slot[p]
            hv[n] = weight[slot_node[s]] * run_life[b] if weighted else np.float64(slot_iter[s])
            hs[n], hb[n] = s, b
            i = n
            n += 1
            while i > 0 and _before(hv, hs, i, (i - 1) >> 1):
                q = (i - 1) >> 1
                hv[i], hv[q] = hv[q], hv[i]
                hs[i], hs[q] = hs[q], hs[i]
                hb[i], hb[q] = hb[q], hb[i]
                i = q
    count = 0
    while count < r and n > 0:
        out_slot[count], out_val[count] = hs[0], hv[0]
        count += 1
        b = hb[0]
        p = cur[b - head] + 1
        while p < run_hi[b] and log_ver[p] != slot_ver[log_slot[p]]:
            p += 1
        cur[b - head] = p
        if p < run_hi[b]:  # replace the root by this run's next entry
            s = log_slot[p]
            hv[0] = weight[slot_node[s]] * run_life[b] if weighted else np.float64(slot_iter[s])
            hs[0] = s
        else:  # this run is spent: the last leaf becomes the root
            n -= 1
            hv[0], hs[0], hb[0] = hv[n], hs[n], hb[n]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and _before(hv, hs, c + 1, c):
                c += 1
            if not _before(hv, hs, c, i):
                break
            hv[i], hv[c] = hv[c], hv[i]
            hs[i], hs[c] = hs[c], hs[i]
            hb[i], hb[c] = hb[c], hb[i]
            i = c
    return count


class SlotOrder:
    """Free-slot heap and value-ordered runs over a cache's slot arrays (module docstring).

    ``slot_node``, ``slot_iter``, ``slot_ver`` are the cache's arrays (read, never written here);
    ``weight`` the per-node weight or ``None``; ``staleness`` ``None`` for no staleness limit.
    """

    def __init__(self, slot_node: np.ndarray, slot_iter: np.ndarray, slot_ver: np.ndarray,
                 weight: np.ndarray | None, staleness: int | None) -> None:
        s = len(slot_node)
        self.slot_node, self.slot_iter, self.slot_ver = slot_node, slot_iter, slot_ver
        self.weighted = weight is not None
        self.weight = weight if weight is not None else np.ones(1)
        self.staleness = staleness
        self.heap = np.empty(s, np.int32)
        self.in_heap = np.zeros(s, np.bool_)
        self.log_slot = np.empty(2 * s, np.int32)
        self.log_ver = np.empty(2 * s, np.int32)
        cap = run_capacity(s, staleness)
        self.run_lo = np.empty(cap, np.int64)
        self.run_hi = np.empty(cap, np.int64)
        self.run_iter = np.empty(cap, np.int64)
        self.heap_size = self.head = self.tail = self.log_tail = 0
        self.now: int | None = None  # iteration of the last sync; None: rebuild on the next one

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.heap, self.in_heap, self.log_slot, self.log_ver, self.run_lo,
                                      self.run_hi, self.run_iter))

    def invalidate(self) -> None:
        """The slot arrays were replaced wholesale (a loaded state): rebuild on the next sync."""
        self.now = None

    def sync(self, now: int, lo: int) -> None:
        """Bring the order to iteration ``now`` (claimed slots are ``[lo, S)``): expire old runs."""
        if self.now is None or now < self.now:
            self.rebuild(now, lo)
        if self.staleness is not None:
            self.head, self.heap_size = _expire(self.run_lo, self.run_hi, self.run_iter, self.head, self.tail,
                                                now - self.staleness, self.log_slot, self.log_ver, self.slot_ver,
                                                self.heap, self.heap_size, self.in_heap)
        self.now = now

    def rebuild(self, now: int, lo: int) -> None:
        """Everything from the slot arrays: reusable slots into the heap (a sorted array is a
        heap), live entries into one run per write iteration (one in all without a limit)."""
        claimed = np.arange(lo, len(self.slot_node))
        node, it = self.slot_node[lo:], self.slot_iter[lo:]
        fresh = node >= 0
        if self.staleness is not None:
            fresh &= now - it <= self.staleness
        free = claimed[~fresh]
        self.in_heap[:] = False
        self.in_heap[free] = True
        self.heap[: len(free)] = free
        self.heap_size = len(free)
        live = claimed[fresh]
        grouped = self.staleness is not None
        it_live = self.slot_iter[live]
        if self.weighted:
            keys = (live, self.weight[self.slot_node[live]]) + ((it_live,) if grouped else ())
        else:
            keys = (live, it_live)
        live = live[np.lexsort(keys)]
        self.log_slot[: len(live)] = live
        self.log_ver[: len(live)] = self.slot_ver[live]
        self.log_tail = len(live)
        bounds = np.flatnonzero(np.diff(self.slot_iter[live])) + 1 if grouped else np.empty(0, np.int64)
        starts = np.concatenate([[0], bounds]) if len(live) else np.empty(0, np.int64)
        ends = np.concatenate([bounds, [len(live)]]) if len(live) else np.empty(0, np.int64)
        self.head, self.tail = 0, len(starts)
        self.run_lo[: self.tail], self.run_hi[: self.tail] = starts, ends
        self.run_iter[: self.tail] = self.slot_iter[live[starts]] if len(live) else 0
        self.now = now

    def take_free(self, n: int, now: int) -> np.ndarray:
        """Up to ``n`` reusable slots, lowest first (they leave the heap)."""
        out = np.empty(min(n, self.heap_size), np.int64)
        count, self.heap_size = _take_free(self.heap, self.heap_size, self.in_heap, len(out), self.slot_node,
                                           self.slot_iter, now, self.staleness if self.staleness is not None else
                                           (1 << 62), out)
        return out[:count]

    def release(self, slots: np.ndarray) -> None:
        """Evicted (now empty) slots become reusable."""
        if self.now is not None:
            self.heap_size = _push_free(self.heap, self.heap_size, self.in_heap, np.asarray(slots, np.int64))

    def least_valuable(self, r: int, now: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``r`` (or fewer) least valuable live entries: slots and values, in ``(value, slot)`` order."""
        b = np.arange(self.head, self.tail)
        life = np.ones(self.tail, np.float64)
        if self.staleness is not None:  # the reference's integer life, then float64 (no rounding change)
            life[b] = (self.staleness - (now - self.run_iter[b]) + 1).astype(np.float64)
        out_slot, out_val = np.empty(r, np.int64), np.empty(r, np.float64)
        count = _least_valuable(self.run_lo, self.run_hi, life, self.head, self.tail, self.log_slot, self.log_ver,
                                self.slot_ver, self.slot_node, self.slot_iter, self.weight, self.weighted, r,
                                out_slot, out_val)
        return out_slot[:count], out_val[:count]

    def append(self, slots: np.ndarray, now: int, lo: int) -> None:
        """Record the slots just written at ``now`` (their versions already bumped) as one run."""
        if len(slots) == 0:
            return
        full = self.log_tail + len(slots) > len(self.log_slot) or self.tail == len(self.run_lo)
        # Runs must stay in write order to expire from the head; after time went back, the last
        # run may lie in the future. Either way the new slots are in the slot arrays already.
        if full or (self.tail > self.head and self.run_iter[self.tail - 1] > now):
            self.rebuild(now, lo)
            return
        keys = (slots, self.weight[self.slot_node[slots]]) if self.weighted else (slots,)
        slots = slots[np.lexsort(keys)]
        a, z = self.log_tail, self.log_tail + len(slots)
        self.log_slot[a:z], self.log_ver[a:z] = slots, self.slot_ver[slots]
        self.run_lo[self.tail], self.run_hi[self.tail], self.run_iter[self.tail] = a, z, now
        self.tail += 1
        self.log_tail = z
