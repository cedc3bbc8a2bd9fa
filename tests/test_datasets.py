"""Dataset loaders: counts on the real files, splits, the OGB layout, and malformed-file errors."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from approxgnn.datasets import Dataset, DatasetError, list_datasets, load_dataset
from approxgnn.datasets import _csv
from approxgnn.datasets._csv import read_csv


def undirected_edge_count(ds: Dataset) -> int:
    """Distinct undirected edges after symmetrising, deduplicating and dropping self-loops."""
    a, b = np.minimum(*ds.edge_index), np.maximum(*ds.edge_index)
    keep = a != b
    return int(np.unique(a[keep] * ds.num_nodes + b[keep]).size)


def masks_disjoint(ds: Dataset) -> bool:
    return not ((ds.train_mask & ds.val_mask) | (ds.train_mask & ds.test_mask) | (ds.val_mask & ds.test_mask)).any()


# --------------------------------------------------------------------------- real files

# name: nodes, undirected edges, features, classes, metric. Planetoid, tolokers, minesweeper and
# Twitch DE/ENGB are the README's numbers; the rest were computed once and pinned.
EXPECTED = {
    "cora": (2708, 5278, 1433, 7, "acc"),
    "citeseer": (3327, 4552, 3703, 6, "acc"),
    "tolokers": (11758, 519000, 10, 2, "auc"),
    "minesweeper": (10000, 39402, 7, 2, "auc"),
    "actor": (7600, 26659, 932, 5, "acc"),
    "squirrel": (5201, 198353, 2089, 5, "acc"),
    "chameleon": (2277, 31371, 2325, 5, "acc"),
    "squirrel_filtered": (2223, 46998, 2089, 5, "acc"),
    "chameleon_filtered": (890, 8854, 2325, 5, "acc"),
    "cornell": (183, 277, 1703, 5, "acc"),
    "texas": (183, 279, 1703, 5, "acc"),
    "wisconsin": (251, 450, 1703, 5, "acc"),
    "gnnb-cora": (2708, 5278, 1433, 7, "acc"),
    "gnnb-citeseer": (3312, 4536, 3703, 6, "acc"),
    "twitch-de": (9498, 153138, 3170, 2, "auc"),
    "twitch-engb": (7126, 35324, 3170, 2, "auc"),
    "twitch-es": (4648, 59382, 3170, 2, "auc"),
    "twitch-fr": (6549, 112666, 3170, 2, "auc"),
    "twitch-ptbr": (1912, 31299, 3169, 2, "auc"),
    "twitch-ru": (4385, 37304, 3170, 2, "auc"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dataset_counts(shared_data: Path, name: str) -> None:
    ds = load_dataset(name, root=shared_data)
    nodes, edges, feats, classes, metric = EXPECTED[name]
    assert (ds.num_nodes, undirected_edge_count(ds), ds.num_features, ds.num_classes, ds.metric) == (
        nodes, edges, feats, classes, metric)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and ds.edge_index.dtype == np.int64
    assert ds.name == name and masks_disjoint(ds) and ds.val_mask.any() and ds.test_mask.any()


def test_planetoid_public_split(shared_data: Path) -> None:
    cora = load_dataset("cora", root=shared_data)
    assert np.array_equal(np.flatnonzero(cora.train_mask), np.arange(140))
    assert np.array_equal(np.flatnonzero(cora.val_mask), np.arange(140, 640))
    assert np.array_equal(np.flatnonzero(cora.test_mask), np.arange(1708, 2708))
    assert np.array_equal(np.bincount(cora.y[cora.train_mask]), [20] * 7)
    assert set(np.unique(cora.x)) <= {0.0, 1.0}  # raw binary features, not row-normalised
    citeseer = load_dataset("citeseer", root=shared_data)
    padded = ~(citeseer.train_mask | citeseer.val_mask | citeseer.test_mask)
    padded[: 2312] = False  # allx nodes outside the split are ordinary unlabelled-for-training nodes
    assert padded.sum() == 15 == citeseer.meta["padded_nodes"]
    assert not citeseer.x[padded].any()
    with pytest.raises(DatasetError, match="public split"):
        load_dataset("cora", root=shared_data, split=1)


def test_planetoid_labels_align_with_features(shared_data: Path, one_torch_thread: None) -> None:
    """SGC (two propagation steps + a linear model) on the public split: ~81% on Cora."""
    ds = load_dataset("cora", root=shared_data)
    n = ds.num_nodes
    adj = sp.coo_matrix((np.ones(ds.num_edges), tuple(ds.edge_index)), shape=(n, n)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float32)
    adj.setdiag(1.0)
    dinv = sp.diags(1.0 / np.sqrt(np.asarray(adj.sum(1)).ravel()))
    prop = (dinv @ adj @ dinv).tocsr()
    x = ds.x / np.maximum(ds.x.sum(1, keepdims=True), 1)
    x = torch.tensor(prop @ (prop @ x), dtype=torch.float32)
    y, tr, te = torch.tensor(ds.y), torch.tensor(ds.train_mask), torch.tensor(ds.test_mask)
    torch.manual_seed(0)
    lin = torch.nn.Linear(ds.num_features, ds.num_classes)
    opt = torch.optim.Adam(lin.parameters(), lr=0.2, weight_decay=5e-5)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[tr]), y[tr]).backward()
        opt.step()
    acc = (lin(x[te]).argmax(1) == y[te]).float().mean().item()
    assert acc > 0.78


def test_heterophilous_splits_and_path(shared_data: Path) -> None:
    path = shared_data / "heterophilous_graphs" / "minesweeper.npz"
    s0, s3 = load_dataset("minesweeper", root=shared_data), load_dataset(str(path), split=3)
    assert s3.name == "minesweeper" and s3.meta["split_index"] == 3 and s3.meta["num_splits"] == 10
    assert not np.array_equal(s0.train_mask, s3.train_mask)
    assert np.array_equal(s0.x, s3.x) and np.array_equal(s0.edge_index, s3.edge_index)
    with pytest.raises(DatasetError, match=r"split 10 out of range.*10 splits"):
        load_dataset(str(path), split=10)
    assert load_dataset("squirrel-filtered", root=shared_data).name == "squirrel_filtered"


def test_gnn_benchmark_random_split(shared_data: Path) -> None:
    a = load_dataset("gnnb-cora", root=shared_data, seed=1)
    assert np.array_equal(np.bincount(a.y[a.train_mask]), [20] * 7)
    assert (a.val_mask.sum(), a.test_mask.sum()) == (500, 1000) and masks_disjoint(a)
    b = load_dataset(str(shared_data / "gnn_benchmark" / "cora.npz"), seed=1)
    assert np.array_equal(a.train_mask, b.train_mask) and np.array_equal(a.test_mask, b.test_mask)
    assert not np.array_equal(a.train_mask, load_dataset("gnnb-cora", root=shared_data, seed=1, split=1).train_mask)
    c = load_dataset("gnnb-cora", root=shared_data, train_per_class=5, num_val=100, num_test=None)
    assert c.train_mask.sum() == 35 and c.val_mask.sum() == 100 and c.test_mask.sum() == 2708 - 135
    with pytest.raises(DatasetError, match="unknown option"):
        load_dataset("gnnb-cora", root=shared_data, bogus=1)


def test_twitch_features_and_split(shared_data: Path) -> None:
    ds = load_dataset("twitch-ptbr", root=shared_data, num_features=3170)
    assert ds.num_features == 3170 and set(np.unique(ds.x)) == {0.0, 1.0}
    assert ds.train_mask.sum() == 956 and ds.val_mask.sum() == 478 and ds.test_mask.sum() == 478
    assert abs(ds.y[ds.train_mask].mean() - ds.y.mean()) < 0.01  # stratified
    assert load_dataset(str(shared_data / "twitch" / "PTBR")).name == "twitch-ptbr"


def test_list_datasets_real_root(shared_data: Path) -> None:
    listing = {d["name"]: d for d in list_datasets(shared_data)}
    assert set(EXPECTED) | {"synthetic"} == set(listing)
    assert all("error" not in d for d in listing.values())
    assert listing["tolokers"]["nodes"] == 11758


# --------------------------------------------------------------------------- OGB layout


def _write_gz(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("".join(r + "\n" for r in rows))


def make_ogb(root: Path, name: str = "ogbn_tiny", n: int = 50, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / name
    raw = folder / "raw"
    edges = rng.integers(0, n, size=(200, 2))
    _write_gz(raw / "edge.csv.gz", [f"{a},{b}" for a, b in edges])
    x = rng.standard_normal((n, 4))
    _write_gz(raw / "node-feat.csv.gz", [",".join(f"{v:.6f}" for v in row) for row in x])
    labels = [str(v) for v in rng.integers(0, 3, size=n)]
    labels[7] = "nan"  # unlabelled node, listed in the train split below
    _write_gz(raw / "node-label.csv.gz", labels)
    _write_gz(raw / "num-node-list.csv.gz", [str(n)])
    split = folder / "split" / "random"
    _write_gz(split / "train.csv.gz", [str(i) for i in range(0, 30)])
    _write_gz(split / "valid.csv.gz", [str(i) for i in range(30, 40)])
    _write_gz(split / "test.csv.gz", [str(i) for i in range(40, 50)])
    return folder


def test_ogb_layout(tmp_path: Path) -> None:
    folder = make_ogb(tmp_path)
    ds = load_dataset("ogbn-tiny", root=tmp_path)
    assert ds.name == "ogbn-tiny" and ds.num_nodes == 50 and ds.num_edges == 200 and ds.num_features == 4
    assert ds.train_mask.sum() == 29 and not ds.train_mask[7] and ds.y[7] == 0
    assert ds.meta["unlabelled"] == 1 and ds.meta["unlabelled_dropped_from_split"] == 1
    x = np.loadtxt(gzip.open(folder / "raw" / "node-feat.csv.gz", "rt"), delimiter=",", dtype=np.float32)
    assert np.array_equal(ds.x, x)
    assert load_dataset(str(folder)).num_nodes == 50
    assert [d["name"] for d in list_datasets(tmp_path, include_synthetic=False)] == ["ogbn-tiny"]


def test_ogb_errors(tmp_path: Path) -> None:
    folder = make_ogb(tmp_path)
    (folder / "split" / "time").mkdir()
    with pytest.raises(DatasetError, match="exactly one split type"):
        load_dataset(str(folder))
    assert load_dataset(str(folder), split_type="random").num_nodes == 50
    _write_gz(folder / "raw" / "num-node-list.csv.gz", ["60"])
    with pytest.raises(DatasetError, match=r"node-feat\.csv\.gz.*expected one per node \(60\)"):
        load_dataset(str(folder), split_type="random")
    _write_gz(folder / "raw" / "num-node-list.csv.gz", ["50"])
    _write_gz(folder / "raw" / "edge.csv.gz", ["1,2", "3,x"])
    with pytest.raises(DatasetError, match=r"edge\.csv\.gz: line 2"):
        load_dataset(str(folder), split_type="random")
    (folder / "raw" / "node-feat.csv.gz").unlink()
    with pytest.raises(DatasetError, match="node-feat.csv.gz"):
        load_dataset(str(folder), split_type="random")
    with pytest.raises(DatasetError, match="nothing is downloaded"):
        load_dataset("ogbn-arxiv", root=tmp_path)
    (tmp_path / "ogbn_empty").mkdir()
    with pytest.raises(DatasetError, match="edge.csv.gz"):
        load_dataset("ogbn-empty", root=tmp_path)


# --------------------------------------------------------------------------- CSV reader


def test_csv_reader_matches_loadtxt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    vals = rng.standard_normal((300, 5)) * 10.0 ** rng.integers(-8, 8, size=(300, 5))
    path = tmp_path / "f.csv.gz"
    with gzip.open(path, "wt") as f:
        for i, row in enumerate(vals):
            f.write(",".join(f"{v:.6e}" if i % 2 else f"{v:.9f}" for v in row) + ("\r\n" if i % 3 else "\n"))
            if i == 10:
                f.write("\n")  # a blank line is skipped
    monkeypatch.setattr(_csv, "_BLOCK_BYTES", 97)  # many blocks: lines straddle block ends
    got = read_csv(path, integer=False, dtype=np.float64)
    want = np.loadtxt(gzip.open(path, "rt"), delimiter=",")
    assert got.shape == (300, 5)
    assert np.array_equal(got[1::2], want[1::2])  # 7 significant digits: exact
    np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)  # up to 18 digits: within 1-2 ulp
    assert np.array_equal(read_csv(path, integer=False), want.astype(np.float32))
    plain = tmp_path / "i.csv"
    plain.write_text("a,b\n1,-2\n 3 , 4\nnan,inf\n")
    assert read_csv(plain, integer=False, header=True).tolist()[:2] == [[1, -2], [3, 4]]
    with pytest.raises(DatasetError, match=r"i\.csv: line 4: expected an integer"):
        read_csv(plain, integer=True, header=True)
    plain.write_text("1,2\n3\n")
    with pytest.raises(DatasetError, match="line 2: wrong number"):
        read_csv(plain, integer=True)
    plain.write_text("99999999999999999999,1\n")
    with pytest.raises(DatasetError, match="int64 range"):
        read_csv(plain, integer=True)


# --------------------------------------------------------------------------- malformed files


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _hetero_arrays(n: int = 6) -> dict[str, np.ndarray]:
    masks = np.zeros((2, n), dtype=bool)
    masks[:, 0] = True
    return {
        "node_features": np.ones((n, 3), np.float32),
        "node_labels": np.arange(n) % 3,
        "edges": np.array([[0, 1], [1, 2]]),
        "train_masks": masks,
        "val_masks": masks,
        "test_masks": masks,
    }


def test_truncated_and_wrong_npz(tmp_path: Path, shared_data: Path) -> None:
    data = (shared_data / "heterophilous_graphs" / "tolokers.npz").read_bytes()
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(data[:1000])
    with pytest.raises(DatasetError, match="trunc.npz"):
        load_dataset(str(bad))
    # A zip whose member is cut short: the directory reads, the array does not.
    cut = tmp_path / "cut.npz"
    arrays = _hetero_arrays(2000)
    np.savez(cut, **arrays)
    raw = cut.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2] + raw[len(raw) // 2 + 1000 :])
    with pytest.raises(DatasetError, match="cut.npz"):
        load_dataset(str(cut))
    wrong = _npz(tmp_path / "wrong.npz", foo=np.zeros(3))
    with pytest.raises(DatasetError, match=r"wrong\.npz: unrecognised npz layout \(keys: foo\)"):
        load_dataset(str(wrong))
    arrays = _hetero_arrays()
    del arrays["val_masks"]
    with pytest.raises(DatasetError, match=r"missing\.npz: missing key 'val_masks'"):
        load_dataset(str(_npz(tmp_path / "missing.npz", **arrays)))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("edges", np.array([[0, 6]]), "node id 6 outside the node range"),
        ("edges", np.array([0, 1, 2]), r"edges must have shape \[E, 2\]"),
        ("train_masks", np.ones((2, 5), bool), r"train_masks must have shape \[splits, 6\]"),
        ("node_features", np.full((6, 3), np.nan, np.float32), "NaN or inf"),
        ("node_features", np.ones((5, 3), np.float32), "mismatch"),
        ("node_labels", np.array([0, 1, -1, 0, 1, 0]), "negative class id"),
        ("node_labels", np.array([0.5, 1, 1, 0, 1, 0]), "non-integral"),
        ("node_labels", np.zeros(0, np.int64), "empty graph|mismatch|shape"),
    ],
)
def test_bad_fields(tmp_path: Path, field: str, value: np.ndarray, message: str) -> None:
    arrays = _hetero_arrays()
    arrays[field] = value
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(str(path))
    assert "bad.npz" in str(err.value)


def test_gnn_benchmark_bad_indices(tmp_path: Path) -> None:
    path = _npz(tmp_path / "g.npz", adj_data=np.ones(2, np.float32), adj_indices=np.array([0, 9]),
                adj_indptr=np.array([0, 1, 2]), adj_shape=np.array([2, 2]), attr_matrix=np.ones((2, 2)),
                labels=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"g\.npz: malformed CSR matrix 'adj'"):
        load_dataset(str(path))


def _planetoid_copy(shared_data: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "planetoid" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "planetoid" / "raw").glob("ind.cora.*"):
        shutil.copy(f, raw / f.name)
    return raw


def test_truncated_pickle(shared_data: Path, tmp_path: Path) -> None:
    raw = _planetoid_copy(shared_data, tmp_path)
    graph = raw / "ind.cora.graph"
    graph.write_bytes(graph.read_bytes()[:5000])
    with pytest.raises(DatasetError, match=r"ind\.cora\.graph: malformed pickle"):
        load_dataset("cora", root=tmp_path)
    (raw / "ind.cora.tx").unlink()
    with pytest.raises(DatasetError, match=r"ind\.cora\.tx.*not found"):
        load_dataset(str(raw))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 -- the classic pickle exploit
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(shared_data: Path, tmp_path: Path) -> None:
    raw = _planetoid_copy(shared_data, tmp_path)
    marker = tmp_path / "pwned"
    for part in ("x", "graph"):
        path = raw / f"ind.cora.{part}"
        original = path.read_bytes()
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
        with pytest.raises(DatasetError, match=rf"ind\.cora\.{part}: refusing to unpickle (posix|os|nt)\.system"):
            load_dataset("cora", root=tmp_path)
        assert not marker.exists()
        path.write_bytes(original)
    (raw / "ind.cora.graph").write_bytes(pickle.dumps(eval, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to unpickle (builtins|__builtin__)\.eval"):
        load_dataset("cora", root=tmp_path)


def _twitch_copy(shared_data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "twitch" / "PTBR"
    shutil.copytree(shared_data / "twitch" / "PTBR", folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def test_twitch_bad_files(shared_data: Path, tmp_path: Path) -> None:
    folder = _twitch_copy(shared_data, tmp_path)
    edges = folder / "PTBR_edges.csv"
    good = edges.read_text()
    edges.write_text(good.replace("\n", "\n12,abc\n", 3))
    with pytest.raises(DatasetError, match=r"PTBR_edges\.csv: line \d+: expected a number"):
        load_dataset("twitch-ptbr", root=tmp_path)
    edges.write_text(good + "0,5000\n")
    with pytest.raises(DatasetError, match="outside the node range"):
        load_dataset("twitch-ptbr", root=tmp_path)
    edges.write_text(good)
    feats = folder / "PTBR.json"
    feats.write_text(feats.read_text()[:1000])
    with pytest.raises(DatasetError, match=r"PTBR\.json: malformed Twitch feature JSON"):
        load_dataset("twitch-ptbr", root=tmp_path)
    feats.write_bytes(b"\xff\xfe{")
    with pytest.raises(DatasetError, match=r"PTBR\.json"):
        load_dataset("twitch-ptbr", root=tmp_path)
    target = folder / "PTBR_target.csv"
    target.write_text("id,new_id\n1,0\n")
    with pytest.raises(DatasetError, match=r"PTBR_target\.csv: missing column\(s\) \['mature'\]"):
        load_dataset("twitch-ptbr", root=tmp_path)
    target.unlink()
    with pytest.raises(DatasetError, match=r"PTBR_target\.csv: not found"):
        load_dataset("twitch-ptbr", root=tmp_path)


# --------------------------------------------------------------------------- registry


def test_unknown_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'; known names: cora, citeseer, .*tolokers"):
        load_dataset("nope", root=tmp_path)
    with pytest.raises(DatasetError, match=r"cora: not found at .*planetoid/raw"):
        load_dataset("cora", root=tmp_path)
    with pytest.raises(DatasetError, match="unrecognised folder"):
        load_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "absent.npz"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="unrecognised file"):
        load_dataset(str(tmp_path / "notes.txt"))


def test_list_datasets_reports_errors(tmp_path: Path) -> None:
    folder = tmp_path / "heterophilous_graphs"
    folder.mkdir()
    (folder / "texas.npz").write_bytes(b"not a zip")
    _npz(folder / "cornell.npz", **_hetero_arrays())
    listing = list_datasets(tmp_path, include_synthetic=False)
    assert [d["name"] for d in listing] == ["cornell", "texas"]
    assert listing[0]["nodes"] == 6 and "texas.npz" in listing[1]["error"]
    assert list_datasets(tmp_path / "absent", include_synthetic=False) == []


# --------------------------------------------------------------------------- corruption fuzzing

_fuzz = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, val in edits:
        buf[pos % len(buf)] = val
    return bytes(buf[:cut] if cut is not None else buf)


def _only_dataset_errors(path: str) -> None:
    try:
        load_dataset(path)
    except DatasetError:
        pass


_edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4)
_cuts = st.one_of(st.none(), st.integers(0, 4000))


@_fuzz
@given(edits=_edits, cut=_cuts, part=st.sampled_from(["y", "ty", "graph", "test.index"]))
def test_fuzz_planetoid(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, edits, cut, part) -> None:
    raw = tmp_path_factory.mktemp("fuzz") / "raw"
    raw.mkdir()
    for f in (shared_data / "planetoid" / "raw").glob("ind.cora.*"):
        data = f.read_bytes()
        (raw / f.name).write_bytes(_mutate(data, edits, cut) if f.name.endswith("." + part) else data)
    _only_dataset_errors(str(raw))


@_fuzz
@given(edits=_edits, cut=_cuts)
def test_fuzz_npz(tmp_path_factory: pytest.TempPathFactory, edits, cut) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "g.npz"
    np.savez(path, **_hetero_arrays())
    path.write_bytes(_mutate(path.read_bytes(), edits, cut))
    _only_dataset_errors(str(path))


@_fuzz
@given(text=st.text(alphabet="0123456789,-.e\n naTrufls", max_size=200))
def test_fuzz_twitch_csv(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    folder = tmp_path_factory.mktemp("fuzz") / "PTBR"
    shutil.copytree(shared_data / "twitch" / "PTBR", folder)
    (folder / "PTBR_edges.csv").chmod(0o644)
    (folder / "PTBR_edges.csv").write_text("from,to\n" + text)
    _only_dataset_errors(str(folder))
