"""History cache: tables of node embeddings ``h_v^(l)`` with per-entry write iterations.

One float32 *arena* holds the whole cache budget. The feature cache
(:class:`~approxgnn.minibatch.feature_cache.CachedFeatureStore`) fills it
from the front with raw feature rows; this class claims embedding rows from the back: ``dim``
values each, stored as float32 or float16 (``r = ⌈dim · itemsize / 4⌉`` of the arena's floats).
Claiming a row that overlaps feature rows truncates the feature cache first, so a feature row is
invalidated *before* an embedding overwrites it and is never served again:

    arena = [ feature rows (valid prefix) … | … embedding rows claimed from the end ]
    bytes used = num_valid_feature_rows · F · 4 + claimed_rows · r · 4 ≤ arena bytes

The metadata of both caches (slot maps, write iterations, replacement order) is counted in the
same budget: :func:`~.arena.arena_floats` sizes the arena as what the budget leaves after it.

Entry ``(l, v)`` written at iteration ``w`` is *fresh* at iteration ``t`` when
``t − w ≤ staleness`` (``None``: never stale, the GAS policy), i.e. it is served at
iterations ``w+1 … w+staleness`` and is a miss afterwards — exact per-entry ages.

Capacity guard, when an admission needs slots: reuse the node's own (stale) slot, then free or
stale slots, then claim new rows (displacing feature rows), and only then replace valid entries:
the oldest ones, or — given a per-node ``weight`` such as the degree, which is proportional to
how often a sampler reaches the node — those with the fewest expected hits before they expire
(``weight × remaining life``), and only for newcomers worth more than what they displace.
The replacement order is kept incrementally (:mod:`.slots`), so a full table costs an admission
``O(k log k)``, not a sort of every slot.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..minibatch.feature_cache import CachedFeatureStore
from ..state import check_version
from ..minibatch.sampler import PruneTest
from ..minibatch.stores import index_dtype
from .slots import SlotOrder, order_metadata_bytes

NEVER = -(1 << 62)  # write iteration of an empty slot: never fresh


class HistoryCache:
    """Embedding tables for ``layers`` (hidden layer indices), ``dim`` values per entry.

    ``arena`` is a 1-D float32 tensor shared with ``feature_cache`` (which may be ``None``).
    Entries are stored as ``dtype`` (float32, or float16 to hold twice as many in the same bytes);
    an entry takes :meth:`row_floats` of the arena's floats, padded to whole floats, and is served
    as stored (the layer above casts it).
    Metadata is numpy so the sampler's numba kernel can read it for pruning:

    * per node and cached layer: ``node_slot[l] [N]`` (int32 while ids fit) — fixed;
    * per slot: ``slot_node`` int32, ``slot_layer`` int16, ``slot_iter`` int64, ``slot_ver`` int32
      (bumped on every write and eviction) and the replacement order (:mod:`.slots`).

    :meth:`metadata_bytes_for` gives its size ahead of time, so that a byte budget can hold the
    metadata as well as the rows (:func:`~.arena.arena_floats`). ``weight`` is used in place when
    it is already float64 (e.g. the sampler's degree array), and then not counted as ours.
    """

    SLOT_BYTES = 4 + 2 + 8 + 4  # slot_node, slot_layer, slot_iter, slot_ver
    VERSION = 1  # of state_dict()

    def __init__(self, num_nodes: int, layers: list[int], dim: int, arena: Tensor,
                 feature_cache: CachedFeatureStore | None = None, staleness: int | None = 200,
                 weight: np.ndarray | None = None, max_rows: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        if dim < 1:
            raise ValueError(f"embedding width must be >= 1, got {dim}")
        self.dtype, self.row_floats = dtype, self.row_floats_for(dim, dtype)
        if staleness is not None and staleness < 1:
            raise ValueError(f"staleness must be >= 1 iteration or None, got {staleness}")
        self.layers, self.dim, self.staleness = list(layers), dim, staleness
        # The limit as the kernels' int (2^62: never stale); ``staleness`` keeps the None.
        self._stale_after = (1 << 62) if staleness is None else int(staleness)
        self.feature_cache = feature_cache
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float64)
        self._owns_weight = self.weight is not None and self.weight is not weight
        # ``max_rows`` caps the embedding region (the rest of the arena stays feature rows).
        fits = arena.numel() // self.row_floats
        self.max_slots = fits if max_rows is None else min(fits, max_rows)
        self._base = arena.numel() - self.max_slots * self.row_floats  # float offset of physical row 0
        padded = self.row_floats * 4 // dtype.itemsize  # values a row spans, padding included
        self.table = arena[self._base:].view(dtype).view(self.max_slots, padded)[:, :dim]
        self.claimed = 0  # rows [max_slots − claimed, max_slots) belong to embeddings
        ids = index_dtype(max(num_nodes, self.max_slots))
        self.slot_node = np.full(self.max_slots, -1, ids)
        self.slot_layer = np.full(self.max_slots, -1, np.int16)
        self.slot_iter = np.full(self.max_slots, NEVER, np.int64)
        self.slot_ver = np.zeros(self.max_slots, np.int32)  # wraps after 2^32 writes of one slot: harmless
        self.node_slot = {l: np.full(num_nodes, -1, ids) for l in self.layers}
        self.order = SlotOrder(self.slot_node, self.slot_iter, self.slot_ver, self.weight, staleness)
        self.expired = 0  # entries rewritten or replaced after they had gone stale

    @staticmethod
    def row_floats_for(dim: int, dtype: torch.dtype = torch.float32) -> int:
        """Arena floats one ``dim``-wide entry of ``dtype`` takes: ``⌈dim · itemsize / 4⌉``."""
        return -(-dim * dtype.itemsize // 4)

    @staticmethod
    def metadata_bytes_for(num_nodes: int, num_layers: int, max_slots: int, staleness: int | None) -> int:
        """Bytes of metadata a cache of ``max_slots`` slots over ``num_nodes`` nodes allocates::

            num_layers · N · b + S · (SLOT_BYTES − 4 + b) + order_metadata_bytes(S)

        with ``b`` = 4 (int32 ids) or 8 (beyond 2^31 nodes or slots).
        """
        b = np.dtype(index_dtype(max(num_nodes, max_slots))).itemsize
        return (num_layers * num_nodes * b + max_slots * (HistoryCache.SLOT_BYTES - 4 + b)
                + order_metadata_bytes(max_slots, staleness))

    @property
    def metadata_bytes(self) -> int:
        """Bytes of every array this cache owns besides the arena (see the class docstring)."""
        arrays = [self.slot_node, self.slot_layer, self.slot_iter, self.slot_ver, *self.node_slot.values()]
        own = sum(a.nbytes for a in arrays) + self.order.nbytes
        return own + (self.weight.nbytes if self._owns_weight else 0)

    # ---- reading -------------------------------------------------------------------------
    def fresh(self, layer: int, nodes: np.ndarray, now: int) -> np.ndarray:
        """Bool mask: does ``nodes`` hold a fresh layer-``layer`` entry at iteration ``now``?"""
        s = self.node_slot[layer][nodes]
        ok = s >= 0
        ok[ok] = now - self.slot_iter[s[ok]] <= self._stale_after
        return ok

    def prune_test(self, layer: int, now: int) -> PruneTest:
        """The same test, as arrays for the sampler kernel."""
        return PruneTest(self.node_slot[layer], self.slot_iter, now, self._stale_after)

    def read(self, layer: int, nodes: np.ndarray, now: int) -> tuple[Tensor, np.ndarray]:
        """Copies of the (fresh) entries of ``nodes`` and their ages ``now − write iteration``."""
        s = self.node_slot[layer][nodes].astype(np.int64)
        if (s < 0).any() or (now - self.slot_iter[s] > self._stale_after).any():
            raise KeyError(f"layer {layer}: asked to serve a missing or stale entry")
        return self.table[torch.from_numpy(s).to(self.table.device)], now - self.slot_iter[s]

    def oldest(self, layer: int, n: int) -> np.ndarray:
        """Up to ``n`` nodes holding a layer-``layer`` entry (fresh or stale), the oldest written
        first (ties: lowest slot), as int64 ids. ``O(S log S)`` over the claimed slots."""
        lo = self.max_slots - self.claimed
        sel = lo + np.flatnonzero((self.slot_node[lo:] >= 0) & (self.slot_layer[lo:] == layer))
        order = np.argsort(self.slot_iter[sel], kind="stable")[:n]
        return self.slot_node[sel[order]].astype(np.int64)

    # ---- writing -------------------------------------------------------------------------
    def admit(self, layer: int, nodes: np.ndarray, values: Tensor, now: int) -> int:
        """Write ``values [k, dim]`` as the layer-``layer`` entries of ``nodes`` (distinct, in
        priority order). Returns the number written: with the table full, the capacity guard
        may turn some away. Cost ``O(k log k)`` plus the replacement order's (:mod:`.slots`),
        independent of the table size."""
        k = min(len(nodes), self.max_slots)
        if k == 0:
            return 0
        nodes = np.asarray(nodes[:k], dtype=np.int64)
        node_slot = self.node_slot[layer]
        lo = self.max_slots - self.claimed
        self.order.sync(now, lo)
        slots = node_slot[nodes].astype(np.int64)  # a node's own (stale) slot is rewritten in place
        own = slots[slots >= 0]
        self.expired += int(np.count_nonzero(now - self.slot_iter[own] > self._stale_after))
        # Own slots are about to be rewritten: fresh from now on (so the free heap skips them) and
        # no longer live under their old version (so they are not chosen as victims).
        self.slot_iter[own] = now
        self.slot_ver[own] += 1
        need = np.flatnonzero(slots < 0)
        if len(need):
            got = self._free_slots(len(need), now)
            self.expired += int(np.count_nonzero(self.slot_node[got] >= 0))  # stale entries of other nodes
            slots[need[: len(got)]] = got
            rest = need[len(got):]
            if len(rest):  # table full
                victims, chosen = self._victims(nodes[rest], now)
                slots[rest[chosen]] = victims
        ok = np.flatnonzero(slots >= 0)
        nodes, slots = nodes[ok], slots[ok]
        # Unmap whoever held a reassigned slot (a stale, free-d or replaced entry of another node).
        old_layer, old_node = self.slot_layer[slots], self.slot_node[slots]
        moved = (old_node >= 0) & ((old_node != nodes) | (old_layer != layer))
        for l in np.unique(old_layer[moved]):
            sel = moved & (old_layer == l)
            self.node_slot[int(l)][old_node[sel]] = -1
        self.slot_node[slots], self.slot_layer[slots], self.slot_iter[slots] = nodes, layer, now
        self.slot_ver[slots] += 1
        node_slot[nodes] = slots
        self.order.append(slots, now, self.max_slots - self.claimed)
        rows = values[: k].detach()[torch.from_numpy(ok).to(values.device)]
        self.table[torch.from_numpy(slots).to(self.table.device)] = rows.to(self.table)
        return len(nodes)

    def evict(self, layer: int, nodes: np.ndarray) -> int:
        """Drop the layer-``layer`` entries of ``nodes`` (slots stay claimed and become free)."""
        s = self.node_slot[layer][nodes].astype(np.int64)
        s = s[s >= 0]
        self.slot_node[s], self.slot_layer[s], self.slot_iter[s] = -1, -1, NEVER
        self.slot_ver[s] += 1
        self.node_slot[layer][nodes] = -1
        self.order.release(s)
        return len(s)

    def clear(self) -> None:
        """Drop every entry and release every claimed row (the feature cache may refill them)."""
        self.slot_node[:], self.slot_layer[:], self.slot_iter[:] = -1, -1, NEVER
        self.slot_ver += 1  # every earlier run entry is dead
        for ns in self.node_slot.values():
            ns[:] = -1
        self.claimed = 0
        self.order.invalidate()

    def _free_slots(self, n: int, now: int) -> np.ndarray:
        """Up to ``n`` slots that cost no valid entry: empty or stale ones (lowest first), then new
        rows claimed from the feature region. Never a slot being rewritten by its own node."""
        out = self.order.take_free(n, now)
        lo = self.max_slots - self.claimed
        grow = min(n - len(out), lo)
        if grow > 0:
            self._claim(grow)
            out = np.concatenate([out, np.arange(lo - grow, lo)])
        return out

    def _victims(self, incoming: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray]:
        """Valid entries to replace for ``incoming`` nodes, and which of those get a slot.

        Without ``weight``: the oldest entries (ties: lowest slot), for all of them. With
        ``weight`` (e.g. degree: a node's expected hits per iteration), an entry is worth
        ``weight × remaining life`` and an incoming node ``weight × (staleness + 1)``; the most
        valuable newcomers replace the least valuable entries (ties: lowest slot) while they are
        worth more. Without a staleness limit every life is the same (infinite), so both are
        worth their ``weight``. Only the ``len(incoming)`` least valuable entries are looked at
        (:meth:`SlotOrder.least_valuable`), never the whole table.
        """
        worst, v_old = self.order.least_valuable(len(incoming), now)
        r = len(worst)
        if self.weight is None:
            return worst, np.arange(r)
        life = 1.0 if self.staleness is None else float(self._stale_after + 1)
        v_new = self.weight[incoming] * life
        best = np.argsort(-v_new, kind="stable")[:r]
        c = int(np.sum(v_new[best] > v_old))  # both sorted: a prefix wins
        return worst[:c], best[:c]

    def _claim(self, rows: int) -> None:
        self.claimed += rows
        if self.feature_cache is not None:
            free_from = self._base + (self.max_slots - self.claimed) * self.row_floats  # first float now ours
            self.feature_cache.truncate(free_from // self.feature_cache.dim)

    # ---- figures and state ---------------------------------------------------------------
    @property
    def entries(self) -> int:
        return int((self.slot_node >= 0).sum())

    def occupancy(self) -> float:
        """Entries over capacity (0 when the budget holds no embedding row)."""
        return self.entries / self.max_slots if self.max_slots else 0.0

    @property
    def dtype_name(self) -> str:
        """The entries' dtype as the config names it (``float32``, ``float16``)."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def bytes_used(self) -> int:
        """Bytes of the shared budget in use: valid feature rows plus claimed embedding rows."""
        feat = self.feature_cache.bytes_used if self.feature_cache is not None else 0
        return feat + self.claimed * self.row_floats * 4

    def state_dict(self) -> dict[str, Any]:
        lo = self.max_slots - self.claimed
        return {"version": self.VERSION, "claimed": self.claimed, "rows": self.table[lo:].cpu().clone(),
                "slot_node": torch.from_numpy(self.slot_node[lo:].copy()),
                "slot_layer": torch.from_numpy(self.slot_layer[lo:].copy()),
                "slot_iter": torch.from_numpy(self.slot_iter[lo:].copy()),
                "max_slots": self.max_slots, "dim": self.dim, "layers": list(self.layers), "expired": self.expired,
                "dtype": self.dtype_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, self.VERSION, "history cache")
        mine = (self.max_slots, self.dim, self.layers, self.dtype_name)
        # states saved before entries had a dtype hold float32 ones
        if (state["max_slots"], state["dim"], list(state["layers"]), state.get("dtype", "float32")) != mine:
            raise ValueError("history cache state does not match this cache (budget, width, layers or entry dtype "
                             "differ)")
        self.clear()
        self._claim(int(state["claimed"]))
        lo = self.max_slots - self.claimed
        self.table[lo:] = state["rows"].to(self.table)
        self.slot_node[lo:], self.slot_layer[lo:] = state["slot_node"].numpy(), state["slot_layer"].numpy()
        self.slot_iter[lo:] = state["slot_iter"].numpy()
        self.expired = int(state.get("expired", 0))  # absent from states saved before it was counted
        used = self.slot_node >= 0
        for l in self.layers:
            sel = used & (self.slot_layer == l)
            self.node_slot[l][self.slot_node[sel]] = np.flatnonzero(sel)
        self.order.invalidate()
