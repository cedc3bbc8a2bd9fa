"""Neighbour sampler: valid blocks, fanouts, determinism, pruning, normalisation."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from approxgnn.graph import CSRGraph, gcn_norm, mean_norm
from approxgnn.minibatch.sampler import NeighborSampler, PruneTest, batch_key


def random_graph(n: int = 400, degree: int = 8, seed: int = 0) -> CSRGraph:
    rng = np.random.default_rng(seed)
    # A few hubs so that fanouts bind on some rows and not on others.
    deg = np.where(rng.random(n) < 0.05, degree * 10, degree)
    src = np.repeat(np.arange(n), deg)
    return CSRGraph.from_edge_index(np.stack([src, rng.integers(0, n, src.size)]), n)


def check_batch(g: CSRGraph, sampler: NeighborSampler, batch) -> None:
    rowptr, col = g.rowptr.numpy(), g.col.numpy()
    fanouts = sampler.fanouts
    for layer, block in enumerate(batch.blocks):
        src = batch.layer_nodes[layer - 1] if layer else batch.input_nodes
        tgt = batch.layer_nodes[layer][: batch.num_computed[layer]]
        assert block.num_targets == len(tgt) and block.num_sources == len(src)
        assert np.array_equal(src[: len(tgt)], tgt), "targets must be the first sources"
        assert len(np.unique(src)) == len(src), "a node appears twice in one layer"
        fanout = fanouts[batch.num_layers - 1 - layer]
        for i, v in enumerate(tgt):
            picked = src[block.adj.col.numpy()[block.adj.rowptr[i]: block.adj.rowptr[i + 1]]]
            nbrs = col[rowptr[v]: rowptr[v + 1]]
            assert np.isin(picked, nbrs).all(), "sampled an edge that does not exist"
            assert len(np.unique(picked)) == len(picked), "duplicate neighbour without replacement"
            assert len(picked) == (len(nbrs) if fanout == -1 else min(fanout, len(nbrs)))


@settings(max_examples=15, deadline=None)
@given(fanouts=st.lists(st.sampled_from([-1, 1, 2, 3, 7, 40]), min_size=1, max_size=3),
       batch=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_sampled_blocks_are_valid(fanouts, batch, seed):
    g = random_graph()
    sampler = NeighborSampler(g, fanouts)
    seeds = np.random.default_rng(seed).choice(g.num_nodes, batch, replace=False)
    check_batch(g, sampler, sampler.sample(seeds, seed))


def test_deterministic_by_key_and_different_across_keys():
    g = random_graph()
    sampler = NeighborSampler(g, [5, 3, 2])
    seeds = np.arange(50)
    a, b = sampler.sample(seeds, batch_key(0, 1, 2)), sampler.sample(seeds, batch_key(0, 1, 2))
    c = sampler.sample(seeds, batch_key(0, 1, 3))
    for x, y in zip(a.blocks, b.blocks):
        assert torch.equal(x.adj.col, y.adj.col) and torch.equal(x.adj.rowptr, y.adj.rowptr)
    assert np.array_equal(a.input_nodes, b.input_nodes)
    assert not np.array_equal(a.input_nodes, c.input_nodes)
    assert batch_key(0, 1, 2) != batch_key(0, 2, 1) != batch_key(1, 1, 2)


def test_large_fanout_branch_and_uniformity():
    # A star: node 0 has 200 neighbours; fanout 50 takes the Fisher-Yates branch, fanout 5 Floyd's.
    n = 201
    g = CSRGraph.from_edge_index(np.stack([np.zeros(200, int), np.arange(1, n)]), n)
    for fanout in (5, 50):
        counts = np.zeros(n)
        sampler = NeighborSampler(g, [fanout])
        for k in range(2000):
            b = sampler.sample(np.array([0]), k)
            picked = b.input_nodes[b.blocks[0].adj.col.numpy()]
            assert len(np.unique(picked)) == fanout and picked.min() >= 1
            counts[picked] += 1
        expected = 2000 * fanout / 200  # 50 or 500 draws per neighbour
        assert counts[1:].min() > 0.5 * expected and counts[1:].max() < 1.6 * expected


def test_full_fanout_blocks_equal_the_normalised_adjacency():
    g = random_graph(n=120)
    seeds = np.arange(0, 120, 3)
    for norm, adj in (("mean", mean_norm(g)), ("gcn", gcn_norm(g))):
        dense = adj.dense()
        sampler = NeighborSampler(g, [-1], norm)
        b = sampler.sample(seeds, 0)
        op = b.blocks[0].operator()
        x = torch.randn(b.blocks[0].num_sources, 4)
        ref = dense[torch.from_numpy(seeds)][:, torch.from_numpy(b.input_nodes)] @ x
        assert torch.allclose(op.forward(x), ref, atol=1e-5)


@pytest.mark.parametrize("norm", ["mean", "gcn"])
def test_rows_block_with_mapped_columns_equals_the_adjacency_rows(norm):
    from approxgnn.minibatch.inference import LayerwisePropagation

    g = random_graph(n=90)
    dense = (mean_norm(g) if norm == "mean" else gcn_norm(g)).dense()
    sampler = NeighborSampler(g, [-1], norm)
    keep = np.arange(0, 90, 2)  # the input matrix holds only some nodes, in its own row order
    order = np.random.default_rng(0).permutation(90)
    pos = np.empty(90, np.int64)
    pos[order] = np.arange(90)
    x = torch.randn(90, 3)
    block = sampler.rows_block(keep, pos, 90)
    prop = LayerwisePropagation(0, block.operator(), x, torch.from_numpy(pos[keep]))
    assert torch.allclose(prop(x, 0), dense[torch.from_numpy(keep)] @ x[torch.from_numpy(pos)], atol=1e-5)
    assert torch.equal(prop.targets(x, 0), x[torch.from_numpy(pos[keep])])


def test_gcn_block_is_unbiased():
    g = random_graph(n=100)
    dense = gcn_norm(g).dense()
    seeds = np.arange(10)
    x = torch.randn(100, 3)
    sampler = NeighborSampler(g, [3], "gcn")
    acc = torch.zeros(10, 3)
    reps = 3000
    for k in range(reps):
        b = sampler.sample(seeds, k)
        acc += b.blocks[0].operator().forward(x[torch.from_numpy(b.input_nodes)])
    assert torch.allclose(acc / reps, dense[:10] @ x, atol=0.08)


def test_pruning_skips_fresh_hits_and_only_their_subtrees():
    g = random_graph(n=300)
    sampler = NeighborSampler(g, [6, 4, 3])
    seeds = np.arange(20)
    key = 7
    full = sampler.sample(seeds, key)
    new1 = full.layer_nodes[1][len(seeds):]
    cached = new1[::2]  # half the one-hop nodes hold a layer-1 entry
    node_slot = np.full(g.num_nodes, -1, np.int64)
    node_slot[cached] = np.arange(len(cached))
    slot_iter = np.full(len(cached), 10, np.int64)
    slot_iter[0] = 0  # this one is too old at now=10 with staleness=5
    pruned = sampler.sample(seeds, key, {1: PruneTest(node_slot, slot_iter, now=10, staleness=5)})
    check_batch(g, sampler, pruned)
    hits = pruned.hits(1)
    assert set(hits) == set(cached[1:]), "fresh entries hit, the stale one misses"
    assert np.array_equal(pruned.layer_nodes[1][: len(seeds)], seeds), "seeds are never hits"
    computed1 = pruned.layer_nodes[1][: pruned.num_computed[1]]
    assert not np.isin(hits, computed1).any(), "a hit is not expanded below its layer"
    assert pruned.nodes_per_hop()[-1] < full.nodes_per_hop()[-1]
    # The top hop is untouched by pruning.
    assert np.array_equal(np.sort(pruned.layer_nodes[1]), np.sort(full.layer_nodes[1]))


@pytest.mark.parametrize("bad", [[0], [5, -2], []])
def test_bad_fanouts_are_clear_errors(bad):
    with pytest.raises(ValueError, match="fanout"):
        NeighborSampler(random_graph(n=20), bad)


def test_bad_seeds_are_clear_errors():
    sampler = NeighborSampler(random_graph(n=20), [2])
    with pytest.raises(ValueError, match="seed"):
        sampler.sample(np.array([25]), 0)
    with pytest.raises(ValueError, match="seeds"):
        sampler.sample(np.array([], dtype=np.int64), 0)


_KERNEL_PROBE = """
import sys
import numpy as np
from approxgnn.minibatch import sampler
kernel = getattr(sampler, sys.argv[1])
rowptr, col = np.array([0, 2, 3, 4], np.int64), np.array([1, 2, 0, 1], np.int64)
targets = np.array([0, 1], np.int64)
kernel(rowptr, col, targets, np.array([0, 1, 2], np.int64), np.uint64(7))
print(sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
"""


def _run_kernel(name: str, cache_dir) -> tuple[int, int]:
    import os
    import subprocess
    import sys

    import approxgnn

    src = os.path.dirname(os.path.dirname(approxgnn.__file__))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _KERNEL_PROBE, name], env=env, capture_output=True, text=True,
                         check=True)
    hits, misses = out.stdout.split()[-2:]
    return int(hits), int(misses)


def test_parallel_and_serial_kernels_have_their_own_disk_cache_entries(tmp_path):
    # numba names a cache entry after the Python function, not the compile flags: had the two
    # kernels been two jits of one function, a later process would load the serial machine code
    # for the parallel kernel (a cache hit on an entry it never wrote).
    from approxgnn.minibatch.sampler import _sample_rows_par, _sample_rows_seq

    assert _sample_rows_par.targetoptions.get("parallel") and not _sample_rows_seq.targetoptions.get("parallel")
    assert _sample_rows_par._cache._cache_file._index_name != _sample_rows_seq._cache._cache_file._index_name
    assert _run_kernel("_sample_rows_seq", tmp_path) == (0, 1)  # compiles and saves the serial one
    assert _run_kernel("_sample_rows_par", tmp_path) == (0, 1), "the parallel kernel loaded another's code"
    assert _run_kernel("_sample_rows_par", tmp_path) == (1, 0)  # and its own entry is then reused


def test_kernels_and_keys_share_the_one_splitmix64():
    from approxgnn import _hash
    from approxgnn.minibatch import sampler
    from approxgnn.nn import dropout

    # SplitMix64 seeded with 0 (Steele, Lea & Flood; java.util.SplittableRandom): known outputs.
    out = [int(_hash.splitmix64(np.uint64(i * 0x9E3779B97F4A7C15 % 2**64))) for i in range(3)]
    assert out == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    # The batch key chain z <- mix64(z + (p+1)·γ), written out in plain Python integers.
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    z = 0x243F6A8885A308D3
    for p in (3, -1, 2**63 + 5):
        z = mix((z + (p & mask) * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & mask)
    assert _hash.mix_key(3, -1, 2**63 + 5) == z
    assert sampler.batch_key(3, -1, 2**63 + 5) == z
    assert dropout.splitmix64 is _hash.splitmix64 and sampler.mix64 is _hash.mix64


def test_repeated_seeds_are_rejected_not_counted_twice():
    g = random_graph()
    sampler = NeighborSampler(g, [3, 2])
    with pytest.raises(ValueError, match=r"distinct.*1 node id\(s\) repeated.*\[7\]"):
        sampler.sample(np.array([7, 1, 7, 2]), batch_key(0, 0, 0))
    batch = sampler.sample(np.array([7, 1, 2]), batch_key(0, 0, 0))  # the same seeds once each are fine
    assert batch.seeds.tolist() == [7, 1, 2]


def test_loader_rejects_repeated_seeds():
    from approxgnn.minibatch import ArrayFeatureStore, BatchLoader

    g = random_graph()
    x = np.zeros((g.num_nodes, 3), np.float32)
    loader = BatchLoader(NeighborSampler(g, [3, 2]), ArrayFeatureStore(x), None, torch.device("cpu"))
    with pytest.raises(ValueError, match="distinct"):
        loader.load(np.array([4, 4]), batch_key(0, 0, 0), now=0)
