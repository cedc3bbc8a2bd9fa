"""The budget split between feature rows and embeddings (embedding_share, refresh vs refresh-paper),
admission into a capped full table, and the count of entries that expired."""
import numpy as np
import pytest
import torch

from approxgnn.history import HistoryConfig, HistoryEngine
from approxgnn.history.arena import arena_floats, cache_bytes, embedding_rows
from approxgnn.history.cache import HistoryCache
from approxgnn.history.config import DEFAULT_EMBEDDING_SHARE
from approxgnn.minibatch import ArrayFeatureStore, CachedFeatureStore, MiniBatchConfig
from approxgnn.train import TrainConfig

N, F, D = 50, 4, 8  # nodes, feature width, embedding width (an embedding row is two feature rows)


def features() -> np.ndarray:
    return np.arange(N * F, dtype=np.float32).reshape(N, F)


def capped(arena_floats_: int, share: float, staleness: int | None = 5, weight: np.ndarray | None = None):
    store = ArrayFeatureStore(features())
    arena = torch.zeros(arena_floats_)
    fc = CachedFeatureStore(store, np.arange(N)[::-1].copy(), arena)  # node 49 first ("highest degree")
    hc = HistoryCache(N, [1], D, arena, fc, staleness, weight=weight,
                      max_rows=embedding_rows(arena_floats_, D, share))
    return store, fc, hc


def test_share_caps_the_embedding_rows_and_the_rest_stays_feature_rows():
    store, fc, hc = capped(40 * F, share=0.4)  # 160 floats: 64 may become embeddings (8 rows)
    assert hc.max_slots == 8 and fc.num_valid == 40
    hc.admit(1, np.arange(20), torch.ones(20, D), now=1)  # more than the cap asks for rows
    assert hc.claimed == 8 and hc.entries == 8
    assert fc.num_valid == 24, "exactly the cap's floats were taken from the least valuable feature rows"
    assert set(fc.order[: fc.num_valid]) == set(range(26, 50)), "the highest-degree rows stay"
    before = store.bytes_read
    assert torch.equal(fc.read(np.arange(26, 50)), torch.from_numpy(features()[26:50]))
    assert store.bytes_read == before, "the kept feature rows are still served from the cache"


def test_share_zero_is_a_feature_cache_and_one_is_the_papers_split():
    _, fc0, hc0 = capped(40 * F, share=0.0)
    assert hc0.admit(1, np.arange(5), torch.ones(5, D), now=1) == 0 and fc0.num_valid == 40
    _, fc1, hc1 = capped(40 * F, share=1.0)
    hc1.admit(1, np.arange(30), torch.ones(30, D), now=1)
    assert hc1.claimed == 20 and fc1.num_valid == 0, "uncapped: embeddings displace every feature row"


def test_full_capped_table_admits_by_value_without_touching_feature_rows():
    weight = np.ones(N)
    weight[[0, 1, 2, 3, 10]] = [9.0, 1.0, 8.0, 7.0, 0.5]
    _, fc, hc = capped(20 * F, share=0.4, staleness=10, weight=weight)  # 4 embedding rows
    hc.admit(1, np.array([0, 1, 5, 6]), torch.zeros(4, D), now=0)  # full (weights 9, 1, 1, 1)
    rows_before = fc.num_valid
    # At now=1 a weight-1 entry is worth 1 x 10 hits; newcomers 2 (8 x 11) and 3 (7 x 11) replace two
    # of them, newcomer 10 (0.5 x 11) is turned away; the hub (node 0, 9 x 10) stays.
    assert hc.admit(1, np.array([10, 2, 3]), torch.ones(3, D), now=1) == 2
    held = set(np.flatnonzero(hc.node_slot[1] >= 0))
    assert {0, 2, 3} <= held and len(held) == 4 and 10 not in held
    assert fc.num_valid == rows_before and hc.claimed == 4


def test_expired_counts_entries_rewritten_or_replaced_after_going_stale():
    _, _, hc = capped(40 * F, share=1.0, staleness=2)
    hc.admit(1, np.array([0, 1, 2]), torch.zeros(3, D), now=1)
    hc.admit(1, np.array([0]), torch.zeros(1, D), now=3)  # age 2: still fresh, rewritten in place
    assert hc.expired == 0
    hc.admit(1, np.array([1]), torch.zeros(1, D), now=4)  # age 3: stale, its own slot is rewritten
    assert hc.expired == 1
    hc.admit(1, np.array([7]), torch.zeros(1, D), now=4)  # takes node 2's stale slot
    assert hc.expired == 2 and hc.node_slot[1][2] == -1
    state = hc.state_dict()
    _, _, again = capped(40 * F, share=1.0, staleness=2)
    again.load_state_dict(state)
    assert again.expired == 2


def test_arena_sizing_counts_only_the_capped_slots_metadata():
    budget = 200_000
    full = arena_floats(budget, 1000, 16, 32, 1, 20)
    half = arena_floats(budget, 1000, 16, 32, 1, 20, share=0.5)
    assert half > full, "fewer slots, less metadata, more arena"
    assert cache_bytes(half, 1000, 16, 32, 1, 20, 0.5) <= budget < cache_bytes(half + 16, 1000, 16, 32, 1, 20, 0.5)


@pytest.mark.parametrize("policy, share", [("refresh", DEFAULT_EMBEDDING_SHARE["refresh"]), ("refresh-paper", 1.0),
                                           ("gas", 1.0)])
def test_engine_build_applies_the_policys_split(policy, share):
    store = ArrayFeatureStore(np.ones((1000, 16), np.float32))
    cfg = HistoryConfig(policy=policy, staleness=20)
    eng = HistoryEngine.build(cfg, store, np.arange(1000), np.ones(1000), 3, 32, 200_000, torch.device("cpu"))
    arena = eng.features.rows.untyped_storage().nbytes() // 4
    assert eng.cache.max_slots == embedding_rows(arena, 32, None if share >= 1 else share)
    expected = (None, "gas") if policy == "gas" else (20, "refresh")  # the ReFresh names expire alike
    assert (eng.rules.staleness, eng.rules.name) == expected


def test_staleness_is_one_name_from_the_config_to_the_prune_test_and_old_names_warn():
    store = ArrayFeatureStore(np.ones((1000, 16), np.float32))
    eng = HistoryEngine.build(HistoryConfig(policy="refresh", staleness=7), store, np.arange(1000), np.ones(1000), 3,
                              32, 200_000, torch.device("cpu"))
    assert eng.cached_layers == (1,)  # the default for 3 layers: the layer below the top one
    assert eng.rules.staleness == eng.cache.staleness == 7
    assert all(t.staleness == 7 for t in eng.prune_tests(100).values())
    with pytest.warns(DeprecationWarning, match="staleness"):
        assert eng.rules.max_age == 7
    with pytest.warns(DeprecationWarning, match="cached_layers"):
        assert eng.layers == (1,)
    gas = HistoryEngine.build(HistoryConfig(policy="gas"), store, np.arange(1000), np.ones(1000), 3, 32, 200_000,
                              torch.device("cpu"))
    assert gas.rules.staleness is None and gas.cache.staleness is None  # never stale


def test_embedding_share_is_validated_and_reaches_the_config():
    with pytest.raises(ValueError, match="embedding_share"):
        HistoryConfig(embedding_share=1.5)
    cfg = TrainConfig.from_dict({"engine": "refresh", "layers": 3, "history": {"embedding_share": 0.3},
                                 "minibatch": MiniBatchConfig().__dict__})
    assert cfg.history.resolved_embedding_share() == 0.3
    assert HistoryConfig(policy="refresh-paper").resolved_embedding_share() == 1.0


# --- the same choices under real training: SAGE 3 x 32 on a 600-node planted graph, 16-d features,
# so an embedding row costs two feature rows; 7 batches an epoch, dropout on, Adam steps.

def _train(policy: str, epochs: int = 3, cache_mb: float = 0.03, staleness: int = 2,
           cached_layers: list[int] | None = None, switch_time: float = 1.0):
    from helpers import planted_dataset

    from approxgnn.train import build_trainer

    # The plain path caching outputs: a hit prunes its whole sub-tree, every hop is sampled.
    cfg = TrainConfig(dataset="planted", model="sage", engine="refresh", layers=3, hidden=32, epochs=epochs,
                      lr=0.01, dropout=0.3, progress=False, seed=0, precompute="off",
                      minibatch=MiniBatchConfig(fanouts=[4, 4, 4], batch_size=32, cache_mb=cache_mb),
                      history=HistoryConfig(policy=policy, staleness=staleness, cached_layers=cached_layers,
                                            switch_time=switch_time, cached_value="output"))
    trainer = build_trainer(cfg, planted_dataset(n=600))
    log = [trainer.train_epoch(e) for e in range(epochs)]
    return trainer, log


def test_capped_split_holds_through_training_and_reads_fewer_bytes_than_the_papers_split():
    none = _train("none")[1][-1]["feature_bytes_read"]
    runs = {p: _train(p) for p in ("refresh", "refresh-paper")}
    for policy, (trainer, log) in runs.items():
        hc, fc = trainer.history.cache, trainer.feature_cache
        assert hc.claimed == hc.max_slots, f"{policy}: the table filled, so admission ran on a full table"
        assert hc.expired > 0, f"{policy}: entries went stale and were replaced during training"
        assert log[-1]["feature_bytes_read"] < none
    trainer, log = runs["refresh"]
    fc, hc = trainer.feature_cache, trainer.history.cache
    arena = fc.rows.untyped_storage().nbytes() // 4
    assert hc.max_slots == embedding_rows(arena, 32, DEFAULT_EMBEDDING_SHARE["refresh"])
    assert fc.num_valid * fc.dim >= arena - hc.max_slots * 32 - fc.dim, "only the capped share left feature rows"
    assert runs["refresh-paper"][0].feature_cache.num_valid <= 1, "the paper's split gives embeddings everything"
    # an embedding row costs two feature rows here; keeping the hubs' feature rows pays
    assert log[-1]["feature_bytes_read"] < runs["refresh-paper"][1][-1]["feature_bytes_read"]


def test_default_cached_layer_prunes_two_hops_and_layer_zero_only_the_last():
    """A hit on the second-to-last layer's output (hop 1) drops its whole subtree (hops 2 and 3); a
    hit on layer 0's output (hop 2) drops only its hop-3 neighbours, so per embedding row it saves less."""
    hops = {}
    for name, layers in (("none", None), ("default", None), ("layer0", [0])):
        trainer, log = _train("none" if name == "none" else "gas", epochs=2, cached_layers=layers)
        hops[name] = (log[-1]["sampled_nodes_per_hop"], log[-1]["feature_bytes_read"])
        if name == "default":
            assert trainer.history.cached_layers == (1,)
    (h_none, b_none), (h_def, b_def), (h_0, b_0) = hops["none"], hops["default"], hops["layer0"]
    assert h_def[2] < h_none[2] and h_def[3] < h_none[3]
    assert h_0[2] == h_none[2] and h_0[3] < h_none[3]
    assert b_def < b_0 < b_none


@pytest.mark.parametrize("policy", ["gas", "refresh"])
def test_switch_to_exact_clears_history_and_refills_the_feature_rows(policy):
    """``switch_time = 0.5`` of 4 epochs: epochs 0-1 use the history, 2-3 train exactly, with the
    whole budget holding feature rows again, re-read from the store and counted as bytes read."""
    none = _train("none", epochs=4)[1]
    trainer, log = _train(policy, epochs=4, switch_time=0.5)
    assert [r["exact"] for r in log] == [False, False, True, True]
    assert log[1]["hit_rate"] > 0 and log[1]["admitted"] > 0
    for r, r_none in zip(log[2:], none[2:]):
        assert r["hit_rate"] == 0 and r["admitted"] == 0 and r["entries"] == 0
        assert r["sampled_nodes_per_hop"] == r_none["sampled_nodes_per_hop"], "no pruning once exact"
    fc, store = trainer.feature_cache, trainer.store
    assert trainer.history.cache.claimed == 0 and fc.num_valid == fc.capacity
    assert log[1]["feature_cache_rows"] < fc.capacity, "embeddings had displaced feature rows"
    assert torch.equal(fc.rows, torch.from_numpy(np.asarray(store.x[fc.order]))), "refilled rows are the features"
    # switch_time 0: exact throughout with the same arena, so the same batches read the same rows
    # (sampling does not depend on the weights); the difference in epoch 2 is the refill.
    _, log0 = _train(policy, epochs=3, switch_time=0.0)
    assert all(r["exact"] and r["feature_cache_rows"] == fc.capacity for r in log0)
    refilled = (fc.capacity - log[1]["feature_cache_rows"]) * fc.dim * 4
    assert log[2]["feature_bytes_read"] - log0[2]["feature_bytes_read"] == refilled, "the re-reads are counted"


def test_switch_time_is_validated():
    with pytest.raises(ValueError, match="switch_time"):
        HistoryConfig(switch_time=1.5)


# --- entries stored as float16 (``entry_dtype``): twice the entries in the same bytes ---------------

def test_float16_entries_hold_twice_the_rows_and_never_overlap_the_feature_rows():
    store = ArrayFeatureStore(features())
    for dim, row_floats in ((D, D // 2), (5, 3)):  # an odd width is padded to whole floats
        arena = torch.zeros(40 * F)
        fc = CachedFeatureStore(store, np.arange(N)[::-1].copy(), arena)
        share = embedding_rows(arena.numel(), HistoryCache.row_floats_for(dim, torch.float16), 0.4)
        hc = HistoryCache(N, [1], dim, arena, fc, 5, max_rows=share, dtype=torch.float16)
        assert hc.row_floats == row_floats and hc.max_slots == int(0.4 * 160) // row_floats
        values = torch.randn(30, dim) * 100
        assert hc.admit(1, np.arange(30), values, now=1) == min(30, hc.max_slots)
        k = hc.max_slots
        rows, ages = hc.read(1, np.arange(k), now=2)
        assert rows.dtype == torch.float16 and torch.equal(rows, values[:k].half()) and (ages == 1).all()
        assert hc.bytes_used <= arena.numel() * 4 and fc.num_valid * F <= hc._base + (hc.max_slots - k) * row_floats
        kept = fc.order[: fc.num_valid]
        assert torch.equal(fc.read(kept), torch.from_numpy(features()[kept])), "no feature row was overwritten"


def test_float16_state_round_trips_and_refuses_a_float32_cache():
    def cache(dtype):
        return HistoryCache(N, [0], D, torch.zeros(12 * D), None, 10, dtype=dtype)

    a = cache(torch.float16)
    a.admit(0, np.arange(7), torch.randn(7, D), now=3)
    b = cache(torch.float16)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.read(0, np.arange(7), 4)[0], a.read(0, np.arange(7), 4)[0])
    with pytest.raises(ValueError, match="entry dtype"):
        cache(torch.float32).load_state_dict(a.state_dict())
    old = cache(torch.float32).state_dict()
    del old["dtype"]  # saved before entries had a dtype: float32
    cache(torch.float32).load_state_dict(old)


def test_entry_dtype_is_validated_and_reaches_the_engine_and_the_cli():
    from approxgnn.cli import build_parser, config_from_args

    with pytest.raises(ValueError, match="entry_dtype"):
        HistoryConfig(entry_dtype="int8")
    store = ArrayFeatureStore(np.ones((1000, 16), np.float32))
    engines = {d: HistoryEngine.build(HistoryConfig(policy="refresh", staleness=20, entry_dtype=d), store,
                                      np.arange(1000), np.ones(1000), 3, 32, 200_000, torch.device("cpu"))
               for d in ("float32", "float16")}
    assert engines["float16"].cache.table.dtype == torch.float16
    share = DEFAULT_EMBEDDING_SHARE["refresh"]
    for dtype, eng in engines.items():
        arena = eng.features.rows.untyped_storage().nbytes() // 4
        assert eng.cache.max_slots == embedding_rows(arena, 32 // (2 if dtype == "float16" else 1), share)
    # more entries in the same budget; fewer than twice, as each slot's metadata is counted in it too
    assert 1.5 < engines["float16"].cache.max_slots / engines["float32"].cache.max_slots < 2
    args = build_parser().parse_args(["train", "--engine", "refresh", "--history-dtype", "float16"])
    assert config_from_args(args).history.entry_dtype == "float16"


def test_float16_entries_in_half_the_share_leave_the_rest_to_feature_rows():
    """Real training (dropout, Adam, 3 epochs, entries expiring): float16 entries in half the share
    are as many as float32 ones in the whole share, and the bytes they free hold feature rows, so every
    epoch reads fewer feature bytes. In the whole share they are more entries (more hits)."""
    from helpers import planted_dataset

    from approxgnn.train import build_trainer

    def train(dtype: str, share: float | None):
        cfg = TrainConfig(dataset="planted", model="sage", engine="refresh", layers=3, hidden=32, epochs=3,
                          lr=0.01, dropout=0.3, progress=False, seed=0, precompute="off",
                          minibatch=MiniBatchConfig(fanouts=[4, 4, 4], batch_size=32, cache_mb=0.03),
                          history=HistoryConfig(policy="refresh", staleness=2, cached_value="aggregate",
                                                entry_dtype=dtype, embedding_share=share))
        trainer = build_trainer(cfg, planted_dataset(n=600))
        log = [trainer.train_epoch(e) for e in range(3)]
        assert trainer.history.cache.table.dtype == getattr(torch, dtype) and trainer.history.cache.expired > 0
        assert all(np.isfinite(r["loss"]) for r in log)
        return log

    f32, f16_half, f16 = train("float32", 0.5), train("float16", 0.25), train("float16", 0.5)
    for a, b in zip(f32, f16_half):
        assert b["entries"] == a["entries"] and b["feature_cache_rows"] > a["feature_cache_rows"]
        assert b["feature_bytes_read"] < a["feature_bytes_read"]
    assert f16[-1]["entries"] > f32[-1]["entries"] and f16[-1]["hit_rate"] > f32[-1]["hit_rate"]
