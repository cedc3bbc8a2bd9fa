"""Planetoid raw files (Cora, CiteSeer) with the standard public split.

Reads ``<dir>/ind.<name>.{x,y,tx,ty,allx,ally,graph,test.index}`` (the layout of
kimiyoung/planetoid and of ``torch_geometric.datasets.Planetoid``'s ``raw`` folder), with the
same semantics as Kipf & Welling and PyG:

* nodes ``0 .. len(allx)-1`` come from ``allx``/``ally``; test node ``test.index[k]`` has row
  ``k`` of ``tx``/``ty``;
* CiteSeer's test ids skip some isolated nodes that have no row in ``tx``: they are kept as
  nodes with all-zero features and label 0 (PyG does the same), which gives 3327 nodes; they
  are in no mask;
* train = the first ``len(y)`` nodes (20 per class), val = the next 500, test = ``test.index``.

Features are kept raw (binary bag of words). Kipf & Welling row-normalise them before training
(81.5% GCN accuracy on Cora); normalisation belongs to the model/trainer, not the loader.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ._csv import read_csv
from ._io import fail
from ._pickle import load_restricted, to_dense
from .base import Dataset, DatasetError
from .splits import index_to_mask

PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")
NUM_VAL = 500  # the public split's validation size


def planetoid_files(raw_dir: Path, name: str) -> dict[str, Path]:
    """Paths of the eight Planetoid files of dataset ``name`` in ``raw_dir``."""
    return {p: raw_dir / f"ind.{name}.{p}" for p in (*PARTS, "test.index")}


def _one_hot_labels(mat: np.ndarray, path: Path) -> np.ndarray:
    """Class ids from a one-hot label matrix; an all-zero row gets class 0 (as PyG's argmax)."""
    if mat.ndim != 2 or mat.shape[1] < 1:
        raise fail(path, f"expected a one-hot label matrix [N, C], got shape {mat.shape}")
    return mat.argmax(axis=1).astype(np.int64)


def _same_widths(mats: dict[str, np.ndarray], files: dict[str, Path], what: str) -> None:
    """Fail unless the matrices have one column count; the message names the odd file and all widths."""
    widths = {p: m.shape[1] for p, m in mats.items()}
    common = Counter(widths.values()).most_common(1)[0][0]
    odd = [p for p, w in widths.items() if w != common]
    if odd:
        listing = ", ".join(f"{files[p].name} {w}" for p, w in widths.items())
        raise fail(files[odd[0]], f"{what} widths differ: {listing}")


def _graph_edges(graph: object, path: Path) -> np.ndarray:
    """Directed edge list ``[2, E]`` from the ``{node: [neighbours]}`` adjacency dict."""
    if not isinstance(graph, dict):
        raise fail(path, f"expected a dict of adjacency lists, found {type(graph).__name__}")
    src: list[int] = []
    dst: list[int] = []
    for node, neigh in graph.items():
        if not isinstance(node, (int, np.integer)) or not isinstance(neigh, (list, tuple)):
            raise fail(path, f"adjacency entry {node!r} is not 'int: list of ints'")
        src.extend([node] * len(neigh))
        dst.extend(neigh)
    try:
        return np.array([src, dst], dtype=np.int64).reshape(2, -1)
    except (TypeError, ValueError, OverflowError):
        raise fail(path, "adjacency lists must hold integer node ids") from None


def load_planetoid(raw_dir: Path, /, *, name: str, split: int = 0, seed: int = 0) -> Dataset:
    """Load Planetoid dataset ``name`` (``cora`` or ``citeseer``) from ``raw_dir``.

    There is one public split, so ``split`` must be 0; ``seed`` is unused (accepted so that
    every loader has the same call shape).
    """
    name = name.lower()
    files = planetoid_files(raw_dir, name)
    if split != 0:
        raise DatasetError(f"{raw_dir}: {name} has only the public split (split=0), got split={split}")
    obj = {p: load_restricted(files[p], f"Planetoid '{p}' part of {name}") for p in PARTS}
    mats = {p: to_dense(obj[p], files[p]) for p in ("x", "tx", "allx")}
    onehot = {p: to_dense(obj[p], files[p]) for p in ("y", "ty", "ally")}
    labels = {p: _one_hot_labels(onehot[p], files[p]) for p in onehot}
    test_index = read_csv(files["test.index"], integer=True, ncols=1)[:, 0]  # one node id per line

    n_all, n_train, n_test = mats["allx"].shape[0], mats["x"].shape[0], test_index.shape[0]
    for part, rows, ref, expected in (("ally", labels["ally"].shape[0], "allx", n_all),
                                      ("y", labels["y"].shape[0], "x", n_train),
                                      ("tx", mats["tx"].shape[0], "test.index", n_test),
                                      ("ty", labels["ty"].shape[0], "test.index", n_test)):
        if rows != expected:
            raise fail(files[part], f"has {rows} rows, but {files[ref].name} has {expected}; they must match")
    _same_widths(mats, files, "feature")
    _same_widths(onehot, files, "label (class)")
    # Test ids follow the allx nodes; CiteSeer leaves a few gaps (15 in 1000), never more gaps
    # than test nodes -- which also keeps a corrupt id from allocating a huge feature matrix.
    if n_test == 0 or test_index.min() < n_all or test_index.max() >= n_all + 2 * n_test \
            or np.unique(test_index).size != n_test:
        raise fail(files["test.index"], f"test ids must be distinct and lie in [len(allx), len(allx) + 2 * len(tx)) "
                                        f"= [{n_all}, {n_all + 2 * n_test})")
    if n_train == 0:
        raise fail(files["x"], "has no rows: the public split takes its training nodes from it")
    if n_train + NUM_VAL > n_all:
        raise fail(files["allx"], f"has {n_all} rows, too few for {n_train} train + {NUM_VAL} val nodes")

    n = int(test_index.max()) + 1  # CiteSeer: ids missing from test.index stay zero rows
    x = np.zeros((n, mats["allx"].shape[1]), dtype=np.float32)
    y = np.zeros(n, dtype=np.int64)
    x[:n_all], y[:n_all] = mats["allx"], labels["ally"]
    x[test_index], y[test_index] = mats["tx"], labels["ty"]
    edge_index = _graph_edges(obj["graph"], files["graph"])

    return Dataset(
        name=name,
        x=x,
        y=y,
        edge_index=edge_index,
        train_mask=index_to_mask(np.arange(n_train), n),
        val_mask=index_to_mask(np.arange(n_train, n_train + NUM_VAL), n),
        test_mask=index_to_mask(test_index, n),
        num_classes=onehot["ally"].shape[1],
        metric="acc",
        source=str(raw_dir / f"ind.{name}.*"),
        files={"edge_index": str(files["graph"])},
        meta={"format": "planetoid", "split": "public", "padded_nodes": int(n - n_all - n_test)},
    )

