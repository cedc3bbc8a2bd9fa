"""Writing the on-disk layout (:mod:`.layout`) in bounded memory.

* :func:`write_layout`: any :class:`Dataset` (features in RAM or memory-mapped) → a layout;
* :func:`write_synthetic_layout`: a :func:`~.synthetic_graph.synthetic` graph generated straight
  into a layout: the features go block by block to the file, never whole in memory, so 10M
  nodes x 256 features (10 GiB) need about 3 GiB of RAM (the edge keys, 8 bytes per edge, while
  they are drawn and sorted).

The CSR is built out of core from edge chunks (:func:`write_csr`): degrees counted, both
directions scattered into a memory-mapped scratch file, each row sorted and deduplicated in place,
then the rows compacted into ``col.npy``. RAM: a few ``[N]`` int64 arrays; the rest is on disk.

Nothing half-written ever sits under the target name: everything is written into a sibling
``.<name>.partial-<pid>`` directory, the manifest last, and the directory renamed into place. An
existing layout is replaced only with ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from ._io import metric_for
from .base import Dataset, DatasetError
from .layout import FORMAT, MANIFEST, MASKS, VERSION, col_dtype, expected_arrays, open_layout
from .splits import Size, split_rng, stratified_split
from .synthetic_graph import check_params, features, graph_keys, synthetic_meta

EdgeChunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
_CHUNK = 1 << 22  # edges or feature rows' worth of bytes per pass


@njit(nogil=True, cache=True)
def _count(src, dst, deg):  # pragma: no cover - jitted
    for e in range(src.shape[0]):
        if src[e] != dst[e]:
            deg[src[e]] += 1
            deg[dst[e]] += 1


@njit(nogil=True, cache=True)
def _scatter(src, dst, cursor, col):  # pragma: no cover - jitted
    for e in range(src.shape[0]):
        u, v = src[e], dst[e]
        if u != v:
            col[cursor[u]] = v
            cursor[u] += 1
            col[cursor[v]] = u
            cursor[v] += 1


@njit(parallel=True, nogil=True, cache=True)
def _sort_unique_rows(rowptr, col, counts):  # pragma: no cover - jitted
    """Sort each row of ``col`` in place and move its distinct entries to the front; ``counts[i]``."""
    for i in prange(rowptr.shape[0] - 1):
        a, b = rowptr[i], rowptr[i + 1]
        if b - a == 0:
            counts[i] = 0
            continue
        row = col[a:b]
        row.sort()
        k = 1
        for j in range(1, b - a):
            if row[j] != row[k - 1]:
                row[k] = row[j]
                k += 1
        counts[i] = k


@njit(parallel=True, nogil=True, cache=True)
def _compact(raw_ptr, raw, ptr, out):  # pragma: no cover - jitted
    """Row ``i``'s first ``ptr[i+1] - ptr[i]`` entries of ``raw`` to ``out[ptr[i]:ptr[i+1]]``."""
    for i in prange(ptr.shape[0] - 1):
        s, r = ptr[i], raw_ptr[i]
        for j in range(ptr[i + 1] - s):
            out[s + j] = raw[r + j]


def _rowptr(counts: np.ndarray) -> np.ndarray:
    ptr = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def write_csr(folder: Path, chunks: EdgeChunks, num_nodes: int) -> int:
    """``rowptr.npy`` and ``col.npy`` in ``folder`` for the graph whose edges ``chunks()`` yields
    as ``(src, dst)`` array pairs (called twice): symmetrised, self-loops dropped, duplicates
    removed, rows sorted -- the graph :meth:`approxgnn.graph.CSRGraph.from_edge_index` builds.
    Returns ``nnz``."""
    n = num_nodes
    deg = np.zeros(n, np.int64)
    for src, dst in chunks():
        _count(np.asarray(src, np.int64), np.asarray(dst, np.int64), deg)
    raw_ptr = _rowptr(deg)
    del deg
    raw_path = folder / "col.raw.npy"
    raw = np.lib.format.open_memmap(raw_path, mode="w+", dtype=col_dtype(n), shape=(int(raw_ptr[-1]),))
    cursor = raw_ptr[:-1].copy()
    for src, dst in chunks():
        _scatter(np.asarray(src, np.int64), np.asarray(dst, np.int64), cursor, raw)
    del cursor
    counts = np.empty(n, np.int64)
    if raw.size:
        _sort_unique_rows(raw_ptr, raw, counts)
    else:
        counts[:] = 0
    ptr = _rowptr(counts)
    del counts
    nnz = int(ptr[-1])
    np.save(folder / "rowptr.npy", ptr)
    col = np.lib.format.open_memmap(folder / "col.npy", mode="w+", dtype=col_dtype(n), shape=(nnz,))
    if nnz:
        _compact(raw_ptr, raw, ptr, col)
    col.flush()
    del col, raw
    raw_path.unlink()
    return nnz


def create_npy(path: Path, shape: tuple[int, ...], dtype: str, header_bytes: int = 4096) -> int:
    """An ``.npy`` of ``shape`` whose data starts at ``header_bytes`` (the header padded with spaces,
    as the format allows), the body left sparse; returns the data offset. With a page-sized header,
    rows of 1 KiB (256 float32) never straddle a 4 KiB page, so a direct read of one row is one page."""
    header = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                   "shape": tuple(shape)}).encode("latin1")
    pad = header_bytes - 10 - len(header) - 1
    if pad < 0:
        raise ValueError(f"{path}: an .npy header of {len(header)} bytes does not fit in {header_bytes}")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + (header_bytes - 10).to_bytes(2, "little") + header + b" " * pad + b"\n")
        f.truncate(header_bytes + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return header_bytes


class _RowFile:
    """A float32 ``[N, F]`` ``.npy`` (page-aligned, :func:`create_npy`) written by row blocks through
    ``out[a:b] = block`` with plain writes: unlike a memory map, the written pages never count
    towards the process's resident memory."""

    def __init__(self, path: Path, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.offset = create_npy(path, shape, "float32")
        self.fd = os.open(path, os.O_WRONLY)

    def __setitem__(self, rows: slice, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=np.float32)
        pos = self.offset + rows.start * self.shape[1] * 4
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):  # pwrite may write less than asked
            done += os.pwrite(self.fd, view[done:], pos + done)

    def __enter__(self) -> "_RowFile":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _write_array(folder: Path, name: str, values: np.ndarray, dtype: str) -> None:
    out = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=values.shape)
    step = max(1, _CHUNK // max(1, int(np.prod(values.shape[1:], dtype=np.int64))))
    for s in range(0, values.shape[0], step):
        out[s : s + step] = values[s : s + step]
    out.flush()


def _finish(folder: Path, manifest: dict[str, Any]) -> None:
    """The manifest, last: a layout without one is incomplete and refused."""
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def _staging(out: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """A sibling scratch directory, renamed to ``out`` when the block succeeds, removed if it fails."""
    out = Path(out)
    if out.exists() and not (overwrite and (out / MANIFEST).is_file()):
        what = "a layout (pass --overwrite to replace it)" if (out / MANIFEST).is_file() else "something else"
        raise DatasetError(f"{out}: exists and holds {what}; refusing to write over it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _manifest(name: str, n: int, nnz: int, f: int, c: int, metric: str, meta: dict) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "name": name, "num_nodes": n, "nnz": nnz, "num_features": f,
            "num_classes": c, "metric": metric, "features_checked": True, "meta": meta,
            "arrays": expected_arrays(n, nnz, f)}


def _write_features_checked(folder: Path, x: np.ndarray, where: str) -> None:
    """``x.npy`` in row chunks, refusing NaN/inf (so that opening the layout need not scan them)."""
    step = max(1, _CHUNK // max(1, x.shape[1]))
    with _RowFile(folder / "x.npy", tuple(x.shape)) as out:
        for s in range(0, x.shape[0], step):
            block = np.asarray(x[s : s + step], dtype=np.float32)
            if not np.isfinite(block).all():
                raise DatasetError(f"{where}: features contain NaN or inf (rows {s}..{s + len(block) - 1})")
            out[s : s + step] = block


def write_layout(data: Dataset, out: str | os.PathLike, *, overwrite: bool = False) -> Dataset:
    """Write ``data`` as a layout in ``out``; return it opened from there. Memory beyond ``data``:
    a few ``[N]`` arrays and one chunk."""
    n = data.num_nodes
    with _staging(out, overwrite) as tmp:
        if data.csr is not None:
            rowptr, col = data.csr
            chunks: EdgeChunks = lambda: _csr_chunks(rowptr, col)  # noqa: E731
        else:
            ei = data.edge_index
            chunks = lambda: ((ei[0, s : s + _CHUNK], ei[1, s : s + _CHUNK])  # noqa: E731
                              for s in range(0, ei.shape[1], _CHUNK))
        nnz = write_csr(tmp, chunks, n)
        _write_features_checked(tmp, data.x, data.files.get("x") or data.source or data.name)
        _write_array(tmp, "y", data.y, "int64")
        for m in MASKS:
            _write_array(tmp, m, getattr(data, m), "bool")
        meta = {k: v for k, v in data.meta.items() if k != "features_checked"}
        _finish(tmp, _manifest(data.name, n, nnz, data.num_features, data.num_classes, data.metric,
                               {"source": data.source, **meta}))
    return open_layout(out)


def _csr_chunks(rowptr: np.ndarray, col: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The upper triangle of a symmetric CSR as ``(src, dst)`` chunks (each undirected edge once)."""
    n = rowptr.shape[0] - 1
    lo = 0
    while lo < n:
        hi = max(lo + 1, int(np.searchsorted(rowptr, rowptr[lo] + _CHUNK, side="right")) - 1)
        hi = min(hi, n)
        a, b = int(rowptr[lo]), int(rowptr[hi])
        src = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(np.asarray(rowptr[lo : hi + 1])))
        dst = np.asarray(col[a:b], np.int64)
        keep = src < dst
        yield src[keep], dst[keep]
        lo = hi


def write_synthetic_layout(out: str | os.PathLike, *, name: str = "synthetic", num_nodes: int = 20_000,
                           avg_degree: float = 20.0, exponent: float = 2.5, num_classes: int = 8,
                           num_features: int = 64, homophily: float = 0.8, feature_noise: float = 1.5,
                           seed: int = 0, split: int = 0, train: Size = 0.1, val: Size = 0.1,
                           test: Size | None = None, overwrite: bool = False) -> Dataset:
    """Generate :func:`~.synthetic_graph.synthetic`'s graph (the same arguments, the same values)
    straight into a layout in ``out``; return it opened from there (module docstring for memory)."""
    check_params(num_nodes, avg_degree, exponent, num_classes, num_features, homophily, feature_noise)
    n, c = int(num_nodes), int(num_classes)
    with _staging(out, overwrite) as tmp:
        y, keys = graph_keys(n, avg_degree, exponent, c, homophily, seed)
        _write_array(tmp, "y", y, "int64")
        same = 0
        for s in range(0, keys.size, _CHUNK):
            u, v = np.divmod(keys[s : s + _CHUNK], n)
            same += int((y[u] == y[v]).sum())
        chunks = lambda: (np.divmod(keys[s : s + _CHUNK], n) for s in range(0, keys.size, _CHUNK))  # noqa: E731
        nnz = write_csr(tmp, chunks, n)
        edges = int(keys.size)
        del keys
        with _RowFile(tmp / "x.npy", (n, num_features)) as x:
            features(seed, y, c, num_features, feature_noise, x)  # finite by construction
        masks = stratified_split(y, split_rng(seed, split, stream=2), train=train, val=val, test=test, where=name)
        for m, values in zip(MASKS, masks):
            _write_array(tmp, m, values, "bool")
        params = dict(num_nodes=n, avg_degree=avg_degree, exponent=exponent, num_classes=c, num_features=num_features,
                      homophily=homophily, feature_noise=feature_noise, seed=seed, split=split)
        meta = synthetic_meta(params, edges, same / edges if edges else float("nan"))
        _finish(tmp, _manifest(name, n, nnz, num_features, c, metric_for(c), meta))
    return open_layout(out)
