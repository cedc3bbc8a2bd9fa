"""The precomputed first hop: the table itself, its key, and training on it against the plain path."""
import numpy as np
import pytest
import torch

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

