"""Feature store and cache, history cache (budget, staleness, capacity guard), admission rules."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from approxgnn.graph import CSRGraph
from approxgnn.history.cache import HistoryCache
from approxgnn.history import HistoryEngine
from approxgnn.history.policies import admission_order, eviction_mask
from approxgnn.minibatch import ArrayFeatureStore, CachedFeatureStore, NeighborSampler, write_features
from approxgnn.minibatch.stores import degree_order
from approxgnn.history import HistoryConfig
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.train import TrainConfig

N, F, D = 50, 4, 6  # nodes, feature width, embedding width


def features() -> np.ndarray:
    return np.arange(N * F, dtype=np.float32).reshape(N, F)


def shared(budget_floats: int, staleness: int | None = 5):
    """A feature cache and a history cache sharing one arena, as the trainer builds them."""
    store = ArrayFeatureStore(features())
    arena = torch.zeros(budget_floats)
    fc = CachedFeatureStore(store, np.arange(N)[::-1].copy(), arena)  # node 49 is "highest degree"
    return store, fc, HistoryCache(N, [0, 1], D, arena, fc, staleness)


def test_store_counts_rows_and_bytes_and_memmap_roundtrip(tmp_path):
    x = features()
    store = ArrayFeatureStore(x)
    assert torch.equal(store.read(np.array([3, 1, 3])), torch.from_numpy(x[[3, 1, 3]]))
    assert store.counters() == {"rows_read": 3, "bytes_read": 3 * F * 4}
    mm = write_features(tmp_path / "x.npy", x)
    disk = ArrayFeatureStore.open(tmp_path / "x.npy")
    assert isinstance(mm, np.memmap) and disk.on_disk and not store.on_disk
    assert torch.equal(disk.read(np.arange(N)), torch.from_numpy(x))


def test_feature_cache_serves_top_rows_without_counting_them():
    store, fc, _ = shared(budget_floats=10 * F)
    assert fc.num_valid == 10 and set(fc.order) == set(range(40, 50))
    before = store.bytes_read
    out = fc.read(np.array([49, 0, 45, 1]))
    assert torch.equal(out, torch.from_numpy(features()[[49, 0, 45, 1]]))
    assert store.bytes_read - before == 2 * F * 4 and fc.rows_served == 2


def test_degree_order_puts_hubs_first():
    g = CSRGraph.from_edge_index(np.array([[0, 0, 0, 1], [1, 2, 3, 2]]), 5)
    assert list(degree_order(g.rowptr.numpy())) == [0, 1, 2, 3, 4]


def test_embeddings_displace_feature_rows_which_are_never_served_again():
    store, fc, hc = shared(budget_floats=12 * F)  # 12 feature rows, or 8 embedding rows
    assert hc.max_slots == 8 and fc.num_valid == 12
    hc.admit(1, np.array([0, 1, 2]), torch.full((3, D), 1e6), now=1)  # 18 floats: 5 feature rows lost
    assert fc.num_valid == 7 and hc.bytes_used <= 12 * F * 4
    out = fc.read(np.arange(N))  # the arena tail now holds 1e6 garbage for features
    assert torch.equal(out, torch.from_numpy(features())), "an invalidated feature row was served"
    assert (fc.slot[fc.order[7:]] == -1).all()


@settings(max_examples=25, deadline=None)
@given(budget=st.integers(0, 60), ops=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 12), st.booleans()),
                                               max_size=12))
def test_cache_never_exceeds_budget_and_stays_consistent(budget, ops):
    _, fc, hc = shared(budget_floats=budget, staleness=3)
    rng = np.random.default_rng(budget)
    for now, (layer, k, evict) in enumerate(ops, start=1):
        nodes = rng.choice(N, k, replace=False)
        if evict:
            hc.evict(layer, nodes)
        else:
            hc.admit(layer, nodes, torch.randn(k, D), now)
        assert hc.bytes_used <= budget * 4 and hc.claimed <= hc.max_slots
        assert fc.num_valid * F <= budget - hc.claimed * D
        for l, ns in hc.node_slot.items():  # node→slot and slot→node agree
            held = np.flatnonzero(ns >= 0)
            assert np.array_equal(hc.slot_node[ns[held]], held) and (hc.slot_layer[ns[held]] == l).all()
        assert hc.entries == sum(int((ns >= 0).sum()) for ns in hc.node_slot.values())


def test_staleness_is_exact_per_entry():
    _, _, hc = shared(budget_floats=40 * D, staleness=5)
    hc.admit(1, np.array([3]), torch.ones(1, D), now=10)
    hc.admit(1, np.array([4]), torch.ones(1, D), now=12)
    assert hc.fresh(1, np.array([3, 4]), 15).tolist() == [True, True]  # age 5 is still fresh
    assert hc.fresh(1, np.array([3, 4]), 16).tolist() == [False, True]  # age 6 is a miss
    assert not hc.fresh(0, np.array([3]), 11)[0], "entries are per layer"
    with pytest.raises(KeyError, match="stale"):
        hc.read(1, np.array([3]), 16)
    rows, ages = hc.read(1, np.array([4]), 16)
    assert ages.tolist() == [4] and torch.equal(rows, torch.ones(1, D))
    test = hc.prune_test(1, 16)
    assert test.now == 16 and test.staleness == 5 and test.node_slot[4] >= 0


def test_capacity_guard_reuses_stale_then_grows_then_replaces_oldest():
    _, fc, hc = shared(budget_floats=3 * D, staleness=2)  # room for 3 embeddings
    hc.admit(1, np.array([0]), torch.zeros(1, D), now=1)
    hc.admit(1, np.array([1]), torch.zeros(1, D), now=2)
    assert hc.claimed == 2
    hc.admit(1, np.array([2]), torch.zeros(1, D), now=4)  # node 0 is stale (age 3): its slot is reused
    assert hc.claimed == 2 and hc.node_slot[1][0] == -1 and hc.node_slot[1][2] >= 0
    hc.admit(1, np.array([3]), torch.zeros(1, D), now=4)  # nothing stale: grow into the features
    assert hc.claimed == 3 and fc.num_valid == 0
    hc.admit(1, np.array([5, 6]), torch.zeros(2, D), now=4)  # full: replace the two oldest (1, then 2 or 3)
    assert hc.node_slot[1][1] == -1 and hc.entries == 3
    assert hc.admit(1, np.arange(10, 20), torch.zeros(10, D), now=5) == 3, "never more than the capacity"


def test_weighted_capacity_guard_keeps_the_entries_worth_most_hits():
    weight = np.ones(N)
    weight[[1, 2, 3]] = [10.0, 1.0, 5.0]
    weight[[7, 8]] = [4.0, 0.5]
    hc = HistoryCache(N, [1], D, torch.zeros(3 * D), None, staleness=10, weight=weight)
    hc.admit(1, np.array([1, 2, 3]), torch.zeros(3, D), now=0)  # full
    # At now=1: node 2 is worth 1×10 hits; newcomer 7 is worth 4×11, newcomer 8 only 0.5×11.
    assert hc.admit(1, np.array([8, 7]), torch.ones(2, D), now=1) == 1
    held = set(np.flatnonzero(hc.node_slot[1] >= 0))
    assert held == {1, 3, 7}, "7 replaced the least valuable entry; 8 was turned away"


def test_state_dict_roundtrip():
    _, fc, hc = shared(budget_floats=20 * D, staleness=None)
    hc.admit(0, np.array([1, 2]), torch.randn(2, D), now=3)
    hc.admit(1, np.array([2, 7]), torch.randn(2, D), now=4)
    state = hc.state_dict()
    _, fc2, hc2 = shared(budget_floats=20 * D, staleness=None)
    hc2.load_state_dict(state)
    fc2.load_state_dict(fc.state_dict())
    assert hc2.claimed == hc.claimed and fc2.num_valid == fc.num_valid
    for l in (0, 1):
        assert np.array_equal(hc2.node_slot[l], hc.node_slot[l])
        nodes = np.flatnonzero(hc.node_slot[l] >= 0)
        assert torch.equal(hc2.read(l, nodes, 100)[0], hc.read(l, nodes, 100)[0])


def test_admission_and_eviction_quantiles():
    g = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 0.5, 6.0, 7.0, 8.0, 9.0])
    order = admission_order(g, 0.5)  # quantile 0.5 = 4.5: admit 0.5, 1, 2, 3, 4 (smallest first)
    assert g[order].tolist() == [0.5, 1.0, 2.0, 3.0, 4.0]
    assert len(admission_order(g, 1.0)) == 10
    assert eviction_mask(g, 0.8).sum() == 2 and g[eviction_mask(g, 0.8)].min() == 8.0
    assert not eviction_mask(g, 1.0).any()


def test_engine_admits_stable_non_seed_candidates_only():
    rng = np.random.default_rng(0)
    n = 60
    src = np.repeat(np.arange(n), 5)
    graph = CSRGraph.from_edge_index(np.stack([src, rng.integers(0, n, src.size)]), n)
    batch = NeighborSampler(graph, [4, 3]).sample(np.arange(5), 1)
    m = batch.num_computed[0]
    cache = HistoryCache(n, [0], D, torch.zeros(1000 * D), None, staleness=10)
    already = batch.layer_nodes[0][5]
    cache.admit(0, np.array([already]), torch.zeros(1, D), now=0)  # a fresh entry: not a candidate
    engine = HistoryEngine(cache, "refresh", rate=0.5)
    h = torch.randn(m, D, requires_grad=True)
    h.grad = torch.zeros(m, D)
    h.grad[:, 0] = torch.arange(m, dtype=torch.float32)  # ‖∂L/∂h_v‖ grows with the row
    engine.update(batch, {0: h}, {}, now=1)
    cand_nodes = batch.layer_nodes[0][6:m]  # rows 0..4 are seeds, row 5 is already cached
    norms = np.arange(6, m, dtype=np.float64)
    admitted = cand_nodes[norms <= np.quantile(norms, 0.5)]
    assert set(np.flatnonzero((cache.node_slot[0] >= 0))) == set(admitted) | {already}
    assert cache.slot_iter[cache.node_slot[0][already]] == 0, "a fresh entry is not rewritten"
    assert h.grad is None, "retained gradients are cleared each step"
    got = cache.read(0, admitted, 2)[0]
    rows = {v: i for i, v in enumerate(batch.layer_nodes[0])}
    assert torch.equal(got, h.detach()[[rows[v] for v in admitted]])
    assert engine.counts["candidates"] == m - 6 and engine.counts["admitted"] == len(admitted)


def test_engine_evicts_hits_with_large_gradients():
    cache = HistoryCache(20, [0], D, torch.zeros(100 * D), None, staleness=10)
    cache.admit(0, np.arange(10, 20), torch.zeros(10, D), now=0)

    class FakeBatch:  # seeds 0..1, computed 0..1, hits 10..19 at layer 0
        seeds = np.array([0, 1])
        num_computed, num_partial = [2, 2], [0, 0]
        layer_nodes = [np.concatenate([[0, 1], np.arange(10, 20)]), np.array([0, 1])]

        def hits(self, layer):
            return self.layer_nodes[0][2:]

    hit = torch.zeros(10, D, requires_grad=True)
    hit.grad = torch.zeros(10, D)
    hit.grad[:, 0] = torch.arange(10.0)
    engine = HistoryEngine(cache, "refresh", rate=0.8, evict=True)
    engine.update(FakeBatch(), {}, {0: hit}, now=1)
    assert cache.fresh(0, np.arange(10, 20), 1).tolist() == [True] * 8 + [False] * 2


@pytest.mark.parametrize("kw, match", [
    ({"fanouts": [10, 0]}, "fanouts"), ({"fanouts": [-2]}, "fanouts"), ({"batch_size": 0}, "batch_size"),
    ({"rate": 0.0}, "rate"), ({"rate": 1.5}, "rate"), ({"cache_mb": -1}, "budget"),
    ({"staleness": 0}, "staleness"), ({"policy": "lru"}, "policy"), ({"cached_layers": [2]}, "hidden layer"),
    ({"eval_batch_size": 0}, "eval_batch_size"), ({"features_path": "x.csv"}, "npy")])
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({"engine": "refresh", "refresh": kw})


def test_bad_cache_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="staleness"):
        HistoryCache(5, [0], D, torch.zeros(10), None, staleness=0)
    with pytest.raises(ValueError, match="rate"):
        HistoryEngine(HistoryCache(5, [0], D, torch.zeros(10)), "refresh", rate=0.0)


class ReferenceGuard:
    """The capacity guard written out plainly: every decision scans (and sorts) every claimed slot.

    Ties are broken by the lowest slot: oldest first without weights, ``(value, slot)`` with them
    (``value = weight × remaining life``, or ``weight`` alone without a staleness limit).
    """

    def __init__(self, num_nodes, layers, max_slots, staleness, weight):
        self.S, self.staleness, self.w = max_slots, staleness, weight
        self.claimed = 0
        self.slot_node = np.full(max_slots, -1)
        self.slot_layer = np.full(max_slots, -1)
        self.slot_iter = np.full(max_slots, -(1 << 62))
        self.node_slot = {l: np.full(num_nodes, -1) for l in layers}

    def stale(self, s, now):
        return self.staleness is not None and now - self.slot_iter[s] > self.staleness

    def admit(self, layer, nodes, now):
        nodes = np.asarray(nodes[: min(len(nodes), self.S)])
        slots = self.node_slot[layer][nodes].copy()
        keep = set(slots[slots >= 0].tolist())
        need = [i for i in range(len(nodes)) if slots[i] < 0]
        lo = self.S - self.claimed
        free = [s for s in range(lo, self.S) if (self.slot_node[s] < 0 or self.stale(s, now)) and s not in keep]
        free = free[: len(need)]
        grow = min(len(need) - len(free), lo)
        self.claimed += max(grow, 0)
        free += list(range(lo - max(grow, 0), lo))
        for i, s in zip(need, free):
            slots[i] = s
        rest = need[len(free):]
        if rest:
            taken = set(slots[slots >= 0].tolist())
            cand = [s for s in range(self.S - self.claimed, self.S) if s not in taken]
            if self.w is None:
                ranked = sorted(cand, key=lambda s: (self.slot_iter[s], s))[: len(rest)]
                chosen = list(range(len(ranked)))
            else:
                life = lambda s: 1.0 if self.staleness is None else float(self.staleness - (now - self.slot_iter[s]) + 1)
                value = {s: self.w[self.slot_node[s]] * life(s) for s in cand}
                ranked = sorted(cand, key=lambda s: (value[s], s))[: len(rest)]
                new_life = 1.0 if self.staleness is None else float(self.staleness + 1)
                v_new = self.w[nodes[rest]] * new_life
                best = np.argsort(-v_new, kind="stable")[: len(ranked)]
                c = sum(v_new[b] > value[s] for b, s in zip(best, ranked))
                ranked, chosen = ranked[:c], best[:c]
            for s, j in zip(ranked, chosen):
                slots[rest[j]] = s
        for v, s in zip(nodes, slots):
            if s < 0:
                continue
            old_l, old_v = self.slot_layer[s], self.slot_node[s]
            if old_v >= 0 and (old_v != v or old_l != layer):
                self.node_slot[old_l][old_v] = -1
            self.slot_node[s], self.slot_layer[s], self.slot_iter[s] = v, layer, now
            self.node_slot[layer][v] = s
        return int((slots >= 0).sum())

    def evict(self, layer, nodes):
        s = self.node_slot[layer][nodes]
        s = s[s >= 0]
        self.slot_node[s], self.slot_layer[s], self.slot_iter[s] = -1, -1, -(1 << 62)
        self.node_slot[layer][nodes] = -1


@pytest.mark.parametrize("staleness", [3, None])
@pytest.mark.parametrize("weights", ["none", "degree", "real"])
@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_replacement_order_matches_a_full_scan(staleness, weights, seed):
    rng = np.random.default_rng(seed)
    n, slots = 60, 13
    weight = {"none": None, "degree": rng.integers(0, 6, n).astype(np.float64), "real": rng.random(n)}[weights]
    hc = HistoryCache(n, [0, 1], D, torch.zeros(slots * D), None, staleness, weight=weight)
    ref = ReferenceGuard(n, [0, 1], slots, staleness, weight)
    now = 0
    for step in range(300):
        now += int(rng.choice([0, 1, 1, 2, 5])) if rng.random() > 0.03 else -3  # rarely, time goes back
        layer = int(rng.integers(0, 2))
        nodes = rng.choice(n, int(rng.integers(1, 9)), replace=False)
        if rng.random() < 0.15:
            hc.evict(layer, nodes)
            ref.evict(layer, nodes)
        else:
            assert hc.admit(layer, nodes, torch.randn(len(nodes), D), now) == ref.admit(layer, nodes, now)
        assert hc.claimed == ref.claimed, step
        assert np.array_equal(hc.slot_node, ref.slot_node), step
        assert np.array_equal(hc.slot_iter, ref.slot_iter), step
        for l in (0, 1):
            assert np.array_equal(hc.node_slot[l], ref.node_slot[l]), step
    if staleness is not None:  # the run kept expiring and replacing: the order was rebuilt and reused
        assert hc.entries > 0


def test_state_dict_reload_keeps_the_replacement_order():
    rng = np.random.default_rng(3)
    weight = rng.integers(1, 9, N).astype(np.float64)
    a = HistoryCache(N, [0], D, torch.zeros(6 * D), None, 4, weight=weight)
    for now in range(1, 8):
        a.admit(0, rng.choice(N, 5, replace=False), torch.randn(5, D), now)
    b = HistoryCache(N, [0], D, torch.zeros(6 * D), None, 4, weight=weight)
    b.load_state_dict(a.state_dict())
    for now in range(8, 20):
        nodes = rng.choice(N, 5, replace=False)
        vals = torch.randn(5, D)
        assert a.admit(0, nodes, vals, now) == b.admit(0, nodes, vals, now)
        assert np.array_equal(a.node_slot[0], b.node_slot[0]) and np.array_equal(a.slot_iter, b.slot_iter)


def _owned_bytes(*objs, skip=()) -> int:
    """Bytes of every distinct numpy array / tensor storage reachable from ``objs``' attributes."""
    seen, total = set(), 0
    stack = list(objs)
    while stack:
        o = stack.pop()
        for v in vars(o).values():
            items = v.values() if isinstance(v, dict) else [v]
            for a in items:
                if any(a is s for s in skip):
                    continue
                if isinstance(a, torch.Tensor):
                    key, size = ("t", a.untyped_storage().data_ptr()), a.untyped_storage().nbytes()
                elif isinstance(a, np.ndarray):
                    base = a
                    while isinstance(base.base, np.ndarray):
                        base = base.base
                    key, size = ("n", id(base)), base.nbytes
                elif hasattr(a, "__dict__") and type(a).__module__.startswith("approxgnn.history.slots"):
                    stack.append(a)
                    continue
                else:
                    continue
                if key not in seen:
                    seen.add(key)
                    total += size
    return total


@pytest.mark.parametrize("policy", ["feature", "refresh", "refresh-paper", "gas"])
def test_cache_metadata_is_counted_in_the_budget(policy):
    from approxgnn.history.arena import cache_bytes
    from approxgnn.train import TrainConfig, build_trainer

    from helpers import planted_dataset

    data = planted_dataset()
    budget_mb = 0.05
    cfg = TrainConfig(dataset="planted", model="sage", engine="refresh", layers=3, hidden=16, epochs=1,
                      progress=False, minibatch=MiniBatchConfig(fanouts=[4, 4, 4], cache_mb=budget_mb),
                      history=HistoryConfig(policy=policy))
    trainer = build_trainer(cfg, data)
    fc, budget = trainer.feature_cache, int(budget_mb * 2**20)
    hc = trainer.history.cache if trainer.history else None
    owned = _owned_bytes(*[o for o in (fc, hc) if o is not None], skip=(fc.fallback, trainer.sampler.deg))
    assert owned <= budget
    assert owned == fc.rows.untyped_storage().nbytes() + trainer.caches.metadata_bytes()
    # and the budget is used: one more row's worth of arena would not fit
    arena = fc.rows.untyped_storage().nbytes() // 4
    share = cfg.history.resolved_embedding_share()
    args = (data.num_nodes, fc.dim, 16 if hc else None, len(hc.layers) if hc else 0,
            hc.staleness if hc else None, share if hc and share < 1 else None)
    assert cache_bytes(arena, *args) <= budget < cache_bytes(arena + max(fc.dim, 16), *args)
    if hc is not None:
        assert trainer.history.stats()["metadata_bytes"] == hc.metadata_bytes > 0
        assert all(ns.dtype == np.int32 for ns in hc.node_slot.values()) and fc.slot.dtype == np.int32


def test_budget_too_small_for_the_metadata_names_the_flag():
    from approxgnn.train import TrainConfig, build_trainer

    from helpers import planted_dataset

    data = planted_dataset()
    cfg = TrainConfig(dataset="planted", model="sage", engine="refresh", layers=2, hidden=16, epochs=1,
                      progress=False, minibatch=MiniBatchConfig(fanouts=[4, 4], cache_mb=1e-4))
    with pytest.raises(ValueError, match=r"--cache-mb .* at least .* MiB"):
        build_trainer(cfg, data)
