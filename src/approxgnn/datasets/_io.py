"""How loaders touch files: one place that turns low-level failures into :class:`DatasetError`.

Every loader parses inside ``with reading(path, "what is being read"):`` so that a truncated
zip, a bad pickle, a malformed CSV or a missing key surfaces as one ``DatasetError`` whose
message names the file and what was expected -- never as a raw traceback from numpy, pickle,
json, gzip or zipfile.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .base import DatasetError

# Everything the standard library and numpy raise on bad input. DatasetError is a ValueError,
# so it is re-raised untouched before this tuple is consulted.
_LOW_LEVEL_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes UnicodeDecodeError and json.JSONDecodeError
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    EOFError,
    OSError,  # includes gzip.BadGzipFile, FileNotFoundError, PermissionError
    OverflowError,
    MemoryError,  # a corrupt header can declare an absurd array size
    NotImplementedError,  # zipfile: unsupported compression method or zip version
    RuntimeError,  # zipfile: encrypted member; RecursionError from a deeply nested pickle
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    pickle.UnpicklingError,
    json.JSONDecodeError,
    csv.Error,  # e.g. an unclosed quote that makes a field longer than csv.field_size_limit()
    tokenize.TokenError,  # numpy parses an .npy header with tokenize: unbalanced brackets raise this
)


@contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Convert any low-level error raised inside the block into a DatasetError naming ``path``.

    ``what`` says what was being read or expected (e.g. ``"key 'edges' of the npz"``), so the
    message tells the user which field of which file is wrong.
    """
    try:
        yield
    except DatasetError:
        raise
    except _LOW_LEVEL_ERRORS as e:
        detail = str(e) or type(e).__name__
        raise DatasetError(f"{path}: malformed {what}: {type(e).__name__}: {detail}") from e


def fail(path: str | os.PathLike, msg: str) -> DatasetError:
    """Build (not raise) a DatasetError for ``path``; callers write ``raise fail(...)``."""
    return DatasetError(f"{path}: {msg}")


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a regular file, else raise a DatasetError saying what was expected."""
    if not path.is_file():
        state = "is not a file" if path.exists() else "not found"
        raise fail(path, f"{state}; expected {what}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise a DatasetError saying what was expected."""
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "not found"
        raise fail(path, f"{state}; expected {what}")
    return path


def npz_array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """Read one array of an open npz, naming the file and the key when it is absent or corrupt."""
    if key not in npz.files:
        raise fail(path, f"missing key {key!r} (keys present: {', '.join(sorted(npz.files)) or 'none'})")
    with reading(path, f"array {key!r} of the npz"):
        return npz[key]


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """Open an npz without pickle support; a truncated or non-zip file becomes a DatasetError."""
    require_file(path, "an .npz archive")
    with reading(path, "npz archive"):
        return np.load(path, allow_pickle=False)


def _ids_as_int64(arr: np.ndarray, path: Path, field: str, what: str) -> np.ndarray:
    """Integer ids (``what``: "class ids", "node ids") from an int, bool or integral-float array.

    Floats must be finite, whole and within int64: a plain cast would turn NaN, inf or 1e30
    into arbitrary (often negative) ids and an error message about the wrong problem.
    """
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise fail(path, f"{field} must hold integer {what}, got dtype {arr.dtype}")
    if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all() and np.abs(arr).max() < 2.0**63):
        raise fail(path, f"{field} must hold integer {what}, found non-integral, NaN/inf or out-of-range values")
    return arr.astype(np.int64)


def as_labels(values: np.ndarray, path: Path, field: str) -> np.ndarray:
    """Coerce a 1-D label array to int64, rejecting non-integral or negative values."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise fail(path, f"{field} must be 1-D [N], got shape {arr.shape}")
    out = _ids_as_int64(arr, path, field, "class ids")
    if out.size and out.min() < 0:
        raise fail(path, f"{field} holds a negative class id ({out.min()})")
    return out


def as_features(values: np.ndarray, path: Path, field: str) -> np.ndarray:
    """Coerce a real feature matrix to C-contiguous float32 [N, F] (finiteness is checked by Dataset)."""
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise fail(path, f"{field} must be 2-D [N, F], got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":  # complex would silently lose its imaginary part
        raise fail(path, f"{field} must be real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which Dataset.validate reports
        return np.ascontiguousarray(arr, dtype=np.float32)


def as_edge_index(pairs: np.ndarray, path: Path, field: str) -> np.ndarray:
    """Turn an ``[E, 2]`` array of (source, target) rows into an int64 ``[2, E]`` edge_index."""
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise fail(path, f"{field} must have shape [E, 2], got {arr.shape}")
    return np.ascontiguousarray(_ids_as_int64(arr, path, field, "node ids").T)


def num_classes_of(y: np.ndarray, path: Path) -> int:
    """Number of classes implied by labels ``y`` (max id + 1); an empty label set is an error.

    A class id of at least ``len(y)`` would mean more classes than labelled nodes: a corrupt
    label, which would otherwise become a model with that many outputs.
    """
    if y.size == 0:
        raise fail(path, "empty graph: no labelled nodes")
    top = int(y.max())
    if top >= y.size:
        raise fail(path, f"labels: class id {top} is implausible for {y.size} labelled nodes (more classes than nodes)")
    return top + 1


# Dense matrices whose size a file *declares* (a CSR shape, a largest feature index) are capped,
# so that one corrupt number cannot make a loader allocate and scan many GiB: 2^30 float32 entries
# is 4 GiB, far above any such dataset (the largest gnn-benchmark feature matrix has 0.3e9).
MAX_DENSE_ENTRIES = 1 << 30


def check_dense_size(path: Path, field: str, rows: int, cols: int) -> None:
    """Refuse a declared dense ``[rows, cols]`` matrix larger than :data:`MAX_DENSE_ENTRIES`."""
    if rows * cols > MAX_DENSE_ENTRIES:
        raise fail(path, f"{field}: a dense [{rows}, {cols}] matrix is implausibly large "
                         f"(over {MAX_DENSE_ENTRIES} entries); is the file corrupt?")


def metric_for(num_classes: int) -> str:
    """Headline metric of a task: ROC-AUC for binary tasks, accuracy otherwise."""
    return "auc" if num_classes == 2 else "acc"
