"""The on-disk layout: written from any dataset or generated straight into it, opened memory-mapped,
trained from, and refusing hostile files with a message that names them -- without changing them."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from approxgnn.cli import main
from approxgnn.datasets import (Dataset, DatasetError, load_dataset, open_layout, synthetic, write_layout,
                                write_synthetic_layout)
from approxgnn.graph import CSRGraph
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.train import TrainConfig, run


def _dirty_dataset(n: int = 400, seed: int = 0) -> Dataset:
    """Directed edges with duplicates, both directions and self-loops: the writer must clean them."""
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, n, (2, 6 * n))
    ei[1, :20] = ei[0, :20]  # self-loops
    ei = np.concatenate([ei, ei[:, :50], ei[::-1, 50:90]], axis=1)  # repeats, reversed pairs
    part = rng.permutation(n) % 4  # train a quarter, validation a quarter, test the rest
    return Dataset("dirty", rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 4, n), ei, part == 0,
                   part == 1, part >= 2, 4)


def _same_graph(layout: Dataset, edge_index: np.ndarray, n: int) -> None:
    g = CSRGraph.from_edge_index(edge_index, n)
    rowptr, col = layout.csr
    assert isinstance(col, np.memmap) and col.dtype == np.int32 and rowptr.dtype == np.int64
    assert np.array_equal(rowptr, g.rowptr.numpy()) and np.array_equal(col, g.col.numpy())


def test_write_layout_cleans_the_graph_and_keeps_every_array(tmp_path):
    data = _dirty_dataset()
    layout = write_layout(data, tmp_path / "dirty")
    _same_graph(layout, data.edge_index, data.num_nodes)
    assert isinstance(layout.x, np.memmap) and layout.edge_index.shape == (2, 0)
    for k in ("x", "y", "train_mask", "val_mask", "test_mask"):
        assert np.array_equal(getattr(layout, k), getattr(data, k)), k
    assert layout.num_edges == layout.csr[1].shape[0] // 2 and layout.num_classes == 4
    again = load_dataset(str(tmp_path / "dirty"))  # a path resolves to the layout loader
    assert again.summary() == layout.summary()
    copy = write_layout(again, tmp_path / "copy")  # a layout's own CSR is re-read from disk
    _same_graph(copy, data.edge_index, data.num_nodes)


def test_generator_writes_the_synthetic_graph_itself(tmp_path):
    kw = dict(num_nodes=3000, num_features=24, homophily=0.3, feature_noise=0.8, train=0.05, seed=4)
    ref = synthetic(**kw)
    layout = write_synthetic_layout(tmp_path / "syn", **kw)
    _same_graph(layout, ref.edge_index, ref.num_nodes)
    assert np.array_equal(layout.x, ref.x) and np.array_equal(layout.y, ref.y)
    assert all(np.array_equal(getattr(layout, m), getattr(ref, m)) for m in ("train_mask", "val_mask", "test_mask"))
    assert layout.meta["edge_homophily"] == pytest.approx(ref.meta["edge_homophily"], abs=1e-12)
    assert layout.meta["params"] == ref.meta["params"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _truncate(folder: Path) -> None:
    path = folder / "x.npy"
    path.write_bytes(path.read_bytes()[:-7])


def _wrong_dtype(folder: Path) -> None:
    np.save(folder / "y.npy", np.load(folder / "y.npy").astype(np.int32))


def _col_out_of_range(folder: Path) -> None:
    col = np.load(folder / "col.npy")
    col[3] = 10_000
    np.save(folder / "col.npy", col)


HOSTILE = {
    "truncated array": (_truncate, r"x\.npy: truncated"),
    "wrong dtype": (_wrong_dtype, r"y\.npy: holds int32 but the layout needs int64"),
    "manifest lies about the node count": (lambda d: _edit_manifest(d, lambda m: m.update(num_nodes=m["num_nodes"] + 1)),
                                           r"manifest\.json: arrays\.rowptr is .* need"),
    "manifest lies about a shape": (lambda d: _edit_manifest(d, lambda m: (m.update(num_features=6), m["arrays"]["x"]
                                                                            .update(shape=[m["num_nodes"], 6]))),
                                    r"x\.npy: holds shape \(400, 5\) but .*manifest\.json says \(400, 6\)"),
    "manifest lies about nnz": (lambda d: _edit_manifest(d, lambda m: (m.update(nnz=m["nnz"] - 2),
                                                                       m["arrays"]["col"].update(shape=[m["nnz"]]))),
                                r"col\.npy: holds shape"),
    "col out of range": (_col_out_of_range, r"col\.npy: holds a node id outside \[0, 400\)"),
    "no manifest (an interrupted write)": (lambda d: (d / "manifest.json").unlink(), r"manifest\.json: not found"),
    "not JSON": (lambda d: (d / "manifest.json").write_text("{\"format\": "), r"manifest\.json: malformed manifest"),
    "newer version": (lambda d: _edit_manifest(d, lambda m: m.update(version=99)), r"layout version 99"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_layouts_fail_clearly_and_lose_nothing(tmp_path, case, capsys):
    folder = tmp_path / "lay"
    write_layout(_dirty_dataset(), folder)
    damage, message = HOSTILE[case]
    damage(folder)
    before = _digest(folder)
    with pytest.raises(DatasetError, match=message):
        open_layout(folder)
    code = main(["train", "--dataset", str(folder), "--engine", "sample", "--model", "sage", "--layers", "2",
                 "--epochs", "1", "--no-progress"])
    assert code == 1 and "data error" in capsys.readouterr().err  # a run failure, not a traceback
    assert _digest(folder) == before  # reading never changes a file


def test_an_existing_layout_is_kept_unless_overwrite(tmp_path):
    folder = tmp_path / "lay"
    write_layout(_dirty_dataset(seed=0), folder)
    before = _digest(folder)
    with pytest.raises(DatasetError, match="pass --overwrite"):
        write_layout(_dirty_dataset(seed=1), folder)
    bad = _dirty_dataset(seed=1)
    bad.x[7, 2] = np.nan  # found while writing: the old layout stays, no partial directory is left
    with pytest.raises(DatasetError, match="NaN"):
        write_layout(bad, folder, overwrite=True)
    assert _digest(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["lay"]
    new = write_layout(_dirty_dataset(seed=1), folder, overwrite=True)
    assert np.array_equal(new.x, _dirty_dataset(seed=1).x)


def test_training_from_the_layout_equals_training_in_memory(tmp_path):
    kw = dict(num_nodes=2000, num_features=16, homophily=0.3, feature_noise=0.8, train=0.2)
    folder = tmp_path / "syn"
    write_synthetic_layout(folder, **kw)
    cfg = dict(model="sage", engine="refresh", layers=2, hidden=16, epochs=3, dropout=0.3, progress=False,
               minibatch=MiniBatchConfig(fanouts=[5, 5], batch_size=128, cache_mb=0.2, lookahead=2))  # on for both
    mem = run(TrainConfig(dataset="syn", **cfg), synthetic(**kw))
    # The disk store asked for: under auto a layout this small would be memory-mapped.
    disk = run(TrainConfig(dataset=str(folder), out=str(tmp_path / "run"),
                           **{**cfg, "minibatch": replace(cfg["minibatch"], feature_store="disk")}))
    assert disk["feature_store"] == "disk" and mem["feature_store"] == "ram"
    assert [p["loss"] for p in disk["curve"]] == [p["loss"] for p in mem["curve"]]  # the same batches, bit for bit
    assert disk["test"] == mem["test"]
    reads = [p["disk_bytes_read"] for p in disk["curve"]]
    assert all(r >= 4096 for r in reads) and all(r % 4096 == 0 for r in reads)


def test_cli_prepare_writes_a_layout_and_train_opens_it(tmp_path, capsys):
    out = tmp_path / "hard"
    assert main(["prepare", "--dataset", "synthetic-hard-3k", "--num-features", "12", "--out", str(out)]) == 0
    assert "train with --dataset" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["num_nodes"] == 3000 and m["num_features"] == 12 and m["arrays"]["col"]["dtype"] == "int32"
    assert main(["prepare", "--dataset", "synthetic-hard-3k", "--out", str(out)]) == 1  # kept: exists
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--dataset", "cora", "--num-features", "3", "--out", str(tmp_path / "c")])
    assert e.value.code == 2
    code = main(["train", "--dataset", str(out), "--engine", "sample", "--model", "sage", "--layers", "2",
                 "--epochs", "1", "--feature-store", "mmap", "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["feature_store"] == "memmap"
