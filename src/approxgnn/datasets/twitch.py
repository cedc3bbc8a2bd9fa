"""Twitch social networks from MUSAE (Rozemberczki et al. 2019), one graph per country.

A country folder ``<C>/`` holds ``<C>_edges.csv`` (header ``from,to``), ``<C>.json`` (node id ->
list of active feature indices, duplicates allowed) and ``<C>_target.csv`` (column ``new_id``
is the node id, ``mature`` the binary label). Features become a dense float32 multi-hot matrix
of width ``max index + 1`` over the country (3170 for most countries; pass ``num_features`` to
pad every country to one width). The task is binary, so the metric is ROC-AUC. The files
carry no split: a random stratified 50% / 25% / 25% train/val/test split is drawn from
``(seed, split)``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ._csv import read_csv
from ._io import check_dense_size, fail, reading, require_dir, require_file
from .base import Dataset
from .splits import Size, split_rng, stratified_split

COUNTRIES = ("DE", "ENGB", "ES", "FR", "PTBR", "RU")
NAMES = {f"twitch-{c.lower()}": c for c in COUNTRIES}

_TRUE = {"true": 1, "1": 1, "false": 0, "0": 0}


def country_of(folder: Path) -> str | None:
    """Country code of a MUSAE folder (the prefix of its single ``*_edges.csv``), or None."""
    found = sorted(folder.glob("*_edges.csv")) if folder.is_dir() else []
    return found[0].name[: -len("_edges.csv")] if len(found) == 1 else None


def _read_targets(path: Path) -> np.ndarray:
    """Binary labels indexed by ``new_id`` from the target CSV."""
    require_file(path, "the Twitch target CSV (columns new_id, mature)")
    with reading(path, "Twitch target CSV"), open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"new_id", "mature"} - set(reader.fieldnames or ())
        if missing:
            raise fail(path, f"missing column(s) {sorted(missing)} (header: {reader.fieldnames})")
        ids, labels = [], []
        for row_no, row in enumerate(reader, start=2):
            label = _TRUE.get((row["mature"] or "").strip().lower())
            if label is None:
                raise fail(path, f"line {row_no}: column 'mature' must be True/False, got {row['mature']!r}")
            ids.append(int(row["new_id"]))
            labels.append(label)
    ids_arr = np.asarray(ids, dtype=np.int64)
    labels_arr = np.asarray(labels, dtype=np.int64)
    if ids_arr.size == 0:
        raise fail(path, "empty graph: no rows")
    # The published FR file repeats two users on two rows each; repeats are fine if they agree.
    uniq, first = np.unique(ids_arr, return_index=True)
    n = uniq.size
    if uniq[0] != 0 or uniq[-1] != n - 1:
        raise fail(path, f"column 'new_id' must number the nodes 0..N-1, got ids {uniq[0]}..{uniq[-1]} for {n} nodes")
    y = np.empty(n, dtype=np.int64)
    y[uniq] = labels_arr[first]
    if not (y[ids_arr] == labels_arr).all():
        raise fail(path, "a repeated 'new_id' has conflicting 'mature' labels")
    return y


def _read_features(path: Path, n: int, width: int | None) -> np.ndarray:
    """Dense multi-hot features ``[n, width]`` from the ``{node: [feature ids]}`` JSON."""
    require_file(path, "the Twitch feature JSON (node id -> list of feature indices)")
    with reading(path, "Twitch feature JSON"), open(path, encoding="utf-8") as f:
        table = json.load(f)
        if not isinstance(table, dict):
            raise fail(path, f"expected a JSON object of node id -> list, found {type(table).__name__}")
        rows = np.array([int(k) for k in table], dtype=np.int64)
        lists = list(table.values())
        if not all(isinstance(v, list) for v in lists):
            raise fail(path, "every value must be a list of feature indices")
        lens = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
        cols = np.fromiter((c for v in lists for c in v), dtype=np.int64, count=int(lens.sum()))
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise fail(path, f"node ids must lie in [0, {n}) (the target CSV has {n} rows)")
    if cols.size and cols.min() < 0:
        raise fail(path, f"negative feature index {cols.min()}")
    needed = int(cols.max()) + 1 if cols.size else 1
    if width is None:
        # MUSAE feature ids lie in 0..3169 with small gaps (at most 13 between used ids). A stray
        # huge index -- e.g. two numbers run together -- would silently widen the dense matrix to
        # gigabytes of zero columns, so an index far beyond all others is refused.
        top = np.unique(cols)[-2:]
        if top.size == 2 and top[1] > 2 * top[0] + 64:
            raise fail(path, f"feature index {top[1]} is an outlier (the next largest is {top[0]}); "
                             "pass num_features to accept it")
        width = needed
    if needed > width:
        raise fail(path, f"feature index {needed - 1} does not fit num_features={width}")
    check_dense_size(path, "feature indices", n, width)
    with reading(path, f"feature matrix [{n}, {width}]"):
        x = np.zeros((n, width), dtype=np.float32)
        x[np.repeat(rows, lens), cols] = 1.0
    return x


def load_twitch(
    folder: Path,
    /,
    *,
    name: str | None = None,
    split: int = 0,
    seed: int = 0,
    num_features: int | None = None,
    train: Size = 0.5,
    val: Size = 0.25,
    test: Size | None = 0.25,
) -> Dataset:
    """Load one MUSAE Twitch country folder with a random stratified split from ``(seed, split)``."""
    require_dir(folder, "a MUSAE Twitch country folder (<C>_edges.csv, <C>.json, <C>_target.csv)")
    country = country_of(folder) or folder.name
    y = _read_targets(folder / f"{country}_target.csv")
    n = y.shape[0]
    x = _read_features(folder / f"{country}.json", n, num_features)
    edges = read_csv(folder / f"{country}_edges.csv", integer=True, ncols=2, header=True)
    rng = split_rng(seed, split)
    train_mask, val_mask, test_mask = stratified_split(y, rng, train=train, val=val, test=test, where=str(folder))
    return Dataset(
        name=name or f"twitch-{country.lower()}",
        x=x,
        y=y,
        edge_index=np.ascontiguousarray(edges.T),
        train_mask=train_mask,
        val_mask=val_mask,
        test_mask=test_mask,
        num_classes=2,
        metric="auc",
        source=str(folder / f"{country}_edges.csv"),
        files={"x": str(folder / f"{country}.json"), "y": str(folder / f"{country}_target.csv")},
        meta={"format": "musae-twitch", "country": country, "split": f"random stratified (seed={seed}, split={split})"},
    )
