"""The gnn-benchmark npz layout (Shchur et al. 2018: ``cora.npz``, ``citeseer.npz``, ...).

The adjacency is stored as CSR pieces ``adj_data/adj_indices/adj_indptr/adj_shape``, features as
``attr_*`` CSR pieces or a dense ``attr_matrix``, labels as ``labels`` [N]. (Newer copies spell
the keys ``adj_matrix.data`` etc.; both spellings are read.) The files carry no split, so a
random stratified one is drawn: by default 20 nodes per class for training, 500 validation and
1000 test nodes (the sizes of the Planetoid public split), reproducible from ``(seed, split)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._io import (as_features, as_labels, check_dense_size, fail, metric_for, npz_array, num_classes_of, open_npz,
                  reading)
from .base import Dataset
from .splits import Size, split_rng, stratified_split

NAMES = {"gnnb-cora": "cora.npz", "gnnb-citeseer": "citeseer.npz"}


def is_gnn_benchmark_npz(keys: list[str]) -> bool:
    """Whether an npz with these keys is in this layout."""
    return "adj_indptr" in keys or "adj_matrix.indptr" in keys


def _csr(npz: np.lib.npyio.NpzFile, prefix: str, path: Path) -> sp.csr_matrix:
    """Rebuild the CSR matrix stored under ``<prefix>_*`` or ``<prefix>_matrix.*`` and check it."""
    sep = "_" if f"{prefix}_indptr" in npz.files else "_matrix."
    keys = [f"{prefix}{sep}{k}" for k in ("data", "indices", "indptr", "shape")]
    data, indices, indptr, shape = (npz_array(npz, k, path) for k in keys)
    # scipy's constructor accepts some of these (e.g. string data) and fails only later, on use.
    if data.dtype.kind not in "biuf":
        raise fail(path, f"{keys[0]} must be numeric, got dtype {data.dtype}")
    for key, arr in zip(keys[1:], (indices, indptr, shape)):
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise fail(path, f"{key} must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    if shape.shape != (2,):
        raise fail(path, f"{keys[3]} must hold two sizes, got {shape.tolist()}")
    with reading(path, f"CSR matrix '{prefix}'"):
        mat = sp.csr_matrix((data, indices, indptr), shape=(int(shape[0]), int(shape[1])))
        mat.check_format(full_check=True)  # out-of-range ids and bad indptr become errors here
    return mat


def load_gnn_benchmark(
    path: Path,
    /,
    *,
    name: str | None = None,
    split: int = 0,
    seed: int = 0,
    train_per_class: Size = 20,
    num_val: Size = 500,
    num_test: Size | None = 1000,
) -> Dataset:
    """Load a gnn-benchmark npz with a random stratified split drawn from ``(seed, split)``.

    ``train_per_class``/``num_val``/``num_test`` follow :func:`stratified_split`'s sizes
    (``num_test=None`` puts every remaining node in the test set).
    """
    with open_npz(path) as npz:
        adj = _csr(npz, "adj", path)
        if "attr_matrix" in npz.files:
            x = as_features(npz_array(npz, "attr_matrix", path), path, "attr_matrix")
        else:
            attr = _csr(npz, "attr", path)
            check_dense_size(path, "attr_shape", *attr.shape)
            with reading(path, "CSR matrix 'attr'"):
                x = as_features(attr.toarray(), path, "attr")
        y = as_labels(npz_array(npz, "labels", path), path, "labels")
    if adj.shape != (y.shape[0], y.shape[0]):
        raise fail(path, f"adjacency shape {adj.shape} does not match {y.shape[0]} labels")
    coo = adj.tocoo()
    num_classes = num_classes_of(y, path)
    masks = stratified_split(y, split_rng(seed, split), train=train_per_class, val=num_val, test=num_test, where=str(path))
    return Dataset(
        name=name or path.stem,
        x=x,
        y=y,
        edge_index=np.stack([coo.row, coo.col]).astype(np.int64),
        train_mask=masks[0],
        val_mask=masks[1],
        test_mask=masks[2],
        num_classes=num_classes,
        metric=metric_for(num_classes),
        source=str(path),
        meta={"format": "gnn-benchmark-npz", "split": f"random stratified (seed={seed}, split={split})"},
    )
