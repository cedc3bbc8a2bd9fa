"""The heterophilous-graphs npz layout (Platonov et al. 2023: tolokers, minesweeper, actor, ...).

One ``.npz`` per dataset with ``node_features`` [N, F], ``node_labels`` [N], ``edges`` [E, 2] and
``train_masks``/``val_masks``/``test_masks`` [S, N] (S = 10 fixed splits; a 1-D mask is read as a
single split). ``split`` picks one of the S splits. Two-class datasets (tolokers, minesweeper,
questions, ...) are scored by ROC-AUC as in the paper; the others by accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import as_edge_index, as_features, as_labels, fail, metric_for, npz_array, num_classes_of, open_npz
from .base import Dataset

NAMES = (
    "tolokers",
    "minesweeper",
    "actor",
    "squirrel",
    "chameleon",
    "squirrel_filtered",
    "chameleon_filtered",
    "cornell",
    "texas",
    "wisconsin",
)

KEYS = ("node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks")


def is_heterophilous_npz(keys: list[str]) -> bool:
    """Whether an npz with these keys is in this layout."""
    return "node_features" in keys and "edges" in keys


def _split_mask(masks: np.ndarray, split: int, n: int, path: Path, key: str) -> np.ndarray:
    """Row ``split`` of an ``[S, N]`` mask array, checked for dtype and length."""
    if masks.ndim == 1:
        masks = masks[None, :]
    if masks.ndim != 2 or masks.shape[1] != n:
        raise fail(path, f"{key} must have shape [splits, {n}], got {masks.shape}")
    if not 0 <= split < masks.shape[0]:
        raise fail(path, f"split {split} out of range: the file has {masks.shape[0]} splits (0..{masks.shape[0] - 1})")
    row = masks[split]
    if row.dtype != np.bool_:
        if not np.isin(row, (0, 1)).all():
            raise fail(path, f"{key} must be boolean (or 0/1), got dtype {row.dtype}")
        row = row.astype(bool)
    return np.ascontiguousarray(row)


def load_heterophilous(path: Path, /, *, name: str | None = None, split: int = 0, seed: int = 0) -> Dataset:
    """Load one heterophilous-graphs npz; ``split`` selects the fixed split, ``seed`` is unused."""
    with open_npz(path) as npz:
        arrays = {k: npz_array(npz, k, path) for k in KEYS}
    x = as_features(arrays["node_features"], path, "node_features")
    y = as_labels(arrays["node_labels"], path, "node_labels")
    n = y.shape[0]
    masks = {k: _split_mask(arrays[f"{k}s"], split, n, path, f"{k}s") for k in ("train_mask", "val_mask", "test_mask")}
    num_classes = num_classes_of(y, path)
    return Dataset(
        name=name or path.stem,
        x=x,
        y=y,
        edge_index=as_edge_index(arrays["edges"], path, "edges"),
        **masks,
        num_classes=num_classes,
        metric=metric_for(num_classes),
        source=str(path),
        meta={"format": "heterophilous-npz", "split_index": split, "num_splits": int(np.atleast_2d(arrays["train_masks"]).shape[0])},
    )
