"""What a history hit holds (issue 20): kept hits in the sampler, the cached neighbour aggregate,
LMC-style mixing and the diagnostic oracles, each checked against the unpruned batch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from approxgnn.graph import CSRGraph
from approxgnn.history import HistoryConfig
from approxgnn.history.caches import build_caches
from approxgnn.minibatch import ArrayFeatureStore, BlockPropagation, NeighborSampler
from approxgnn.nn import build_model

N, FEAT, HID, C = 600, 12, 16, 4
FANOUTS = [6, 5, 4]


def graph(seed: int = 0) -> CSRGraph:
    rng = np.random.default_rng(seed)
    src = np.repeat(np.arange(N), 10)
    return CSRGraph.from_edge_index(np.stack([src, rng.integers(0, N, src.size)]), N)


def setup(cfg: HistoryConfig, seed: int = 0, batch_norm: bool = True):
    torch.manual_seed(seed)
    g = graph(seed)
    x = np.random.default_rng(seed + 1).standard_normal((N, FEAT)).astype(np.float32)
    sampler = NeighborSampler(g, FANOUTS, "mean")
    store = ArrayFeatureStore(x)
    # a budget for every embedding and no feature row: hits are about the history alone
    caches = build_caches(cfg, store, sampler.rowptr, sampler.deg, 3, HID, 2.0, torch.device("cpu"))
    model = build_model("sage", FEAT, HID, C, 3, dropout=0.0, batch_norm=batch_norm, input_dropout=0.0)
    y = torch.from_numpy(np.random.default_rng(seed + 2).integers(0, C, N))
    return sampler, store, caches.history, model, y


def ops(sample):
    return [b.operator() for b in sample.blocks]


def test_kept_hits_are_computed_from_fewer_neighbours():
    """``PruneTest.keep``: the same hits as pruning, but computed from ``min(keep, fanout)``
    distinct neighbours (with the miss's fanout, the very neighbours the unpruned batch draws)."""
    sampler, _, engine, _, _ = setup(HistoryConfig(policy="gas"))
    seeds = np.arange(0, 60)
    plain = sampler.sample(seeds, key=11)
    cand = plain.layer_nodes[1][len(seeds):]
    engine.cache.admit(1, cand[::2], torch.zeros(len(cand[::2]), HID), now=0)
    test = engine.cache.prune_test(1, 1)
    pruned = sampler.sample(seeds, 11, {1: test})
    for keep in (0, 2, 100):
        kept = sampler.sample(seeds, 11, {1: test._replace(keep=keep)})
        hits = kept.hits(1)
        assert kept.num_partial[1] == len(hits) > 0
        assert sorted(hits) == sorted(pruned.hits(1)) == sorted(cand[::2])
        assert sorted(kept.misses(1)) == sorted(pruned.layer_nodes[1][: pruned.num_computed[1]])
        assert kept.num_computed[1] == len(kept.layer_nodes[1])  # every node of the layer is computed
        # layer 1's block: a kept hit's row holds min(keep, fanout) of the plain batch's neighbours
        blk, pblk = kept.blocks[1], plain.blocks[1]
        ppos = {v: i for i, v in enumerate(plain.layer_nodes[1][: plain.num_computed[1]])}
        for i in range(kept.num_computed[1] - len(hits), kept.num_computed[1]):
            v = kept.layer_nodes[1][i]
            row = set(kept.layer_nodes[0][blk.adj.col.numpy()[blk.adj.rowptr[i]:blk.adj.rowptr[i + 1]]])
            j = ppos[v]
            full = set(plain.layer_nodes[0][pblk.adj.col.numpy()[pblk.adj.rowptr[j]:pblk.adj.rowptr[j + 1]]])
            nbrs = set(sampler.col[sampler.rowptr[v]:sampler.rowptr[v + 1]])
            assert len(row) == min(keep, FANOUTS[1], len(nbrs)) and row <= nbrs
            if keep >= FANOUTS[1]:
                assert row == full  # the draw is a function of (key, hop, node, k)
        if keep == 0:  # the aggregate is served: the hits' sub-trees below them are gone
            assert len(kept.input_nodes) < len(plain.input_nodes)
        if keep == 100:  # as many as a miss draws: the unpruned batch, reordered
            assert len(kept.input_nodes) == len(plain.input_nodes)


def test_aggregate_hits_apply_the_current_weights_after_optimiser_steps():
    """A cached *aggregate* keeps a hit exact while the weights of its layer and above change: with
    layer 0 frozen (its outputs, hence the aggregates over them, do not move), training steps on
    layers 1-2 leave the cached-aggregate forward equal to the unpruned one, layer 1's batch norm
    in training mode (over hits and misses alike) included; a cached *output* goes stale under the
    same steps."""
    outs = {}
    for value in ("aggregate", "output"):
        sampler, store, engine, model, y = setup(HistoryConfig(policy="gas", cached_value=value))
        for p in (*model.lins_self[0].parameters(), *model.lins_neigh[0].parameters(), *model.bns[0].parameters()):
            p.requires_grad_(False)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
        model.train()
        model.bns[0].eval()  # layer 0 wholly frozen: its running statistics, not the batch's
        seeds = np.arange(100, 200)
        for step in range(4):
            if step == 0:  # fill the cache from an unpruned batch, then train on it
                sample = sampler.sample(seeds, key=5)
                prop = engine.propagation(sample, ops(sample), {})
            else:
                sample = sampler.sample(seeds, 5, engine.prune_tests(step))
                prop = engine.propagation(sample, ops(sample), engine.serve(sample, step))
                assert len(sample.hits(1)) > 0
            out = model(torch.from_numpy(store.x[sample.input_nodes]), prop)
            loss = F.cross_entropy(out, y[seeds])
            opt.zero_grad()
            loss.backward()
            opt.step()
            engine.update(sample, prop.recorded, {}, step)
        # after the steps: this batch, served from the cache, against the same batch unpruned
        sample = sampler.sample(seeds, 5, engine.prune_tests(4))
        with torch.no_grad():
            served = model(torch.from_numpy(store.x[sample.input_nodes]),
                           engine.propagation(sample, ops(sample), engine.serve(sample, 4), record=False))
            plain = sampler.sample(seeds, 5)
            exact = model(torch.from_numpy(store.x[plain.input_nodes]), BlockPropagation(ops(plain)))
        outs[value] = (served - exact).abs().max().item()
        assert len(sample.input_nodes) < len(plain.input_nodes)  # hits still prune
    assert outs["aggregate"] < 1e-4
    assert outs["output"] > 100 * max(outs["aggregate"], 1e-6)


@pytest.mark.parametrize("oracle", ["value", "gradient", "lmc-1"])
def test_oracles_and_mixing_against_the_unpruned_and_pruned_batches(oracle):
    """With a stale cache (entries written, then weights changed by optimiser steps), no batch
    norm and no dropout: the value oracle's logits are the unpruned batch's and its gradient skips
    the hits' sub-trees; the gradient oracle's logits are the pruned batch's (stale hits) and its
    gradient reaches layer 0 through the hits; LMC with ``hit_mix = 1`` and a hit fanout as large
    as a miss's is the unpruned batch exactly, gradient included."""
    lmc = oracle == "lmc-1"
    cfg = HistoryConfig(policy="gas", hit_fanout=100, hit_mix=1.0) if lmc else HistoryConfig(policy="gas")
    sampler, store, engine, model, y = setup(cfg, batch_norm=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    seeds = np.arange(0, 80)
    for step in range(3):  # fill the cache, then let the weights move away from it
        sample = sampler.sample(seeds, key=step)
        prop = BlockPropagation(ops(sample), record=(1,))
        loss = F.cross_entropy(model(torch.from_numpy(store.x[sample.input_nodes]), prop), y[seeds])
        opt.zero_grad()
        loss.backward()
        opt.step()
        engine.update(sample, prop.recorded, {}, step)

    def run(sample, prop):
        model.zero_grad()
        out = model(torch.from_numpy(store.x[sample.input_nodes]), prop)
        F.cross_entropy(out, y[seeds]).backward()
        return out.detach(), model.lins_self[0].weight.grad.clone()

    plain = sampler.sample(seeds, 9)
    out_plain, g_plain = run(plain, BlockPropagation(ops(plain)))
    engine.oracle = None if lmc else oracle
    kept = sampler.sample(seeds, 9, engine.prune_tests(3))
    assert kept.num_partial[1] > 0
    out, g = run(kept, engine.propagation(kept, ops(kept), engine.serve(kept, 3), record=False))
    engine.oracle, engine.hit_fanout = None, None  # today's pruning, for comparison
    pruned = sampler.sample(seeds, 9, engine.prune_tests(3))
    out_pruned, g_pruned = run(pruned, engine.propagation(pruned, ops(pruned), engine.serve(pruned, 3), record=False))
    assert (out_plain - out_pruned).abs().max() > 1e-3  # the cache is stale
    if oracle == "value" or lmc:
        torch.testing.assert_close(out, out_plain, rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(out, out_pruned, rtol=1e-4, atol=1e-5)
    if lmc:
        torch.testing.assert_close(g, g_plain, rtol=1e-4, atol=1e-6)
    elif oracle == "value":
        assert (g - g_plain).abs().max() > 1e-6  # the hits' sub-trees get no gradient
    else:
        assert (g - g_pruned).abs().max() > 1e-6  # the gradient reaches the hits' sub-trees


def test_config_checks():
    with pytest.raises(ValueError, match="hit_fanout"):
        HistoryConfig(cached_value="aggregate", hit_fanout=2)
    with pytest.raises(ValueError, match="start_time"):
        HistoryConfig(start_time=0.5, switch_time=0.5)
    with pytest.raises(ValueError, match="cached layers must be >= 1"):
        HistoryConfig(cached_value="aggregate", cached_layers=[0]).check_depth(3)
