"""The on-disk dataset layout: a graph larger than memory, opened without reading it.

One directory holds every array as a ``.npy`` file that is memory-mapped on open, and a small
``manifest.json`` that says what each file must hold::

    manifest.json    {"format": "approxgnn-layout", "version": 1, "name", "num_nodes" N, "nnz",
                      "num_features" F, "num_classes" C, "metric", "features_checked", "meta",
                      "arrays": {field: {"file", "dtype", "shape"}}}
    rowptr.npy       int64 [N+1]     CSR row pointers of the symmetric graph (no self-loops, no
    col.npy          int32 [nnz]     duplicates, rows sorted); int64 when N ≥ 2^31
    x.npy            float32 [N, F]  features
    y.npy            int64 [N]       labels in [0, C)
    train_mask.npy, val_mask.npy, test_mask.npy   bool [N]

:func:`open_layout` checks everything that costs no more than a pass over the graph's O(N + nnz)
index arrays -- the manifest against each file's header (dtype, shape) and size, ``rowptr``'s ends
and order, ``col``'s range, the labels' range -- and raises a :class:`DatasetError` naming the file
and what was expected. The features are never read: the writer (:mod:`.layout_write`) checked
them for NaN/inf as it wrote them (``features_checked``). Files are opened read-only, so a bad
file is never changed. Writing is in :mod:`.layout_write`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from ._io import fail, reading, require_file
from .base import Dataset, DatasetError

FORMAT, VERSION, MANIFEST = "approxgnn-layout", 1, "manifest.json"
MASKS = ("train_mask", "val_mask", "test_mask")
FIELDS = ("rowptr", "col", "x", "y", *MASKS)
_ID_TYPES = ("int32", "int64")


def col_dtype(num_nodes: int) -> np.dtype:
    """int32 while every node id fits, else int64."""
    return np.dtype(np.int32 if num_nodes < 2**31 else np.int64)


def expected_arrays(num_nodes: int, nnz: int, num_features: int, col: str = "") -> dict[str, dict[str, Any]]:
    """The ``arrays`` entry of a manifest for these sizes (``col``: the index dtype, by default the
    narrowest that fits)."""
    n = num_nodes
    spec = {"rowptr": ("int64", [n + 1]), "col": (col or col_dtype(n).name, [nnz]),
            "x": ("float32", [n, num_features]), "y": ("int64", [n]), **{m: ("bool", [n]) for m in MASKS}}
    return {k: {"file": f"{k}.npy", "dtype": d, "shape": s} for k, (d, s) in spec.items()}


def is_layout_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, checked for format, version, the counts and an ``arrays`` entry per field."""
    path = require_file(folder / MANIFEST, f"the {FORMAT} manifest (written last by `approxgnn prepare`)")
    with reading(path, "manifest (JSON)"):
        m = json.loads(path.read_text())
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise fail(path, f"not an {FORMAT} manifest (\"format\" is {m.get('format') if isinstance(m, dict) else m!r})")
    if m.get("version") != VERSION:
        raise fail(path, f"layout version {m.get('version')!r}; this approxgnn reads version {VERSION}")
    for key in ("num_nodes", "nnz", "num_features", "num_classes"):
        if not isinstance(m.get(key), int) or isinstance(m.get(key), bool) or m[key] < 0:
            raise fail(path, f"{key!r} must be a non-negative integer, got {m.get(key)!r}")
    arrays = m.get("arrays")
    if not isinstance(arrays, dict) or set(arrays) != set(FIELDS):
        raise fail(path, f"'arrays' must describe exactly {', '.join(FIELDS)}")
    col = arrays["col"].get("dtype") if isinstance(arrays["col"], dict) else None
    if col not in _ID_TYPES:
        raise fail(path, f"arrays.col.dtype must be one of {_ID_TYPES}, got {col!r}")
    want = expected_arrays(m["num_nodes"], m["nnz"], m["num_features"], col)
    for k, spec in want.items():
        if arrays[k] != spec:
            raise fail(path, f"arrays.{k} is {arrays[k]} but num_nodes={m['num_nodes']}, nnz={m['nnz']}, "
                             f"num_features={m['num_features']} need {spec}")
    return m


def _open_array(folder: Path, spec: dict[str, Any], manifest: Path) -> np.ndarray:
    """Memory-map one array after checking its header and size against ``spec``."""
    path = require_file(folder / spec["file"], f"a {spec['dtype']} array of shape {tuple(spec['shape'])}")
    with reading(path, ".npy header"), open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype != np.dtype(spec["dtype"]):
        raise fail(path, f"holds {dtype} but the layout needs {spec['dtype']} ({manifest.name} says so)")
    if list(shape) != list(spec["shape"]):
        raise fail(path, f"holds shape {tuple(shape)} but {manifest} says {tuple(spec['shape'])}")
    if fortran and len(shape) > 1:
        raise fail(path, "is Fortran-ordered; rows must be contiguous (C order)")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise fail(path, f"truncated: {size} bytes, but a {dtype} array of shape {tuple(shape)} needs {need}")
    if size == offset:  # numpy cannot map an empty array
        return np.empty(shape, dtype)
    with reading(path, f"{dtype} array"):
        return np.load(path, mmap_mode="r")


@njit(parallel=True, nogil=True, cache=True)
def _csr_problem(rowptr, col, n):  # pragma: no cover - jitted
    """0: fine; 1: rowptr decreases somewhere; 2: col holds an id outside [0, n)."""
    bad_order = 0
    for i in prange(rowptr.shape[0] - 1):
        if rowptr[i + 1] < rowptr[i]:
            bad_order += 1
    if bad_order:
        return 1
    bad_col = 0
    for e in prange(col.shape[0]):
        if col[e] < 0 or col[e] >= n:
            bad_col += 1
    return 2 if bad_col else 0


def open_layout(folder: str | os.PathLike, *, name: str | None = None, split: int = 0, seed: int = 0) -> Dataset:
    """A :class:`Dataset` over the layout in ``folder`` (module docstring), everything memory-mapped.

    The layout holds one split: ``split`` must be 0 (``seed`` is accepted for the loader
    signature; nothing is drawn).
    """
    del seed
    folder = Path(folder)
    manifest = folder / MANIFEST
    m = read_manifest(folder)
    if split != 0:
        raise DatasetError(f"{folder}: an on-disk layout holds one split; got split={split}")
    a = {k: _open_array(folder, m["arrays"][k], manifest) for k in FIELDS}
    rowptr, col, n = a["rowptr"], a["col"], m["num_nodes"]
    files = {"x": str(folder / "x.npy"), "y": str(folder / "y.npy"), "masks": str(folder / "train_mask.npy"),
             "edge_index": str(folder / "col.npy")}
    if int(rowptr[0]) != 0 or int(rowptr[-1]) != m["nnz"]:
        raise fail(folder / "rowptr.npy", f"must run from 0 to nnz={m['nnz']}, runs from {int(rowptr[0])} "
                                          f"to {int(rowptr[-1])}")
    problem = _csr_problem(rowptr, col, n) if n else 0
    if problem == 1:
        raise fail(folder / "rowptr.npy", "decreases somewhere: not CSR row pointers")
    if problem == 2:
        raise fail(folder / "col.npy", f"holds a node id outside [0, {n})")
    meta = dict(m.get("meta") or {})
    meta.update(format=FORMAT, features_checked=bool(m.get("features_checked")))
    return Dataset(name=name or m.get("name") or folder.name, x=a["x"], y=a["y"],
                   edge_index=np.empty((2, 0), np.int64), train_mask=a["train_mask"], val_mask=a["val_mask"],
                   test_mask=a["test_mask"], num_classes=m["num_classes"], metric=m.get("metric", "acc"),
                   source=str(folder), meta=meta, files=files, csr=(rowptr, col))
