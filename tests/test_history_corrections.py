"""Corrections for what a history hit withholds (issue 20): VR-GCN's control variate, a
staleness-aware weight on served rows (VISAGNN) and forward-only refreshes (REST), each checked on
constructed cases against the unpruned batch, then trained with real dynamics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from approxgnn.history import HistoryConfig
from approxgnn.history.caches import build_caches
from approxgnn.history.engine import staleness_weight
from approxgnn.minibatch import ArrayFeatureStore, BlockPropagation, NeighborSampler
from approxgnn.minibatch.sampler import KEEP_ALL
from approxgnn.nn import build_model

from test_history_values import C, FEAT, HID, N, graph, ops

FULL = [-1, -1, -1]  # every neighbour: a batch is a function of its seeds alone


def setup(cfg: HistoryConfig, fanouts=FULL, batch_norm: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    g = graph(seed)
    x = np.random.default_rng(seed + 1).standard_normal((N, FEAT)).astype(np.float32)
    sampler = NeighborSampler(g, fanouts, "mean")
    store = ArrayFeatureStore(x)
    caches = build_caches(cfg, store, sampler.rowptr, sampler.deg, 3, HID, 2.0, torch.device("cpu"), sampler=sampler)
    model = build_model("sage", FEAT, HID, C, 3, dropout=0.0, batch_norm=batch_norm, input_dropout=0.0)
    y = torch.from_numpy(np.random.default_rng(seed + 2).integers(0, C, N))
    return sampler, store, caches, model, y


def fill(sampler, store, engine, model, y, seeds, steps: int, opt=None):
    """``steps`` unpruned batches that write the cache (and move the weights when ``opt`` is given)."""
    for step in range(steps):
        sample = sampler.sample(seeds, key=step)
        prop = BlockPropagation(ops(sample), record=(1,))
        loss = F.cross_entropy(model(torch.from_numpy(store.x[sample.input_nodes]), prop), y[seeds])
        model.zero_grad()
        loss.backward()
        if opt is not None:
            opt.step()
        engine.update(sample, prop.recorded, {}, step)


def hidden_rows(model, store, sample, prop, layer: int = 1) -> dict[int, torch.Tensor]:
    """Layer ``layer``'s rows after the hook (computed, mixed and served), by node id."""
    seen = {}
    inner = prop.hidden

    def hook(h, l):
        out = inner(h, l)
        if l == layer:
            seen["rows"] = out.detach()
        return out

    prop.hidden = hook
    with torch.no_grad():
        model(torch.from_numpy(store.x[sample.input_nodes]), prop)
    return dict(zip(sample.layer_nodes[layer].tolist(), seen["rows"]))


def test_keep_share_keeps_a_drawn_share_of_the_hits():
    """``PruneTest.keep_share``: the same hits as pruning; each kept with the given probability, as
    a function of the batch key; kept hits come first and draw a miss's neighbours, the rest are
    pruned (no sub-tree)."""
    sampler, _, caches, _, _ = setup(HistoryConfig(policy="gas"), fanouts=[6, 5, 4])
    engine = caches.history
    seeds = np.arange(60)
    cand = sampler.sample(seeds, 3).layer_nodes[1][60:]
    engine.cache.admit(1, cand, torch.zeros(len(cand), HID), now=0)
    test = engine.cache.prune_test(1, 1)
    kept_total = hits_total = 0
    for key in range(40):
        pruned = sampler.sample(seeds, key, {1: test})
        part = sampler.sample(seeds, key, {1: test._replace(keep=KEEP_ALL, keep_share=0.3)})
        again = sampler.sample(seeds, key, {1: test._replace(keep=KEEP_ALL, keep_share=0.3)})
        np.testing.assert_array_equal(part.layer_nodes[1], again.layer_nodes[1])  # a function of the key
        assert sorted(part.hits(1)) == sorted(pruned.hits(1))
        p = part.num_partial[1]
        kept_total, hits_total = kept_total + p, hits_total + len(part.hits(1))
        assert part.num_computed[1] - p == pruned.num_computed[1]  # misses, then the kept hits
        kept = set(part.hits(1)[:p].tolist())
        # the layer-0 nodes below layer 1: the misses' and the kept hits' neighbours only
        blk = part.blocks[1]
        below = set(part.layer_nodes[0][blk.adj.col.numpy()].tolist())
        for i, v in enumerate(part.layer_nodes[1][: part.num_computed[1]]):
            row = blk.adj.col.numpy()[blk.adj.rowptr[i]:blk.adj.rowptr[i + 1]]
            if v in kept:
                assert len(row) == min(5, sampler.rowptr[v + 1] - sampler.rowptr[v])
        assert len(below) >= len(set(pruned.layer_nodes[0][pruned.blocks[1].adj.col.numpy()].tolist()))
    share = kept_total / hits_total
    sd = np.sqrt(0.3 * 0.7 / hits_total)
    assert abs(share - 0.3) < 4 * sd and 0 < kept_total < hits_total


def test_control_variate_serves_the_cached_value_when_it_is_current_and_is_unbiased_when_stale():
    """Weights unchanged since the write: every served row (recomputed or not) is the cached value,
    and the logits are the unpruned batch's. After optimiser steps (a stale cache): ρ = 1 is the
    unpruned batch, value and gradient; ρ = 0.5 serves each hit ``hist + (fresh − hist)/ρ`` or
    ``hist``, whose mean over batch keys approaches the fresh row."""
    cfg = HistoryConfig(policy="gas", control_variate=0.5)
    sampler, store, caches, model, y = setup(cfg)
    engine = caches.history
    model.train()
    seeds = np.arange(0, 50)
    fill(sampler, store, engine, model, y, seeds, 1)  # written, weights unchanged
    plain = sampler.sample(seeds, 9)
    with torch.no_grad():
        out_plain = model(torch.from_numpy(store.x[plain.input_nodes]), BlockPropagation(ops(plain)))
    fresh = hidden_rows(model, store, plain, BlockPropagation(ops(plain)))
    cv = sampler.sample(seeds, 9, engine.prune_tests(1))
    assert 0 < cv.num_partial[1] < len(cv.hits(1))  # some hits recomputed, some pruned
    prop = engine.propagation(cv, ops(cv), engine.serve(cv, 1), record=False)
    with torch.no_grad():
        out = model(torch.from_numpy(store.x[cv.input_nodes]), prop)
    torch.testing.assert_close(out, out_plain, rtol=1e-4, atol=1e-5)
    for v, row in hidden_rows(model, store, cv, engine.propagation(cv, ops(cv), engine.serve(cv, 1), False)).items():
        torch.testing.assert_close(row, fresh[v], rtol=1e-4, atol=1e-5)

    # the weights move away from the cache (its entries are from before these steps)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    fill(sampler, store, engine, model, y, np.arange(300, 350), 3, opt)
    fresh = hidden_rows(model, store, plain, BlockPropagation(ops(plain)))
    plain_prop = BlockPropagation(ops(plain))
    model.zero_grad()
    F.cross_entropy(model(torch.from_numpy(store.x[plain.input_nodes]), plain_prop), y[seeds]).backward()
    g_plain = model.lins_self[0].weight.grad.clone()
    engine.control_variate = 1.0
    exact = sampler.sample(seeds, 9, engine.prune_tests(4))
    assert exact.num_partial[1] == len(exact.hits(1)) > 0
    model.zero_grad()
    F.cross_entropy(model(torch.from_numpy(store.x[exact.input_nodes]),
                          engine.propagation(exact, ops(exact), engine.serve(exact, 4), False)), y[seeds]).backward()
    torch.testing.assert_close(model.lins_self[0].weight.grad, g_plain, rtol=1e-4, atol=1e-6)

    engine.control_variate = 0.5
    sums: dict[int, torch.Tensor] = {}
    stale = {}
    keys = 300
    for key in range(keys):
        s = sampler.sample(seeds, 1000 + key, engine.prune_tests(4))
        served = engine.serve(s, 4)
        stale.update(zip(s.hits(1).tolist(), served[1]))
        rows = hidden_rows(model, store, s, engine.propagation(s, ops(s), served, False))
        for v in s.hits(1).tolist():
            sums[v] = sums.get(v, 0) + rows[v]
    hits = sorted(sums)
    mean = torch.stack([sums[v] / keys for v in hits])
    target = torch.stack([fresh[v] for v in hits])
    gap = (torch.stack([stale[v] for v in hits]) - target).abs()
    assert gap.max() > 1e-2  # the cache is stale
    # E[h] = fresh: the mean's error is a sampling error, ~ gap · sqrt((1 − ρ)/(ρ · keys)) ≈ 0.06 gap
    assert ((mean - target).abs() <= 0.3 * gap + 1e-5).all()


def test_staleness_weight_and_the_weighted_aggregation():
    """``w = exp(−β age / s)``: 1 at age 0, e^{−β} at the limit; the aggregation it feeds is the
    weighted mean, renormalised per row, and equal weights leave the aggregation unchanged."""
    w = staleness_weight(np.array([0, 10, 40, 80]), 2.0, 40)
    torch.testing.assert_close(w, torch.tensor([1.0, np.exp(-0.5), np.exp(-2.0), np.exp(-4.0)]).float())
    assert staleness_weight(np.array([0, 7]), 0.0, 40).tolist() == [1.0, 1.0]
    sampler, store, _, _, _ = setup(HistoryConfig(policy="gas"), fanouts=[6, 5, 4])
    sample = sampler.sample(np.arange(40), 2)
    op = ops(sample)[2]
    x = torch.randn(op.shape[1], 5)
    wt = torch.rand(op.shape[1]) + 0.05
    got = BlockPropagation(ops(sample), weights={2: wt})(x, 2)
    a = op.matrix.to_dense()
    expect = (a @ (wt[:, None] * x)) * (a.sum(1) / (a @ wt))[:, None]
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    same = BlockPropagation(ops(sample), weights={2: torch.full((op.shape[1],), 0.3)})(x, 2)
    torch.testing.assert_close(same, BlockPropagation(ops(sample))(x, 2), rtol=1e-5, atol=1e-6)


def test_staleness_decay_weighs_the_served_rows_by_their_age():
    """The engine gives the layer above the cached one weight 1 for computed rows and ``w(age)``
    for each served row; with decay 0 there are no weights, and the logits are plain pruning's."""
    sampler, store, caches, model, y = setup(HistoryConfig(policy="gas", staleness=40, staleness_decay=3.0),
                                             fanouts=[6, 5, 4])
    engine = caches.history
    seeds = np.arange(0, 60)
    fill(sampler, store, engine, model, y, seeds, 2)
    s = sampler.sample(seeds, 7, engine.prune_tests(20))
    served = engine.serve(s, 20)
    ages = s.hit_ages[1]
    assert len(ages) == len(s.hits(1)) > 0 and (ages >= 19).all()
    prop = engine.propagation(s, ops(s), served, record=False)
    w = prop.weights[2]
    m = s.num_computed[1]
    assert w.shape == (len(s.layer_nodes[1]),) and (w[:m] == 1).all()
    torch.testing.assert_close(w[m:], torch.exp(-3.0 * torch.from_numpy(ages).double() / 40).float())
    engine.staleness_decay = 0.0
    assert engine.propagation(s, ops(s), served, record=False).weights == {}
    with torch.no_grad():
        x = torch.from_numpy(store.x[s.input_nodes])
        weighted, flat = model(x, prop), model(x, engine.propagation(s, ops(s), served, record=False))
    assert (weighted - flat).abs().max() > 1e-4


@pytest.mark.parametrize("value", ["output", "aggregate"])
def test_rest_refresh_rewrites_the_oldest_entries_with_the_current_model(value):
    """With the weights as they are, a refresh makes the oldest ``rows`` entries exactly what an
    unpruned evaluation-mode forward gives now, stamped with the current iteration; it reads their
    rows from the store, and leaves the model (mode, parameters, batch norm's statistics) as it was."""
    cfg = HistoryConfig(policy="gas", cached_value=value, refresh_every=2, refresh_rows=30)
    sampler, store, caches, model, y = setup(cfg, batch_norm=True)
    engine, refresher = caches.history, caches.refresher
    model.train()
    nodes = np.arange(100, 180)
    for i, chunk in enumerate(np.split(nodes, 4)):  # 20 entries written at iterations 0..3
        engine.cache.admit(1, chunk, torch.zeros(len(chunk), HID if value == "output" else HID), now=i)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reads = lambda: store.counters()["rows_read"] + caches.feature_cache.rows_served  # noqa: E731
    rows_read = reads()
    assert not refresher.due(0) and refresher.due(1) and refresher.due(3)
    assert caches.after_step(model, lambda r: r, 5, key=5, device=torch.device("cpu")) == 30
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    refreshed = nodes[:30]  # the oldest: iterations 0 and 1 (ties by slot)
    written = engine.cache.slot_iter[engine.cache.node_slot[1][nodes]]
    np.testing.assert_array_equal(written, [5] * 30 + [1] * 10 + [2] * 20 + [3] * 20)
    assert engine.cache.oldest(1, 10).tolist() == nodes[30:40].tolist()
    # the same rows from a forward of the full 3-layer model, unpruned, in evaluation mode
    model.eval()
    full = sampler.sample(refreshed, 0)
    prop = BlockPropagation(ops(full), record=(1,), aggregate=value == "aggregate")
    model(torch.from_numpy(store.x[full.input_nodes]), prop)
    expect = prop.recorded[1][: len(refreshed)].detach()
    got, ages = engine.cache.read(1, refreshed, 6)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert (ages == 1).all() and expect.abs().max() > 0
    assert (engine.cache.read(1, nodes[30:], 4)[0] == 0).all()  # the others untouched
    # the refresh's input rows went through the run's store: the feature cache, then the counted store
    assert reads() - rows_read >= len(full.input_nodes) - len(refreshed)


@pytest.mark.parametrize("option", [{"control_variate": 0.4}, {"control_variate": 0.5, "hit_fanout": 2},
                                    {"staleness_decay": 2.0},
                                    {"refresh_every": 3, "refresh_rows": 200, "cached_value": "output"},
                                    {"refresh_every": 3, "refresh_rows": 200}])  # auto: SAGE caches the aggregate
def test_corrections_train_with_real_dynamics(option, tmp_path):
    """Dropout, batch norm, Adam, three epochs, entries that expire: the loss falls, hits are
    served, and each correction does what it says (recomputed hits, refresh time and rewrites)."""
    from approxgnn.datasets import load_dataset
    from approxgnn.minibatch import MiniBatchConfig
    from approxgnn.train import TrainConfig, build_trainer, fit

    data = load_dataset("synthetic")
    cfg = TrainConfig(dataset="synthetic", model="sage", engine="refresh", layers=3, hidden=32, dropout=0.2,
                      batch_norm=True, epochs=3, seed=1, progress=False, device="cpu",
                      minibatch=MiniBatchConfig(fanouts=[5, 5, 5], batch_size=512, cache_mb=1.0),
                      history=HistoryConfig(policy="refresh", staleness=6, **option))
    trainer = build_trainer(cfg, data)
    result = fit(trainer)
    losses = [r["loss"] for r in trainer.epoch_log]
    assert losses[-1] < losses[0] and np.isfinite(losses).all()
    assert result["hit_rate"] > 0.05 and sum(r["expired"] for r in trainer.epoch_log) > 0
    assert result["test"] > 0.3  # 8 classes: well above chance
    recomputed = sum(r["recomputed"] for r in trainer.epoch_log)
    # an aggregate hit is computed itself (only its neighbours are pruned): counted as recomputed
    assert (recomputed > 0) == ("control_variate" in option or cfg.resolved_cached_value() == "aggregate")
    if "control_variate" in option:  # about that share of the hits (entries fill up in epoch 0)
        served = result["hit_rate"]
        assert 0 < recomputed < sum(r["batches"] for r in trainer.epoch_log) * 512 * 5 * served
    if "refresh_every" in option:
        refreshed = [r["refreshed"] for r in trainer.epoch_log]
        assert all(n > 0 for n in refreshed) and sum(refreshed) == trainer.caches.refresher.rewritten
    else:
        assert trainer.caches.refresher is None


def test_config_checks_for_the_corrections():
    for bad in ({"control_variate": 0.0}, {"control_variate": 1.5}, {"staleness_decay": -1.0},
                {"refresh_every": 0}, {"refresh_rows": 0},
                {"cached_value": "aggregate", "control_variate": 0.5},
                {"cached_value": "aggregate", "staleness_decay": 1.0}):
        with pytest.raises(ValueError):
            HistoryConfig(**bad)
    g = graph(0)
    sampler = NeighborSampler(g, FULL, "mean")
    store = ArrayFeatureStore(np.zeros((N, FEAT), np.float32))
    with pytest.raises(ValueError, match="sampler"):
        build_caches(HistoryConfig(policy="gas", refresh_every=2), store, sampler.rowptr, sampler.deg, 3, HID, 1.0,
                     torch.device("cpu"))
