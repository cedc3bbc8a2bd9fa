"""OGB node-property datasets from a directory the user already has (nothing is downloaded).

Layout (what ``ogb.nodeproppred`` leaves on disk)::

    <dir>/raw/edge.csv.gz            one "src,dst" line per edge
    <dir>/raw/node-feat.csv.gz       one line of F floats per node
    <dir>/raw/node-label.csv.gz      one label per node; "nan" = unlabelled
    <dir>/raw/num-node-list.csv.gz   optional: the node count (one line = one graph)
    <dir>/split/<type>/{train,valid,test}.csv.gz   node ids, one per line

The name ``ogbn-arxiv`` maps to ``<root>/ogbn_arxiv`` (OGB's own folder naming). ``split/`` must
hold exactly one split type unless ``split_type`` names one. Unlabelled nodes get label 0 (the
Dataset record needs labels in range) and are removed from every mask, so they never reach a
loss or a metric. Multi-task label files (e.g. ogbn-proteins) and heterogeneous graphs
(ogbn-mag) are not supported and raise DatasetError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._csv import read_csv
from ._io import as_labels, fail, metric_for, num_classes_of, require_dir, require_file
from .base import Dataset, DatasetError
from .splits import index_to_mask

PREFIX = "ogbn-"
SPLIT_FILES = {"train_mask": "train", "val_mask": "valid", "test_mask": "test"}


def ogb_dir(root: Path, name: str) -> Path:
    """Folder of OGB dataset ``name`` (``ogbn-arxiv`` -> ``<root>/ogbn_arxiv``)."""
    return root / name.replace("-", "_")


def ogb_name(folder: Path) -> str:
    """Dataset name of an OGB folder (``ogbn_arxiv`` -> ``ogbn-arxiv``)."""
    return PREFIX + folder.name.removeprefix("ogbn_").replace("_", "-")


def is_ogb_dir(path: Path) -> bool:
    """Whether ``path`` looks like an OGB node-property folder."""
    return (path / "raw" / "edge.csv.gz").is_file()


def _split_dir(folder: Path, split_type: str | None) -> Path:
    """The ``split/<type>`` folder to use: the named one, or the only one present."""
    base = require_dir(folder / "split", "an OGB split folder split/<type>/{train,valid,test}.csv.gz")
    if split_type is not None:
        return require_dir(base / split_type, f"split type {split_type!r}")
    types = sorted(p for p in base.iterdir() if p.is_dir())
    if len(types) != 1:
        found = ", ".join(p.name for p in types) or "none"
        raise fail(base, f"expected exactly one split type folder, found: {found} (pass split_type=...)")
    return types[0]


def _num_nodes(raw: Path, fallback: int) -> int:
    """Node count from ``num-node-list.csv.gz`` when present, else ``fallback``."""
    path = raw / "num-node-list.csv.gz"
    if not path.exists():
        return fallback
    counts = read_csv(path, integer=True, ncols=1)
    if counts.shape[0] != 1:
        raise fail(path, f"expected one graph (one line), found {counts.shape[0]}: graph-property datasets are not supported")
    return int(counts[0, 0])


def _labels(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, labelled)``: NaN labels become class 0 and ``labelled`` False."""
    raw = read_csv(path, integer=False, dtype=np.float64)
    if raw.shape[0] != n:
        raise fail(path, f"has {raw.shape[0]} rows, expected one label per node ({n})")
    if raw.shape[1] != 1:
        raise fail(path, f"has {raw.shape[1]} label columns; only single-task node classification is supported")
    labelled = ~np.isnan(raw[:, 0])
    y = as_labels(np.where(labelled, raw[:, 0], 0.0), path, "node labels")
    return y, labelled


def load_ogb(folder: Path, /, *, name: str | None = None, split: int = 0, seed: int = 0, split_type: str | None = None) -> Dataset:
    """Load an OGB node-property folder with its official split (``split`` must be 0)."""
    require_dir(folder, "an OGB node-property dataset folder (raw/, split/)")
    if split != 0:
        raise DatasetError(f"{folder}: OGB datasets have one official split (split=0), got split={split}")
    raw = folder / "raw"
    require_file(raw / "edge.csv.gz", "OGB edge list raw/edge.csv.gz (not an OGB node-property folder?)")
    feat_path = require_file(raw / "node-feat.csv.gz", "OGB node features raw/node-feat.csv.gz")
    label_path = require_file(raw / "node-label.csv.gz", "OGB node labels raw/node-label.csv.gz")
    split_dir = _split_dir(folder, split_type)

    x = read_csv(feat_path, integer=False)
    n = _num_nodes(raw, x.shape[0])
    if x.shape[0] != n:
        raise fail(feat_path, f"has {x.shape[0]} rows, expected one per node ({n})")
    y, labelled = _labels(label_path, n)
    edge_path = raw / "edge.csv.gz"
    edges = read_csv(edge_path, integer=True, ncols=2)

    masks, dropped = {}, 0
    for field, stem in SPLIT_FILES.items():
        path = split_dir / f"{stem}.csv.gz"
        idx = read_csv(path, integer=True, ncols=1)[:, 0]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise fail(path, f"node id out of range [0, {n}): min {idx.min()}, max {idx.max()}")
        mask = index_to_mask(idx, n)
        dropped += int((mask & ~labelled).sum())
        masks[field] = mask & labelled  # unlabelled nodes never enter a loss or a metric
    num_classes = num_classes_of(y[labelled], label_path)
    return Dataset(
        name=name or ogb_name(folder),
        x=x,
        y=y,
        edge_index=np.ascontiguousarray(edges.T),
        **masks,
        num_classes=num_classes,
        metric=metric_for(num_classes),
        source=str(folder),
        files={"x": str(feat_path), "y": str(label_path), "edge_index": str(edge_path), "masks": str(split_dir)},
        meta={
            "format": "ogb-nodeproppred",
            "split": split_dir.name,
            "unlabelled": int((~labelled).sum()),
            "unlabelled_dropped_from_split": dropped,
        },
    )
