"""The look-ahead cache: Belady over the window against an exhaustive optimum, rows always the
store's, prefetch failures raised (never a hang), and training identical with it on or off."""
import functools
import threading

import numpy as np
import pytest
import torch

from approxgnn.cli import main
from approxgnn.minibatch import ArrayFeatureStore
from approxgnn.minibatch import LookaheadCache
from approxgnn.minibatch.lookahead import LookaheadError
from approxgnn.train import TrainConfig, build_trainer, fit, read_checkpoint, run

from helpers import planted_dataset


def optimum(requests, capacity):
    """Fewest rows fetched to serve ``requests`` (sets) with a buffer of ``capacity`` rows, by
    exhaustive search: after each request the buffer may keep any subset of (buffer ∪ request)."""

    @functools.lru_cache(maxsize=None)
    def best(t, buffer):
        if t == len(requests):
            return 0
        req = requests[t]
        cost = len(req - buffer)
        pool = sorted(buffer | req)
        out = None
        for mask in range(1 << len(pool)):
            keep = frozenset(p for i, p in enumerate(pool) if mask >> i & 1)
            if len(keep) <= capacity:
                c = best(t + 1, keep)
                out = c if out is None else min(out, c)
        return cost + out

    return best(0, frozenset())


def replay(requests, capacity, depth, *, background=True, x=None):
    """Serve ``requests`` through a look-ahead cache planned ``depth`` ahead; return the rows the
    store read, and check every row read equals the store's."""
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3) if x is None else x
    store = ArrayFeatureStore(x)
    cache = LookaheadCache(store, capacity, background=background)
    reqs = [np.array(sorted(r), dtype=np.int64) for r in requests]
    cache.start(reqs[:depth])
    for t, r in enumerate(reqs):
        got = cache.read(r)
        assert torch.equal(got, torch.from_numpy(x[r]))
        cache.advance(reqs[t + depth] if t + depth < len(reqs) else None)
    cache.close()
    assert cache.rows_requested == sum(len(r) for r in reqs)
    return store.rows_read, cache


@pytest.mark.parametrize("background", [True, False])
def test_belady_over_the_whole_sequence_reads_the_exhaustive_optimum(background):
    rng = np.random.default_rng(0)
    prefetched = 0
    for case in range(40):
        universe = int(rng.integers(4, 8))
        requests = [frozenset(rng.choice(universe, int(rng.integers(1, 4)), replace=False).tolist())
                    for _ in range(int(rng.integers(3, 8)))]
        capacity = int(rng.integers(1, 4))
        read, cache = replay(requests, capacity, depth=len(requests), background=background)
        assert read == optimum(requests, capacity), (case, requests, capacity)
        prefetched += cache.rows_prefetched
    assert prefetched > 0  # the prefetch path was taken, and it added no read


def test_a_longer_window_reads_less():
    rng = np.random.default_rng(1)
    requests = [frozenset(rng.choice(40, 12, replace=False).tolist()) for _ in range(30)]
    plain = sum(len(r) for r in requests)
    reads = [replay(requests, 10, depth)[0] for depth in (1, 2, 4, 30)]
    assert reads[0] <= plain  # the next batch alone in view: only its prefetched rows stay while room is left
    assert reads[1] < plain  # rows the next batch reads again are kept
    assert reads[3] <= min(reads[:3])  # the whole sequence in view: the fewest reads


def test_wrong_predictions_cost_reads_never_wrong_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    store = ArrayFeatureStore(x)
    cache = LookaheadCache(store, 12)
    cache.start([rng.choice(50, 10, replace=False) for _ in range(3)])
    for t in range(20):
        ids = rng.integers(0, 50, 15)  # repeats, and rows no prediction named
        assert torch.equal(cache.read(ids), torch.from_numpy(x[ids]))
        cache.advance(rng.choice(50, 10, replace=False))
    cache.close()
    assert cache.rows_served + store.rows_read - cache.rows_prefetched == cache.rows_requested
    assert cache.rows_served > 0


class FailingStore(ArrayFeatureStore):
    """Reads fail from the ``fail_at``-th call on (as a disk would)."""

    def __init__(self, x, fail_at):
        super().__init__(x)
        self.calls, self.fail_at = 0, fail_at

    def read(self, ids):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise OSError(5, "Input/output error (simulated)")
        return super().read(ids)


def test_a_failed_prefetch_is_raised_at_the_next_read_and_frees_its_slots():
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    store = FailingStore(x, fail_at=2)
    cache = LookaheadCache(store, 8)
    cache.start([np.arange(5), np.arange(5, 10)])  # prefetches rows 0..4: call 1
    assert torch.equal(cache.read(np.arange(5)), torch.from_numpy(x[:5]))
    cache.advance(None)  # prefetches rows 5..9 in the worker: call 2 fails there
    with pytest.raises(LookaheadError, match="prefetch of 5 rows .*OSError.*simulated") as err:
        cache.read(np.arange(5, 10))
    assert isinstance(err.value.__cause__, OSError)
    assert (cache.slot[5:10] < 0).all()  # no half-written row is ever served
    held = cache.owner >= 0
    assert held.sum() == 3 and np.array_equal(cache.rows[held], x[cache.owner[held]])  # two gave way to the 5
    store.fail_at = 10**9
    assert torch.equal(cache.read(np.arange(3, 10)), torch.from_numpy(x[3:10]))
    cache.close()


def config(la, policy="none", cache_mb=0.05, epochs=3, **kw):
    rc = {"fanouts": [5, 4], "batch_size": 40, "cache_mb": cache_mb, "policy": policy, "eval_batch_size": 64,
          "lookahead": la, **kw.pop("refresh", {})}
    base = {"dataset": "planted", "model": "sage", "engine": "refresh", "layers": 2, "hidden": 16, "epochs": epochs,
            "dropout": 0.3, "batch_norm": True, "lr": 0.01, "progress": False, "seed": 3, **kw}
    return TrainConfig.from_dict({**base, "refresh": rc})


# Under the history policies the look-ahead takes half of --cache-mb: the run without it gets the
# other half, so that both train with the same feature and history caches.
@pytest.mark.parametrize("policy, off_mb, on_mb", [("none", 0.05, 0.05), ("feature", 0.03, 0.06),
                                                     ("refresh", 0.03, 0.06), ("gas", 0.03, 0.06)])
def test_training_is_identical_with_the_lookahead_on_or_off(policy, off_mb, on_mb):
    data = planted_dataset(n=600, features=24)
    curves, reads = [], []
    for la, mb, prefetch in ((0, off_mb, True), (3, on_mb, True), (3, on_mb, False)):
        result = fit(build_trainer(config(la, policy, mb, refresh={"prefetch": prefetch}), data))
        curves.append([(c["loss"], c["val"], c["test"]) for c in result["curve"]])
        reads.append(sum(c["feature_rows_read"] for c in result["curve"]))
        if la:
            assert result["lookahead"] == 3 and result["cache_split"]["lookahead_rows"] > 0
            assert sum(c["lookahead_rows_served"] for c in result["curve"]) > 0
    assert curves[0] == curves[1] == curves[2]
    assert reads[1] == reads[2] < reads[0]  # same rows read with or without the worker thread; fewer than without


def test_resume_is_exact_with_the_lookahead(tmp_path):
    data = planted_dataset(n=400, features=24)
    kw = dict(policy="refresh", cache_mb=0.06)
    straight = run(config(3, epochs=4, **kw), data)
    run(config(3, epochs=2, out=str(tmp_path), checkpoint_every=2, **kw), data)
    resumed = run(config(3, epochs=4, out=str(tmp_path), checkpoint_every=2, **kw), data,
                  resume_state=read_checkpoint(tmp_path))
    keys = ("loss", "val", "feature_rows_read", "lookahead_rows_served", "lookahead_rows_prefetched", "hit_rate")
    assert [[c[k] for k in keys] for c in straight["curve"]] == [[c[k] for k in keys] for c in resumed["curve"]]
    assert straight["curve"][-1]["lookahead_rows_served"] > 0


def test_a_failing_store_stops_training_with_the_error_and_no_hang():
    data = planted_dataset(n=400, features=24)
    trainer = build_trainer(config(3, "feature", 0.01), data)
    store = trainer.store
    calls = {"n": 0}
    original = store.read

    def read(ids):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(5, "Input/output error (simulated)")
        return original(ids)

    store.read = read
    outcome = {}

    def go():
        try:
            fit(trainer)
        except Exception as e:  # noqa: BLE001 -- inspected below
            outcome["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout=300)  # a hang guard only; the run fails within a few batches
    assert not t.is_alive(), "training hung after a prefetch failed"
    err = outcome.get("error")
    assert isinstance(err, (LookaheadError, OSError)) and "simulated" in str(err)


def test_bad_settings_and_states_are_clear_errors(tmp_path, capsys):
    data = planted_dataset(n=200, features=8)
    with pytest.raises(ValueError, match="lookahead must be >= 0"):
        config(-1)
    with pytest.raises(ValueError, match="lookahead_share must be in"):
        config(2, refresh={"lookahead_share": 0.0})
    with pytest.raises(ValueError, match="look-ahead cache's share of --cache-mb"):
        build_trainer(config(2, "feature", cache_mb=0.0001), data)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--engine", "sample", "--lookahead", "-2", "--no-progress"])
    assert exit_.value.code == 2 and "lookahead must be >= 0" in capsys.readouterr().err
    cache = LookaheadCache(ArrayFeatureStore(np.ones((10, 2), np.float32)), 4)
    with pytest.raises(IndexError):
        cache.read(np.array([10]))
    state = cache.state_dict()
    with pytest.raises(ValueError, match="look-ahead cache of 4 rows, this one 3"):
        LookaheadCache(ArrayFeatureStore(np.ones((10, 2), np.float32)), 3).load_state_dict(state)
    state["owner"][0] = 99
    with pytest.raises(ValueError, match="names row 99"):
        cache.load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        cache.load_state_dict({"version": 0})
    # A checkpoint without the look-ahead's state cannot resume a run that plans one.
    run(config(0, "feature", 0.03, epochs=1, out=str(tmp_path), checkpoint_every=1), data)
    with pytest.raises(ValueError, match="--lookahead 0"):
        run(config(2, "feature", 0.06, epochs=2, out=str(tmp_path), checkpoint_every=1), data,
            resume_state=read_checkpoint(tmp_path))
