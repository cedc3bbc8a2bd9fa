"""Synthetic power-law graphs: determinism, sizes, degree tail, homophily, learnability."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from approxgnn.datasets import Dataset, DatasetError, load_dataset, synthetic
from approxgnn.datasets.registry import parse_synthetic_name


@pytest.fixture(scope="module")
def small() -> Dataset:
    return synthetic(num_nodes=20_000, seed=3)


@pytest.fixture(scope="module")
def big() -> Dataset:
    """200k nodes / 2M undirected edges: the quick check at a scale where the tail shows."""
    start = time.perf_counter()
    ds = synthetic(num_nodes=200_000, avg_degree=20, num_features=16, seed=0)
    ds.meta["build_seconds"] = time.perf_counter() - start
    return ds


def degrees(ds: Dataset) -> np.ndarray:
    return np.bincount(ds.edge_index.ravel(), minlength=ds.num_nodes)


def test_deterministic_by_seed(small: Dataset) -> None:
    again = synthetic(num_nodes=20_000, seed=3)
    for field in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        assert np.array_equal(getattr(small, field), getattr(again, field)), field
    other = synthetic(num_nodes=20_000, seed=4)
    assert not np.array_equal(small.edge_index, other.edge_index) and not np.array_equal(small.y, other.y)
    resplit = synthetic(num_nodes=20_000, seed=3, split=1)
    assert np.array_equal(resplit.edge_index, small.edge_index) and np.array_equal(resplit.x, small.x)
    assert not np.array_equal(resplit.train_mask, small.train_mask)
    wider = synthetic(num_nodes=20_000, seed=3, num_features=8)
    assert np.array_equal(wider.edge_index, small.edge_index)  # separate random streams


def test_sizes_and_canonical_edges(small: Dataset) -> None:
    assert small.num_nodes == 20_000 and small.num_features == 64 and small.num_classes == 8
    assert small.num_edges == 20_000 * 20 // 2 == small.meta["undirected_edges"]  # mean degree exactly 20
    u, v = small.edge_index
    assert (u < v).all()  # each undirected edge once, no self-loops
    keys = u * small.num_nodes + v
    assert (np.diff(keys) > 0).all()  # sorted and distinct
    assert np.bincount(small.y).tolist() == [2500] * 8
    assert (small.train_mask.sum(), small.val_mask.sum(), small.test_mask.sum()) == (2000, 2000, 16000)
    assert np.array_equal(np.bincount(small.y[small.train_mask]), [250] * 8)
    assert small.x.dtype == np.float32 and small.x.flags.c_contiguous


def test_power_law_degrees(big: Dataset) -> None:
    deg = degrees(big)
    assert deg.mean() == pytest.approx(20.0)
    assert deg.max() > 20 * deg.mean()
    assert deg.max() < 2 * np.sqrt(200_000 * 20)  # capped near the structural cutoff
    # The CCDF P(D >= d) of a power law with exponent 2.5 falls as d ** -1.5 in the tail.
    ds = np.array([40, 80, 160, 320])
    ccdf = np.array([(deg >= d).mean() for d in ds])
    slope = np.polyfit(np.log(ds), np.log(ccdf), 1)[0]
    assert -1.9 < slope < -1.1
    assert big.meta["build_seconds"] < 10.0  # ~0.5 s on 2 cores; generous for a busy machine


@pytest.mark.parametrize("homophily", [0.2, 0.8])
def test_homophily_as_configured(homophily: float) -> None:
    ds = synthetic(num_nodes=20_000, num_classes=5, homophily=homophily, num_features=4)
    expected = homophily + (1 - homophily) / 5  # intra-class draws plus chance hits
    same = (ds.y[ds.edge_index[0]] == ds.y[ds.edge_index[1]]).mean()
    assert abs(same - expected) < 0.02 and ds.meta["edge_homophily"] == pytest.approx(same)


def _linear_probe(x: np.ndarray, ds: Dataset) -> float:
    """Test accuracy of multinomial logistic regression trained by a few Adam steps."""
    xt, y = torch.tensor(np.asarray(x)), torch.tensor(ds.y)
    tr, te = torch.tensor(ds.train_mask), torch.tensor(ds.test_mask)
    torch.manual_seed(0)
    lin = torch.nn.Linear(xt.shape[1], ds.num_classes)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xt[tr]), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        return (lin(xt[te]).argmax(1) == y[te]).float().mean().item()


def test_labels_learnable_and_graph_helps(small: Dataset, one_torch_thread: None) -> None:
    chance = 1 / small.num_classes
    mlp = _linear_probe(small.x, small)
    assert mlp > 1.5 * chance  # features alone predict the label ...
    n = small.num_nodes
    adj = sp.coo_matrix((np.ones(small.num_edges, np.float32), tuple(small.edge_index)), shape=(n, n)).tocsr()
    adj = adj + adj.T + sp.eye(n, dtype=np.float32, format="csr")
    mean = sp.diags(1.0 / np.asarray(adj.sum(1)).ravel()) @ adj
    assert _linear_probe(mean @ small.x, small) > mlp + 0.2  # ... and the structure helps more


def test_features_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    on_disk = synthetic(num_nodes=70_000, avg_degree=4, num_features=8, seed=5, features_path=path)
    in_ram = synthetic(num_nodes=70_000, avg_degree=4, num_features=8, seed=5)
    assert isinstance(on_disk.x, np.memmap) and not on_disk.x.flags.writeable
    assert np.array_equal(on_disk.x, in_ram.x) and path.is_file()
    with pytest.raises(DatasetError, match="cannot write"):
        synthetic(num_nodes=100, features_path=tmp_path / "missing" / "x.npy")


def test_registry_names(tmp_path: Path) -> None:
    assert parse_synthetic_name("synthetic-1m") == {"num_nodes": 1_000_000, "avg_degree": 20.0, "num_features": 128}
    assert parse_synthetic_name("synthetic-500k")["num_nodes"] == 500_000
    assert parse_synthetic_name("synthetic-2.5m")["num_nodes"] == 2_500_000
    assert parse_synthetic_name("synthetic-big") is None
    start = time.perf_counter()
    default = load_dataset("synthetic", root=tmp_path)
    assert time.perf_counter() - start < 1.0 and default.num_nodes == 20_000
    ds = load_dataset("synthetic-5k", root=tmp_path, num_features=16, seed=2)
    assert (ds.name, ds.num_nodes, ds.num_features, ds.num_edges) == ("synthetic-5k", 5000, 16, 50_000)
    with pytest.raises(DatasetError, match="unknown option.*num_nodez"):
        load_dataset("synthetic", num_nodez=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exponent": 2.0}, "exponent must be > 2"),
        ({"homophily": 1.5}, "homophily"),
        ({"num_nodes": 1}, "num_nodes"),
        ({"avg_degree": 50, "num_nodes": 10}, "avg_degree"),
        ({"num_classes": 0}, "num_classes"),
        ({"train": 0.9, "val": 0.2}, "val split needs"),
    ],
)
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        synthetic(**{"num_nodes": 1000, **kwargs})


@pytest.mark.parametrize("kind", ["hard", "hard2"])
def test_hard_preset_is_hard_but_learnable(kind: str, one_torch_thread: None) -> None:
    """``synthetic-hard-<size>`` / ``synthetic-hard2-<size>``: the difficulty knobs of
    HARD_SYNTHETIC / HARD2_SYNTHETIC, power-law degrees (hard2: twice the easy preset's mean), 2 %
    training nodes; neighbourhoods still carry the label (linear probe)."""
    from approxgnn.datasets.registry import HARD2_SYNTHETIC, HARD_SYNTHETIC

    knobs = HARD_SYNTHETIC if kind == "hard" else HARD2_SYNTHETIC
    params = parse_synthetic_name(f"synthetic-{kind}-20k")
    assert params == {**parse_synthetic_name("synthetic-20k"), **knobs}
    ds = load_dataset(f"synthetic-{kind}-20k", seed=1)
    assert ds.num_classes == knobs["num_classes"] and ds.num_nodes == 20_000
    assert ds.train_mask.sum() == pytest.approx(0.02 * ds.num_nodes, rel=0.05)
    h = knobs["homophily"]
    assert ds.meta["edge_homophily"] == pytest.approx(h + (1 - h) / ds.num_classes, abs=0.02)
    easy = load_dataset("synthetic-20k", seed=1)
    scale = knobs.get("avg_degree", 20.0) / 20.0
    assert degrees(ds).mean() == pytest.approx(scale * degrees(easy).mean(), rel=0.02)
    feats = _linear_probe(ds.x, ds)
    a = sp.csr_matrix((np.ones(ds.edge_index.shape[1]), ds.edge_index), shape=(ds.num_nodes,) * 2)
    a = a + a.T + sp.eye(ds.num_nodes)
    hop = sp.diags(1.0 / np.asarray(a.sum(1)).ravel()) @ a
    two = _linear_probe((hop @ (hop @ ds.x)).astype(np.float32), ds)
    chance = 1.0 / ds.num_classes
    # weak features (hard2's weaker still: 16 classes, noise 1.0), the graph helps, far from solved
    assert chance + (0.05 if kind == "hard" else 0.03) < feats < two < 0.95
    assert two > feats + 0.1
