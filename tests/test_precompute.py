"""The precomputed first hop: the table itself, its key, and training on it against the plain path."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from approxgnn.graph import CSRGraph
from approxgnn.precompute import compute_first_hop, fingerprint, precompute_first_hop
from approxgnn.train import TrainConfig, run

from helpers import planted_dataset


def _dense_adjacency(data) -> np.ndarray:
    """0/1 adjacency from the raw edge list, symmetrised, duplicates and self-loops removed (numpy only)."""
    n = data.num_nodes
    a = np.zeros((n, n))
    src, dst = data.edge_index
    a[src, dst] = 1.0
    a[dst, src] = 1.0
    np.fill_diagonal(a, 0.0)
    return a


def _reference(data, norm: str) -> np.ndarray:
    x = data.x.astype(np.float64)
    a = _dense_adjacency(data)
    deg = a.sum(1)
    if norm == "gcn":
        d = 1.0 / np.sqrt(deg + 1.0)
        a_hat = d[:, None] * (a + np.eye(len(a))) * d[None, :]
        return np.concatenate([a_hat @ x, a_hat.sum(1, keepdims=True)], 1)
    mean = np.divide(a, deg[:, None], out=np.zeros_like(a), where=deg[:, None] > 0)
    return mean @ x


def _graph(data) -> CSRGraph:
    return CSRGraph.from_edge_index(data.edge_index, data.num_nodes)


@pytest.mark.parametrize("norm", ["gcn", "mean"])
def test_table_matches_dense_reference_in_ram_and_on_disk(tmp_path, norm):
    data = planted_dataset(n=203, features=9)
    data.edge_index[:, :5] = 0  # a few self-loops and duplicates the graph must drop
    want = _reference(data, norm)
    ram = precompute_first_hop(_graph(data), data.x, norm, chunk_rows=17)
    assert not ram.reused and ram.path is None and ram.bytes == want.size * 4
    np.testing.assert_allclose(ram.table, want, rtol=1e-5, atol=1e-6)
    # Features on disk: the table goes beside them, on disk, computed chunk by chunk.
    path = tmp_path / "feat" / "x.npy"
    path.parent.mkdir()
    np.save(path, data.x)
    disk = precompute_first_hop(_graph(data), np.load(path, mmap_mode="r"), norm, chunk_rows=17)
    assert isinstance(disk.table, np.memmap) and disk.path.startswith(str(path.parent))
    np.testing.assert_array_equal(disk.table, ram.table)  # chunking and storage change nothing


def test_isolated_nodes_get_zero_mean_and_own_features_under_gcn():
    data = planted_dataset(n=50, features=4)
    keep = (data.edge_index < 40).all(0)  # nodes 40..49 lose every edge
    data.edge_index = data.edge_index[:, keep]
    g = _graph(data)
    mean = precompute_first_hop(g, data.x, "mean").table
    gcn = precompute_first_hop(g, data.x, "gcn").table
    np.testing.assert_array_equal(mean[40:], 0.0)
    np.testing.assert_allclose(gcn[40:, :-1], data.x[40:], rtol=1e-6)  # Â = I on an isolated node
    np.testing.assert_allclose(gcn[40:, -1], 1.0)


def test_second_run_reuses_and_a_changed_graph_or_features_never_do(tmp_path):
    data = planted_dataset(n=120, features=6)
    first = precompute_first_hop(_graph(data), data.x, "gcn", directory=tmp_path)
    again = precompute_first_hop(_graph(data), data.x, "gcn", directory=tmp_path)
    assert not first.reused and again.reused and again.path == first.path and again.bytes == 0
    np.testing.assert_array_equal(again.table, first.table)

    moved = data.edge_index.copy()
    moved[1, 0] = (moved[1, 0] + 1) % data.num_nodes  # one edge rewired
    changed = precompute_first_hop(CSRGraph.from_edge_index(moved, data.num_nodes), data.x, "gcn", directory=tmp_path)
    assert not changed.reused and changed.path != first.path
    want = _reference(type(data)(**{**data.__dict__, "edge_index": moved}), "gcn")
    np.testing.assert_allclose(changed.table, want, rtol=1e-5, atol=1e-6)

    x2 = data.x.copy()
    x2[3, 2] += 1.0
    assert fingerprint(_graph(data), x2, "gcn") != first.fingerprint
    assert not precompute_first_hop(_graph(data), x2, "gcn", directory=tmp_path).reused
    # The aggregation is part of the key too: SAGE's table is never GCN's.
    assert precompute_first_hop(_graph(data), data.x, "mean", directory=tmp_path).path != first.path


def test_compute_refuses_mismatched_shapes():
    data = planted_dataset(n=30, features=3)
    from approxgnn.graph import normalize

    with pytest.raises(ValueError, match="shape"):
        compute_first_hop(normalize(_graph(data), "gcn"), data.x, np.empty((30, 3), np.float32))


def _losses(result):
    return np.array([c["loss"] for c in result["curve"]])


@pytest.mark.parametrize("model", ["gcn", "sage"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_full_batch_precomputed_equals_plain_under_real_dynamics(model, batch_norm):
    # Hidden dropout on, Adam steps, several epochs; input dropout 0 (what the table needs).
    data = planted_dataset(n=400, features=12)
    common = dict(dataset="planted", model=model, layers=3, hidden=24, dropout=0.5, input_dropout=0.0, epochs=6,
                  lr=0.02, batch_norm=batch_norm, progress=False, seed=5)
    on = run(TrainConfig(**common, precompute="on"), data)
    off = run(TrainConfig(**common, precompute="off"), data)
    assert on["precompute"]["path"] == "precomputed" and off["precompute"]["path"] == "plain"
    assert on["precompute"]["seconds"] >= 0 and on["precompute"]["bytes"] > 0
    np.testing.assert_allclose(_losses(on), _losses(off), rtol=1e-5)
    assert _losses(on)[-1] < _losses(on)[0]  # it trained
    # The two models end with the same weights, to rounding.
    for (k, a), (_, b) in zip(on["best_model"].items(), off["best_model"].items()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_rsc_budgets_only_the_layers_that_still_propagate():
    data = planted_dataset(n=400, features=12)
    cfg = TrainConfig(dataset="planted", model="gcn", engine="rsc", layers=3, hidden=16, epochs=6, input_dropout=0.0,
                      progress=False, precompute="on")
    cfg.rsc.budget, cfg.rsc.warmup = 0.3, 1
    r = run(cfg, data)
    assert r["precompute"]["path"] == "precomputed"
    assert sorted(r["engine_stats"]["detail"]["layers"]) == [1, 2]  # layer 0 has no SpMM left
    assert np.isfinite(_losses(r)).all()


def test_which_path_runs_and_why():
    assert TrainConfig(model="gcn", input_dropout=0.0).first_hop_path()[0]
    assert TrainConfig(model="sage", engine="rsc").first_hop_path()[0]  # full-batch default: inputs untouched
    use, why = TrainConfig(model="gcn", input_dropout=0.3).first_hop_path()
    assert not use and "input dropout" in why
    use, why = TrainConfig(model="gcn2").first_hop_path()
    assert not use and "gcn2" in why
    assert not TrainConfig(model="gcn", precompute="off").first_hop_path()[0]
    # Mini-batch: on for both engines (measured), off when asked.
    assert TrainConfig(model="sage", engine="sample").first_hop_path()[0]
    assert TrainConfig(model="sage", engine="refresh").first_hop_path()[0]
    assert not TrainConfig(model="sage", engine="refresh", precompute="off").first_hop_path()[0]
    with pytest.raises(ValueError, match="input dropout"):
        TrainConfig(model="gcn", input_dropout=0.3, precompute="on")
    with pytest.raises(ValueError, match="precompute"):
        TrainConfig(precompute="sometimes")
    # A config recorded before the knob (a checkpoint being resumed) keeps the plain path.
    recorded = {k: v for k, v in TrainConfig(model="gcn").to_dict().items() if k != "precompute"}
    assert TrainConfig.from_dict(recorded).precompute == "off"
    # A partial set of values (a hand-written --config file, the flags) takes the default.
    assert TrainConfig.from_dict({"model": "gcn"}).precompute == TrainConfig().precompute


def test_plain_path_runs_with_input_dropout_and_says_so():
    data = planted_dataset(n=200, features=8)
    r = run(TrainConfig(dataset="planted", model="gcn", hidden=16, epochs=3, input_dropout=0.2, progress=False), data)
    assert r["precompute"]["path"] == "plain" and "input dropout" in r["precompute"]["reason"]


def test_cli_flags_choose_the_path():
    from approxgnn.cli import build_parser, config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["train"])).precompute == "auto"
    assert config_from_args(parse(["train", "--no-precompute"])).precompute == "off"
    cfg = config_from_args(parse(["train", "--precompute", "on", "--precompute-dir", "/tmp/t"]))
    assert cfg.precompute == "on" and cfg.precompute_dir == "/tmp/t"
    assert config_from_args(parse(["train"])).precompute_dtype == "auto"
    assert config_from_args(parse(["train", "--precompute-dtype", "float16"])).precompute_dtype == "float16"
    with pytest.raises(ValueError, match="precompute_dtype"):
        TrainConfig(dataset="planted", precompute_dtype="int8")


def _minibatch(model, fanouts, precompute, **kw):
    from approxgnn.minibatch import MiniBatchConfig

    mb = MiniBatchConfig(fanouts=fanouts, batch_size=48, cache_mb=kw.pop("cache_mb", 0.0), eval_batch_size=70)
    # A float32 table unless a test asks otherwise: the comparisons with the plain path are to 1e-5.
    return TrainConfig(dataset="planted", model=model, engine=kw.pop("engine", "sample"), layers=len(fanouts),
                       hidden=16, dropout=0.5, input_dropout=0.0, epochs=kw.pop("epochs", 4), lr=0.02,
                       progress=False, seed=3, precompute=precompute, minibatch=mb,
                       precompute_dtype=kw.pop("precompute_dtype", "float32"), **kw)


@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_minibatch_precomputed_equals_plain_with_full_fanouts(model):
    # Every neighbour at every hop: the plain path's last hop is the exact aggregation too, so the
    # two paths compute the same function on the same batches (hidden dropout on, Adam, 4 epochs).
    data = planted_dataset(n=300, features=10)
    on = run(_minibatch(model, [-1, -1, -1], "on"), data)
    off = run(_minibatch(model, [-1, -1, -1], "off"), data)
    assert on["precompute"]["path"] == "precomputed" and off["precompute"]["path"] == "plain"
    np.testing.assert_allclose(_losses(on), _losses(off), rtol=1e-5)
    np.testing.assert_allclose([c["val"] for c in on["curve"]], [c["val"] for c in off["curve"]], atol=1e-6)
    assert _losses(on)[-1] < _losses(on)[0]
    # The last hop was never sampled: fewer nodes reach layer 0.
    assert on["sampled_nodes_per_hop"][-1] < off["sampled_nodes_per_hop"][-1]


@pytest.mark.parametrize("model, row_bytes", [("sage", 10 * 4 + 10 * 2), ("gcn", (10 + 1) * 2)])
def test_minibatch_bytes_count_both_tables(model, row_bytes):
    data = planted_dataset(n=300, features=10)
    r = run(_minibatch(model, [5, 4, 3], "on", epochs=2, precompute_dtype="auto"), data)
    assert r["precompute"]["dtype"] == "float16"  # the mini-batch engines' default table
    for c in r["curve"]:
        # SAGE reads a node's own row (float32) and its precomputed mean (float16); GCN only the
        # table [ÂX | Â1] (float16).
        assert c["feature_bytes_read"] == c["feature_rows_read"] * row_bytes > 0
    plain = run(_minibatch(model, [5, 4, 3], "off", epochs=2), data)
    assert r["curve"][-1]["feature_rows_read"] < plain["curve"][-1]["feature_rows_read"]


@pytest.mark.parametrize("engine, policy", [("sample", "feature"), ("refresh", "refresh"), ("refresh", "gas")])
def test_minibatch_caches_hold_rows_of_both_tables_and_resume_exactly(tmp_path, engine, policy):
    from approxgnn.history import HistoryConfig
    from approxgnn.train import read_checkpoint

    data = planted_dataset(n=300, features=10)
    kw = dict(engine=engine, cache_mb=0.03, history=HistoryConfig(policy=policy, staleness=20))
    straight = run(_minibatch("sage", [5, 4, 3], "on", epochs=4, **kw), data)
    assert straight["precompute"]["path"] == "precomputed"
    assert sum(c["feature_cache_rows_served"] for c in straight["curve"]) > 0  # the cache served joined rows
    run(_minibatch("sage", [5, 4, 3], "on", epochs=2, out=str(tmp_path), checkpoint_every=2, **kw), data)
    resumed = run(_minibatch("sage", [5, 4, 3], "on", epochs=4, out=str(tmp_path), checkpoint_every=2, **kw), data,
                  resume_state=read_checkpoint(tmp_path))
    keys = ("loss", "val", "feature_bytes_read", "feature_cache_rows_served", "hit_rate")
    assert [[c.get(k) for k in keys] for c in straight["curve"]] == [[c.get(k) for k in keys] for c in resumed["curve"]]


def _pyg_losses(kind, precompute, fanouts, policy="none", epochs=3):
    from torch_geometric.nn.models import GCN, GraphSAGE

    from approxgnn.pyg import HistoryGNN, NeighborBatchLoader

    d = planted_dataset(n=300, features=10)
    loader = NeighborBatchLoader(d, fanouts, batch_size=40, input_nodes=d.train_mask, seed=2,
                                 norm="mean" if kind == "sage" else "gcn", precompute=precompute)
    torch.manual_seed(4)
    model = (GraphSAGE if kind == "sage" else GCN)(10, 16, len(fanouts), d.num_classes, dropout=0.5)
    wrapped = HistoryGNN(model, loader, cache_mb=0.05, policy=policy, staleness=30)
    opt = torch.optim.Adam(wrapped.parameters(), lr=0.02)
    losses = []
    for _ in range(epochs):
        wrapped.train()
        for batch in loader:
            opt.zero_grad()
            loss = F.cross_entropy(wrapped(batch)[: batch.batch_size], batch.y[: batch.batch_size])
            loss.backward()
            opt.step()
            wrapped.push(batch)
            losses.append(float(loss.detach()))
    return np.array(losses), wrapped, d, batch


@pytest.mark.parametrize("kind", ["sage", "gcn"])
def test_pyg_loader_and_history_gnn_take_the_precomputed_first_hop(kind):
    pytest.importorskip("torch_geometric")

    on, wrapped, d, batch = _pyg_losses(kind, True, [-1, -1, -1])
    off, plain, _, _ = _pyg_losses(kind, False, [-1, -1, -1])
    np.testing.assert_allclose(on, off, rtol=1e-5)  # full neighbourhoods: the same function, to rounding
    # The batch stops one hop earlier: two edge groups for three layers; x holds layer 0's joined rows.
    assert len(batch.num_sampled_edges) == 2 and batch.x.size(1) == (20 if kind == "sage" else 11)
    nodes = np.flatnonzero(d.test_mask)
    torch.testing.assert_close(wrapped.inference(nodes), plain.inference(nodes), rtol=1e-4, atol=1e-5)
    # With sampling and a history cache it trains, serving hits at hidden layers.
    sampled, cached, _, _ = _pyg_losses(kind, True, [4, 3, 2], policy="gas", epochs=4)
    assert np.isfinite(sampled).all() and cached.engine.stats()["hit_rate"] > 0


def _approximated_losses(kind, precompute, budget=1.0, epochs=5, input_dropout=0.0):
    from torch_geometric.nn.models import GCN, GraphSAGE

    from approxgnn.pyg import approximate

    d = planted_dataset(n=300, features=10)
    x, y = torch.from_numpy(d.x), torch.from_numpy(d.y)
    ei, mask = torch.from_numpy(d.edge_index), torch.from_numpy(d.train_mask)
    torch.manual_seed(6)
    model = approximate((GraphSAGE if kind == "sage" else GCN)(10, 16, 3, d.num_classes, dropout=0.5),
                        budget=budget, epochs=epochs, precompute=precompute, min_layer_flops=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        inp = F.dropout(x, input_dropout) if input_dropout else x
        loss = F.cross_entropy(model(inp, ei)[mask], y[mask])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return np.array(losses), model


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_pyg_approximate_reuses_the_first_aggregation(kind):
    pytest.importorskip("torch_geometric")
    from approxgnn.pyg import engine_of

    on, model = _approximated_losses(kind, True)
    off, _ = _approximated_losses(kind, False)
    np.testing.assert_allclose(on, off, rtol=1e-5)  # budget 1: exact either way, the same function
    assert engine_of(model)._first_hops[0][3] is not None  # the table was built and used
    # Under a budget, RSC stops budgeting the layer whose product is gone.
    _, sampled = _approximated_losses(kind, True, budget=0.3, epochs=6)
    layers = {l for e in engine_of(sampled).bound.values() for l in e.engine.samplers}
    assert 0 not in layers and layers
    # An input dropped out before the first layer is new every step: no table is ever built.
    _, dropped = _approximated_losses(kind, True, input_dropout=0.3)
    assert engine_of(dropped)._first_hops[0][3] is None


# ---- a float16 table: half the bytes per table row, the same training to rounding ----------------

@pytest.mark.parametrize("norm", ["gcn", "mean"])
def test_float16_table_is_the_float32_one_rounded_and_keyed_apart(tmp_path, norm):
    data = planted_dataset(n=150, features=7)
    f32 = precompute_first_hop(_graph(data), data.x, norm, directory=tmp_path)
    f16 = precompute_first_hop(_graph(data), data.x, norm, directory=tmp_path, dtype="float16")
    assert f16.table.dtype == np.float16 and f16.path != f32.path and not f16.reused
    assert f16.bytes * 2 == f32.bytes and f16.info()["dtype"] == "float16"
    np.testing.assert_array_equal(f16.table, np.asarray(f32.table).astype(np.float16))
    assert precompute_first_hop(_graph(data), data.x, norm, directory=tmp_path, dtype="float16").reused
    with pytest.raises(ValueError, match="dtype"):
        precompute_first_hop(_graph(data), data.x, norm, dtype="bfloat16")


@pytest.mark.parametrize("kind", ["ram", "mmap", "disk"])
def test_every_store_reads_a_float16_table_as_float32_and_counts_its_bytes(tmp_path, kind):
    from approxgnn.minibatch import ArrayFeatureStore, DiskFeatureStore

    rng = np.random.default_rng(0)
    table = rng.standard_normal((500, 33)).astype(np.float16)
    path = tmp_path / "t.npy"
    np.save(path, table)
    store = {"ram": lambda: ArrayFeatureStore(table), "mmap": lambda: ArrayFeatureStore.open(path),
             "disk": lambda: DiskFeatureStore(path, threads=4)}[kind]()
    ids = rng.integers(0, 500, 97)
    got = store.read(ids)
    assert got.dtype == torch.float32 and store.row_bytes == 33 * 2
    np.testing.assert_array_equal(got.numpy(), table[ids].astype(np.float32))
    assert store.bytes_read == 97 * 33 * 2 and store.rows_read == 97
    np.testing.assert_array_equal(store.full().numpy(), table.astype(np.float32))


def test_disk_features_read_the_table_from_disk_too(tmp_path):
    from approxgnn.minibatch import ArrayFeatureStore, DiskFeatureStore, first_hop_store

    data = planted_dataset(n=260, features=8)
    np.save(tmp_path / "x.npy", data.x)
    ids = np.random.default_rng(1).integers(0, 260, 150)
    disk, table = first_hop_store(_graph(data), DiskFeatureStore(tmp_path / "x.npy", threads=4), "mean",
                                  dtype="float16")
    ram, _ = first_hop_store(_graph(data), ArrayFeatureStore(data.x), "mean", dtype="float16")
    # Both tables by pread: X and the table (a float16 file beside x.npy).
    assert all(isinstance(p, DiskFeatureStore) for p in disk.parts) and table.path.endswith(".npy")
    np.testing.assert_array_equal(disk.read(ids).numpy(), ram.read(ids).numpy())
    assert disk.bytes_read == ram.bytes_read == 150 * 8 * (4 + 2)
    # What left the disk is both files' pages, as each part counted them.
    c = disk.counters()
    assert c["disk_bytes_read"] == sum(p.disk_bytes_read for p in disk.parts) > 0
    assert c["disk_reads"] == sum(p.disk_reads for p in disk.parts) and c["rows_read"] == 150


@pytest.mark.parametrize("engine", ["sample", "exact"])
def test_float16_table_trains_like_the_float32_one(engine):
    # Real dynamics (hidden dropout, Adam, several epochs): the rounding of a mean to 11 bits moves
    # the losses by far less than training moves them.
    data = planted_dataset(n=300, features=10)
    if engine == "sample":
        cfgs = [_minibatch("sage", [5, 4, 3], "on", precompute_dtype=d) for d in ("float32", "float16")]
    else:
        cfgs = [TrainConfig(dataset="planted", model="sage", engine="exact", hidden=16, dropout=0.5, input_dropout=0.0,
                            epochs=6, lr=0.02, progress=False, seed=3, precompute="on", precompute_dtype=d)
                for d in ("float32", "float16")]
    f32, f16 = (run(c, data) for c in cfgs)
    assert f16["precompute"]["dtype"] == "float16" and f32["precompute"]["dtype"] == "float32"
    np.testing.assert_allclose(_losses(f16), _losses(f32), rtol=2e-3)
    assert _losses(f16)[-1] < _losses(f16)[0]
    if engine == "sample":  # SAGE reads X (4 bytes a float) and the mean (2): 6 of 8 bytes
        assert f16["curve"][-1]["feature_bytes_read"] * 8 == f32["curve"][-1]["feature_bytes_read"] * 6



def test_features_on_disk_are_hashed_once_while_their_file_is_unchanged(tmp_path):
    import json
    import os

    from approxgnn.precompute import features_digest

    data = planted_dataset(n=140, features=5)
    np.save(tmp_path / "x.npy", data.x)
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    first = precompute_first_hop(_graph(data), x, "mean")  # the table and the memo beside x.npy
    (memo,) = tmp_path.glob(".features-*.json")
    assert json.loads(memo.read_text())["digest"] == features_digest(x)  # the real digest, without the memo
    # While the file's identity holds, the memo is what is read: a planted digest comes back.
    kept = json.loads(memo.read_text())
    memo.write_text(json.dumps({**kept, "digest": "planted"}))
    assert features_digest(x, memo_dir=tmp_path) == "planted"
    # Rewritten in place (one value; the same size): its mtime moves, so it is hashed again, and a
    # table of the old features is not reused.
    w = np.load(tmp_path / "x.npy", mmap_mode="r+")
    w[7, 1] += 1.0
    w.flush()
    del w
    st = os.stat(tmp_path / "x.npy")
    os.utime(tmp_path / "x.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert features_digest(x, memo_dir=tmp_path) == features_digest(x) != "planted"
    again = precompute_first_hop(_graph(data), x, "mean")
    assert not again.reused and again.path != first.path


def test_table_dtype_auto_is_per_engine_family_and_recorded_runs_keep_float32():
    assert [TrainConfig(dataset="planted", engine=e).table_dtype() for e in ("exact", "rsc", "sample", "refresh")] \
        == ["float32", "float32", "float16", "float16"]
    assert TrainConfig(dataset="planted", engine="sample", precompute_dtype="float32").table_dtype() == "float32"
    # A run recorded before the option (its config has no precompute_dtype) resumes with its float32 table.
    recorded = TrainConfig(dataset="planted", engine="sample", precompute="on").to_dict()
    del recorded["precompute_dtype"]
    assert TrainConfig.from_dict(recorded).table_dtype() == "float32"


def _packed_pair(tmp_path, data, **split_kw):
    """SAGE's first hop over a disk store, split into two files and packed into one."""
    from approxgnn.minibatch import DiskFeatureStore, first_hop_store, write_features

    write_features(tmp_path / "x.npy", data.x)
    g = _graph(data)
    split, _ = first_hop_store(g, DiskFeatureStore(tmp_path / "x.npy", threads=4), "mean", dtype="float16",
                               layout="split")
    packed, table = first_hop_store(g, DiskFeatureStore(tmp_path / "x.npy", threads=4), "mean", dtype="float16",
                                    layout="packed")
    return split, packed, table


def test_packed_rows_equal_the_two_files_at_one_read_a_row(tmp_path):
    from approxgnn.minibatch import DiskFeatureStore

    # 256-d: X's row is 1 KiB, the float16 mean's 512 B, so a packed record is 1.5 KiB padded to 2 KiB.
    data = planted_dataset(n=300, features=256)
    split, packed, table = _packed_pair(tmp_path, data)
    assert isinstance(packed, DiskFeatureStore) and [f[0] for f in packed.fields] == ["x", "mean"]
    assert packed.stride == 2048 and packed.row_bytes == split.row_bytes == 256 * 6 and packed.dim == 512
    assert packed.path.name.endswith("-packed.npy") and packed.path.parent == split.parts[1].path.parent
    rng = np.random.default_rng(0)
    for ids in (rng.integers(0, 300, 700), rng.permutation(300)[:50], np.array([299, 0, 299]), np.arange(300)):
        np.testing.assert_array_equal(packed.read(ids).numpy(), split.read(ids).numpy())
    np.testing.assert_array_equal(packed.full().numpy(), split.full().numpy())
    assert packed.bytes_read == split.bytes_read and packed.rows_read == split.rows_read
    # Rows 16 apart share no page in any file: two reads (X's page and the table's) a row split,
    # one packed, and a packed record never straddles a page.
    sparse = np.arange(0, 300, 16)
    before_s, before_p = split.counters(), packed.counters()
    split.read(sparse)
    packed.read(sparse)
    grew = {k: (split.counters()[k] - before_s[k], packed.counters()[k] - before_p[k])
            for k in ("disk_reads", "disk_bytes_read")}
    assert grew["disk_reads"] == (2 * len(sparse), len(sparse))
    assert grew["disk_bytes_read"] == (2 * len(sparse) * 4096, len(sparse) * 4096)
    assert packed.state_dict()["fields"] == ["x", "mean"]


def test_auto_packs_when_the_disk_has_room_and_reuses_a_packed_file(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from approxgnn.minibatch import DiskFeatureStore, JoinedFeatureStore, first_hop_store, write_features
    from approxgnn.minibatch import stores

    data = planted_dataset(n=200, features=16)
    write_features(tmp_path / "x.npy", data.x)
    g, usage = _graph(data), namedtuple("usage", "total used free")

    def open_auto():
        return first_hop_store(g, DiskFeatureStore(tmp_path / "x.npy", threads=2), "mean", dtype="float16",
                               layout="auto")[0]

    monkeypatch.setattr(stores.shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 30))  # 1 GiB free: no room
    assert isinstance(open_auto(), JoinedFeatureStore) and not list(tmp_path.glob("*-packed.npy"))
    monkeypatch.setattr(stores.shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 40))
    assert isinstance(open_auto(), DiskFeatureStore) and len(list(tmp_path.glob("*-packed.npy"))) == 1
    monkeypatch.setattr(stores.shutil, "disk_usage", lambda p: usage(1 << 40, 0, 0))  # written once: reused
    assert isinstance(open_auto(), DiskFeatureStore)
    split, _ = first_hop_store(g, DiskFeatureStore(tmp_path / "x.npy"), "mean", dtype="float16", layout="split")
    assert isinstance(split, JoinedFeatureStore)  # asked for two files: two files, packed one or not
    monkeypatch.setattr(stores.shutil, "disk_usage", shutil.disk_usage)
    # No packed layout where it cannot apply: GCN reads its table alone, RAM features have no file.
    with pytest.raises(ValueError, match="packed"):
        first_hop_store(g, DiskFeatureStore(tmp_path / "x.npy"), "gcn", dtype="float16", layout="packed")
    with pytest.raises(ValueError, match="packed"):
        first_hop_store(g, stores.ArrayFeatureStore(data.x), "mean", layout="packed")


def test_a_packed_file_that_lies_is_named(tmp_path):
    from approxgnn.minibatch import DiskFeatureStore
    from approxgnn.minibatch.stores import write_packed

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    path = write_packed(tmp_path / "p.npy", {"x": x, "mean": x.astype(np.float16)})
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 5)
    with pytest.raises(ValueError, match=rf"{path}: truncated"):
        DiskFeatureStore(path)
    odd = tmp_path / "odd.npy"
    np.save(odd, np.zeros(10, dtype=[("x", "<f4", (4,)), ("ids", "<i8", (2,))]))
    with pytest.raises(ValueError, match="'ids' must be a float32 or float16 vector"):
        DiskFeatureStore(odd)


def test_training_on_packed_rows_equals_the_split_files_and_resumes_exactly(tmp_path):
    from approxgnn.minibatch import MiniBatchConfig
    from approxgnn.train import read_checkpoint

    data = planted_dataset(n=300, features=10)

    def cfg(layout, **kw):
        mb = MiniBatchConfig(fanouts=[5, 4, 3], batch_size=48, cache_mb=0.02, eval_batch_size=70,
                             features_on_disk=True, feature_store="disk")
        return TrainConfig(dataset="planted", model="sage", engine="refresh", layers=3, hidden=16, dropout=0.5,
                           input_dropout=0.0, epochs=kw.pop("epochs", 4), lr=0.02, progress=False, seed=3,
                           precompute="on", precompute_layout=layout, minibatch=mb, **kw)

    split, packed = run(cfg("split"), data), run(cfg("packed"), data)
    assert (split["precompute"]["layout"], packed["precompute"]["layout"]) == ("split", "packed")
    assert packed["feature_store"] == "disk"
    keys = ("loss", "val", "feature_bytes_read", "feature_rows_read", "hit_rate")
    assert [[c.get(k) for k in keys] for c in split["curve"]] == [[c.get(k) for k in keys] for c in packed["curve"]]
    assert packed["test"] == split["test"] and packed["curve"][-1]["loss"] < packed["curve"][0]["loss"]
    # One file: fewer reads reach the disk for the same rows.
    assert sum(c["disk_reads"] for c in packed["curve"]) < sum(c["disk_reads"] for c in split["curve"])
    run(cfg("packed", epochs=2, out=str(tmp_path / "r"), checkpoint_every=2), data)
    resumed = run(cfg("packed", out=str(tmp_path / "r"), checkpoint_every=2), data,
                  resume_state=read_checkpoint(tmp_path / "r"))
    assert [[c.get(k) for k in keys] for c in packed["curve"]] == [[c.get(k) for k in keys] for c in resumed["curve"]]


def test_a_recorded_run_keeps_two_files_and_packed_needs_mini_batch_sage():
    recorded = TrainConfig(dataset="cora", engine="sample", model="sage").to_dict()
    del recorded["precompute_layout"]
    assert TrainConfig.from_dict(recorded).precompute_layout == "split"
    assert TrainConfig(dataset="cora").precompute_layout == "auto"
    for kw in ({"model": "gcn", "engine": "sample"}, {"model": "sage", "engine": "exact"}):
        with pytest.raises(ValueError, match="packed applies to mini-batch SAGE"):
            TrainConfig(dataset="cora", precompute_layout="packed", **kw)
