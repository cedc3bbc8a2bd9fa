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
    assert eng.policy.max_age == 20 and eng.policy.name == "refresh" if policy != "gas" else True


def test_embedding_share_is_validated_and_reaches_the_config():
    with pytest.raises(ValueError, match="embedding_share"):
        HistoryConfig(embedding_share=1.5)
    cfg = TrainConfig.from_dict({"engine": "refresh", "layers": 3, "history": {"embedding_share": 0.3},
                                 "minibatch": MiniBatchConfig().__dict__})
    assert cfg.history.resolved_embedding_share() == 0.3
    assert HistoryConfig(policy="refresh-paper").resolved_embedding_share() == 1.0
