"""ReFresh in a PyG loop: PyG-style batches from our sampler, the history cache on PyG models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torch_geometric", reason="torch_geometric (the [pyg] extra) is not installed")
from torch_geometric.nn.models import GCN, GraphSAGE  # noqa: E402

from approxgnn.minibatch import BlockPropagation  # noqa: E402
from approxgnn.nn.models import GCN as OurGCN, SAGE  # noqa: E402
from approxgnn.pyg import HistoryGNN, NeighborBatchLoader  # noqa: E402

from helpers import planted_dataset  # noqa: E402


def _train_steps(wrapped: HistoryGNN, loader: NeighborBatchLoader, epochs: int, lr: float = 0.01,
                 opt: torch.optim.Optimizer | None = None) -> list[float]:
    """A PyG user's loop: forward, loss on out[:batch_size], step, then push. Returns each
    epoch's summed loss."""
    opt = opt if opt is not None else torch.optim.Adam(wrapped.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        wrapped.train()
        total = 0.0
        for batch in loader:
            opt.zero_grad()
            out = wrapped(batch)[: batch.batch_size]
            loss = F.cross_entropy(out, batch.y[: batch.batch_size])
            loss.backward()
            opt.step()
            wrapped.push(batch)
            total += float(loss.detach())
        losses.append(total)
    return losses


def _cached_setup(fanouts: list[int], layers: int, seed: int = 0, policy: str = "gas", kind: str = "sage"):
    d = planted_dataset(n=400, degree=5, seed=seed)
    torch.manual_seed(seed)
    loader = NeighborBatchLoader(d, fanouts, batch_size=40, input_nodes=d.train_mask, seed=seed,
                                 norm="mean" if kind == "sage" else "gcn")
    model = (GraphSAGE if kind == "sage" else GCN)(d.x.shape[1], 16, layers, d.num_classes, dropout=0.3)
    # output caching: served rows join after the cached layer, as the comparisons below replay them
    wrapped = HistoryGNN(model, loader, cache_mb=1.0, policy=policy, staleness=50, cached_value="output")
    _train_steps(wrapped, loader, epochs=2)  # fills the cache: later batches hold hits
    return d, loader, model, wrapped


def check_conventions(batch, d, loader: NeighborBatchLoader, fanouts: list[int]) -> None:
    n_id = batch.n_id.numpy()
    B, counts, ecounts = batch.batch_size, batch.num_sampled_nodes, batch.num_sampled_edges
    assert len(counts) == len(fanouts) + 1 and len(ecounts) == len(fanouts)
    assert counts[0] == B and sum(counts) == len(n_id) == batch.x.size(0) == batch.y.size(0)
    assert sum(ecounts) == batch.edge_index.size(1)
    np.testing.assert_array_equal(n_id[:B], batch.sampled_batch.sample.seeds)  # seeds first
    assert np.isin(n_id[:B], np.flatnonzero(d.train_mask)).all()
    np.testing.assert_array_equal(batch.y.numpy(), d.y[n_id])
    # Features: the rows layer 0 reads hold x[n_id]; every other row (a cache hit) is zero.
    x = batch.x.numpy()
    read = np.abs(x).sum(1) > 0
    np.testing.assert_allclose(x[read], d.x[n_id[read]])
    ends, e0 = np.cumsum(counts), 0
    rowptr, col = loader.sampler.rowptr, loader.sampler.col
    for hop, (fanout, e) in enumerate(zip(fanouts, ecounts), start=1):
        src, dst = batch.edge_index[:, e0 : e0 + e].numpy()
        e0 += e
        assert dst.max() < ends[hop - 1] and src.max() < ends[hop]  # target in the first k groups, source k+1
        # Each edge is a graph edge, and each target has min(fanout, degree) distinct neighbours.
        for t in np.unique(dst):
            v, nbrs = n_id[t], n_id[src[dst == t]]
            deg = rowptr[v + 1] - rowptr[v]
            assert len(nbrs) == len(set(nbrs)) == (deg if fanout == -1 else min(fanout, deg))
            assert np.isin(nbrs, col[rowptr[v] : rowptr[v + 1]]).all()


def test_batches_follow_pyg_conventions(one_torch_thread: None) -> None:
    fanouts = [4, 3]
    d, loader, model, wrapped = _cached_setup(fanouts, layers=2)
    hits, nodes = 0, 0
    for batch in loader:
        check_conventions(batch, d, loader, fanouts)
        out = wrapped(batch)
        assert out.shape == (batch.batch_size, d.num_classes)  # out[:batch_size] are the seeds
        s = batch.sampled_batch.sample
        hits += len(s.hits(0))
        nodes += len(batch.n_id)
        # Pruned: a hit's sub-tree is not sampled, so its row is no target of a deeper hop.
        hit_rows = np.flatnonzero(np.abs(batch.x.numpy()).sum(1) == 0)
        deep = batch.edge_index[1, batch.num_sampled_edges[0]:].numpy()
        assert not np.isin(hit_rows, deep).any()
        wrapped.push(batch)
    assert hits > 0, "the cache served nothing: the pruning path went untested"
    # Without a cache nothing is pruned, no row is zero and no node repeats.
    plain = NeighborBatchLoader(d, fanouts, batch_size=40, input_nodes=d.train_mask)
    for batch in plain:
        check_conventions(batch, d, plain, fanouts)
        assert len(np.unique(batch.n_id.numpy())) == len(batch.n_id)
        assert sum(batch.num_sampled_nodes) == len(batch.sampled_batch.sample.input_nodes)


def _ours(model: GraphSAGE | GCN) -> SAGE | OurGCN:
    """approxgnn's own model with the PyG model's weights. SAGE: ``lin_l`` (neighbours, bias),
    ``lin_r`` (self). GCN: ours adds the bias before propagating (``Â(HW + b)``), PyG's after
    (``ÂHW + b``), so both biases are zeroed; the layerwise test checks PyG's bias placement."""
    kw = dict(dropout=0.0, input_dropout=0.0)
    args = (model.in_channels, model.hidden_channels, model.out_channels, model.num_layers)
    ours = SAGE(*args, **kw) if isinstance(model, GraphSAGE) else OurGCN(*args, **kw)
    with torch.no_grad():
        if isinstance(model, GraphSAGE):
            for conv, ls, ln in zip(model.convs, ours.lins_self, ours.lins_neigh):
                ln.weight.copy_(conv.lin_l.weight)
                ls.weight.copy_(conv.lin_r.weight)
                ls.bias.copy_(conv.lin_l.bias)
        else:
            for conv, lin in zip(model.convs, ours.lins):
                lin.weight.copy_(conv.lin.weight)
                lin.bias.zero_()
                conv.bias.zero_()
    return ours.eval()


@pytest.mark.parametrize("kind", ["sage", "gcn"])
def test_wrapped_pyg_model_matches_ours_on_pruned_batches(kind: str, one_torch_thread: None) -> None:
    # Cached rows join after the cached layer: the wrapped PyG model and approxgnn's own model,
    # on the same pruned batches with the same served rows, agree.
    fanouts = [3, 3, 2]
    d, loader, model, wrapped = _cached_setup(fanouts, layers=3, kind=kind)
    ours = _ours(model)
    wrapped.eval()
    served = 0
    for batch in loader:
        b = batch.sampled_batch
        served += sum(len(h) for h in b.served.values())
        with torch.no_grad():
            expect = ours(b.x, BlockPropagation(b.ops, b.served))
            got = wrapped(batch)
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    assert served > 0


def test_plain_pyg_forward_agrees_on_full_neighbourhoods(one_torch_thread: None) -> None:
    # With every neighbour taken, each hop repeats the same neighbourhood: a plain PyG forward over
    # the union of the hops' edges (mean aggregation) computes what the per-hop blocks compute.
    d = planted_dataset(n=200, degree=3)
    torch.manual_seed(0)
    loader = NeighborBatchLoader(d, [-1, -1], batch_size=16, input_nodes=d.train_mask)
    model = GraphSAGE(d.x.shape[1], 16, 2, d.num_classes).eval()
    wrapped = HistoryGNN(model, loader, policy="none").eval()
    for batch in loader:
        with torch.no_grad():
            plain = model(batch.x, batch.edge_index)[: batch.batch_size]
            torch.testing.assert_close(wrapped(batch), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sage", "gcn"])
def test_layerwise_inference_is_the_full_graph_forward(kind: str, one_torch_thread: None) -> None:
    d = planted_dataset(n=300)
    torch.manual_seed(1)
    loader = NeighborBatchLoader(d, [5, 5], batch_size=50, input_nodes=d.train_mask,
                                 norm="mean" if kind == "sage" else "gcn")
    cls = GraphSAGE if kind == "sage" else GCN
    model = cls(d.x.shape[1], 16, 2, d.num_classes, dropout=0.5, norm="batch_norm")
    wrapped = HistoryGNN(model, loader, cache_mb=1.0, policy="refresh", staleness=3)
    _train_steps(wrapped, loader, epochs=2)
    wrapped.train()
    nodes = np.flatnonzero(d.test_mask)
    got = wrapped.inference(nodes, chunk_size=64)
    assert wrapped.training  # the mode is restored
    ei = torch.from_numpy(np.concatenate([d.edge_index, d.edge_index[::-1]], 1))
    ei = torch.unique(ei[:, ei[0] != ei[1]], dim=1)  # the graph approxgnn builds: symmetric, no self-loops
    with torch.no_grad():
        expect = model.eval()(torch.from_numpy(d.x), ei)[torch.from_numpy(nodes)]
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


def test_errors_are_clear() -> None:
    d = planted_dataset(n=100)
    loader = NeighborBatchLoader(d, [3, 3], batch_size=20)
    with pytest.raises(ValueError, match="norm='gcn'"):
        HistoryGNN(GCN(d.x.shape[1], 8, 2, 3), loader)
    with pytest.raises(ValueError, match="unsupported layer GATConv"):
        from torch_geometric.nn.models import GAT

        HistoryGNN(GAT(d.x.shape[1], 8, 2, 3), loader)
    with pytest.raises(ValueError, match="jk=None"):
        HistoryGNN(GraphSAGE(d.x.shape[1], 8, 2, 3, jk="cat"), loader)
    with pytest.raises(ValueError, match="samples 2 hop"):
        HistoryGNN(GraphSAGE(d.x.shape[1], 8, 3, 3), loader)
    with pytest.raises(ValueError, match="not a hidden layer"):
        HistoryGNN(GraphSAGE(d.x.shape[1], 8, 2, 3), loader, cached_layers=[1])
    with pytest.raises(ValueError, match="entry_dtype"):
        HistoryGNN(GraphSAGE(d.x.shape[1], 8, 2, 3), loader, entry_dtype="int8")
    half = HistoryGNN(GraphSAGE(d.x.shape[1], 8, 2, 3), loader, cache_mb=1.0, entry_dtype="float16")
    assert half.engine.cache.table.dtype == torch.float16
    wrapped = HistoryGNN(GraphSAGE(d.x.shape[1], 8, 2, 3), loader, cache_mb=1.0)
    batch = next(iter(loader))
    with pytest.raises(RuntimeError, match="must follow a training-mode forward"):
        wrapped.push(batch)


def test_history_cache_trains_cora_like_no_cache(shared_data, one_torch_thread: None) -> None:
    """A PyG GraphSAGE (dropout on) with the ReFresh cache trains Cora to within 1 pp of the same
    loop without it: mean final test accuracy over 3 seeds (paired: same seeds, init and batches)."""
    from approxgnn.datasets import load_dataset

    d = load_dataset("cora", root=shared_data)
    test = np.flatnonzero(d.test_mask)
    acc: dict[str, list[float]] = {"none": [], "refresh": []}
    hit_rates = []
    for seed in range(3):
        for policy in acc:
            torch.manual_seed(seed)
            loader = NeighborBatchLoader(d, [10, 10], batch_size=35, input_nodes=d.train_mask, seed=seed)
            model = GraphSAGE(d.x.shape[1], 64, 2, d.num_classes, dropout=0.5)
            wrapped = HistoryGNN(model, loader, cache_mb=2.0, policy=policy, staleness=8)
            _train_steps(wrapped, loader, epochs=20)
            pred = wrapped.inference(test).argmax(1).numpy()
            acc[policy].append(float((pred == d.y[test]).mean()))
            if policy == "refresh":
                hit_rates.append(wrapped.stats()["hit_rate"])
    assert min(hit_rates) > 0.2, hit_rates  # the cache was really used
    assert np.mean(acc["none"]) > 0.7, acc
    assert abs(np.mean(acc["refresh"]) - np.mean(acc["none"])) < 0.01, acc


def test_readme_pyg_example_runs(shared_data, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                 one_torch_thread: None) -> None:
    """The README's "ReFresh in a PyG training loop" example, as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### ReFresh in a PyG training loop"):]
    code = section[section.index("```python") + len("```python"): section.index("```", section.index("```python") + 3)]
    assert "for epoch in range(20):" in code
    code = code.replace("for epoch in range(20):", "for epoch in range(8):")  # the suite's time budget
    monkeypatch.setenv("APPROXGNN_DATA", str(shared_data))
    namespace: dict = {}
    exec(compile(code, "README.md (PyG example)", "exec"), namespace)
    assert "test accuracy" in capsys.readouterr().out
    assert namespace["acc"] > 0.6 and namespace["model"].stats()["hit_rate"] > 0.2


def test_history_state_resumes_the_same_batches(one_torch_thread: None) -> None:
    d, loader, model, wrapped = _cached_setup([4, 3], layers=2, policy="refresh")
    state = wrapped.history_state_dict()
    loader2 = NeighborBatchLoader(d, [4, 3], batch_size=40, input_nodes=d.train_mask, seed=0)
    model2 = GraphSAGE(d.x.shape[1], 16, 2, d.num_classes, dropout=0.3)
    model2.load_state_dict(model.state_dict())
    wrapped2 = HistoryGNN(model2, loader2, cache_mb=1.0, policy="refresh", staleness=50)
    wrapped2.load_history_state_dict(state)
    served = 0
    for b1, b2 in zip(loader, loader2):  # the next epoch, from the original and the resumed state
        np.testing.assert_array_equal(b1.n_id.numpy(), b2.n_id.numpy())
        torch.testing.assert_close(b1.edge_index, b2.edge_index)
        for layer, rows in b1.sampled_batch.served.items():
            torch.testing.assert_close(rows, b2.sampled_batch.served[layer])
            served += len(rows)
        wrapped.eval(), wrapped2.eval()
        torch.testing.assert_close(wrapped(b1), wrapped2(b2))
    assert served > 0
    with pytest.raises(ValueError, match="another cache policy"):
        HistoryGNN(GraphSAGE(d.x.shape[1], 16, 2, d.num_classes), loader2, policy="none").load_history_state_dict(state)


def test_wrapper_builds_the_trainers_caches_and_switches_to_exact(one_torch_thread: None) -> None:
    """HistoryGNN takes every knob of ``approxgnn train --engine refresh`` that shapes the cache:
    the same knobs give the trainer's split of the budget, and ``switch_time`` 0.5 of 4 epochs
    serves hits in epochs 0-1 and none from epoch 2 on."""
    from approxgnn.history import HistoryConfig
    from approxgnn.minibatch import MiniBatchConfig
    from approxgnn.train import TrainConfig, build_trainer

    d = planted_dataset(n=600)
    kw = dict(cache_mb=0.05, policy="refresh", staleness=20)

    def wrapper(**extra):
        torch.manual_seed(0)
        loader = NeighborBatchLoader(d, [4, 4, 4], batch_size=32, input_nodes=d.train_mask, seed=0)
        return HistoryGNN(GraphSAGE(d.x.shape[1], 32, 3, d.num_classes, dropout=0.3), loader, **kw, **extra), loader

    cfg = TrainConfig(dataset="planted", model="sage", engine="refresh", layers=3, hidden=32, epochs=4, progress=False,
                      precompute="off",  # as the wrapper's loader (NeighborBatchLoader(precompute=False))
                      minibatch=MiniBatchConfig(fanouts=[4, 4, 4], batch_size=32, cache_mb=kw["cache_mb"]),
                      history=HistoryConfig(policy="refresh", staleness=20, embedding_share=0.1, switch_time=0.5))
    ours = build_trainer(cfg, d).history
    theirs = wrapper(embedding_share=0.1, switch_time=0.5, epochs=4)[0].engine
    assert (theirs.cache.max_slots, theirs.features.capacity) == (ours.cache.max_slots, ours.features.capacity)
    # The share reached the wrapper's arena: embeddings may claim at most 10 % of its floats,
    # fewer rows than the policy's default share of one half allows.
    arena = theirs.cache.table.untyped_storage().nbytes() // 4  # floats of the one arena both caches share
    assert 0 < theirs.cache.max_slots * 32 <= 0.1 * arena
    assert wrapper()[0].engine.cache.max_slots > theirs.cache.max_slots

    wrapped, loader = wrapper(switch_time=0.5, epochs=4)
    figures = []
    for _ in range(4):
        _train_steps(wrapped, loader, epochs=1)
        figures.append((wrapped.stats()["exact"], wrapped.stats()["hit_rate"]))
    assert [e for e, _ in figures] == [False, False, True, True]
    assert figures[1][1] > 0 and figures[2][1] == figures[3][1] == 0.0
    with pytest.raises(ValueError, match="give epochs"):
        wrapper(switch_time=0.5)


def test_wrapper_takes_the_corrections_of_the_trainer(one_torch_thread: None) -> None:
    """What a hit holds and how it is corrected reach the wrapper's engine as the trainer's
    (one builder), and train in a PyG loop: the control variate recomputes a share of the hits,
    REST's refreshes rewrite entries, the loss falls."""
    from approxgnn.history import HistoryConfig
    from approxgnn.minibatch import MiniBatchConfig
    from approxgnn.train import TrainConfig, build_trainer

    d = planted_dataset(n=600)
    knobs = dict(control_variate=0.4, hit_fanout=2, staleness_decay=1.5, refresh_every=2, refresh_rows=64,
                 start_time=0.25)
    torch.manual_seed(0)
    loader = NeighborBatchLoader(d, [4, 4, 4], batch_size=32, input_nodes=d.train_mask, seed=0)
    wrapped = HistoryGNN(GraphSAGE(d.x.shape[1], 32, 3, d.num_classes, dropout=0.3), loader, cache_mb=0.5,
                         policy="refresh", staleness=20, epochs=4, **knobs)
    cfg = TrainConfig(dataset="planted", model="sage", engine="refresh", layers=3, hidden=32, epochs=4, progress=False,
                      minibatch=MiniBatchConfig(fanouts=[4, 4, 4], batch_size=32, cache_mb=0.5),
                      history=HistoryConfig(policy="refresh", staleness=20, **knobs))
    trainer = build_trainer(cfg, d)
    names = ("control_variate", "hit_fanout", "staleness_decay", "decay_scale", "start_time", "cached_layers")
    assert [getattr(wrapped.engine, k) for k in names] == [getattr(trainer.history, k) for k in names]
    assert (wrapped.caches.refresher.every, wrapped.caches.refresher.rows) == (2, 64)
    opt = torch.optim.Adam(wrapped.parameters(), lr=0.01)
    losses, recomputed = [], 0
    for _ in range(4):
        losses += _train_steps(wrapped, loader, 1, opt=opt)
        recomputed += wrapped.stats()["recomputed"]
    assert losses[-1] < losses[0]
    assert recomputed > 0 and wrapped.caches.refresher.rewritten > 0
    with pytest.raises(ValueError, match="give epochs"):
        HistoryGNN(GraphSAGE(d.x.shape[1], 8, 3, d.num_classes), loader, start_time=0.5)
    with pytest.raises(ValueError, match="GraphSAGE"):
        gcn_loader = NeighborBatchLoader(d, [4, 4, 4], batch_size=32, norm="gcn")
        HistoryGNN(GCN(d.x.shape[1], 8, 3, d.num_classes), gcn_loader, cached_value="aggregate")
