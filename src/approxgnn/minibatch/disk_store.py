"""A feature store that reads rows straight from disk, with many reads in flight and no GIL.

:class:`DiskFeatureStore` serves ``read(ids)`` (the :class:`~.stores.FeatureStore` protocol) from a
float32 ``.npy`` file without the page cache: a memory map faults one 4 KiB page at a time in the
calling thread (queue depth 1), which on a virtual disk is 4-8x below what the disk can do at
depth 64. Here one call

1. sorts the requested ids by file offset (``argsort``; duplicates fall together);
2. turns them into *runs*: row ``r`` covers pages ``⌊(h + r·b)/P⌋ … ⌊(h + (r+1)·b − 1)/P⌋`` (``h``
   the ``.npy`` header, ``b`` the row bytes, ``P = 4096``); rows whose pages overlap or touch join
   one run (at most ``max_run_pages``), so adjacent rows cost one read;
3. hands contiguous groups of runs to a pool of ``threads`` Python threads, each of which runs a
   numba ``nogil`` loop that calls libc ``pread`` (through ctypes) into its own page-aligned
   scratch buffer and copies the rows out. ``threads`` reads are in flight at once.

The file is opened with ``O_DIRECT`` (no page cache, no readahead; reads are whole aligned pages)
where the file system allows it; where it refuses (tmpfs) the store falls back to an ordinary
descriptor advised ``POSIX_FADV_RANDOM`` (readahead off), with the same results. ``direct`` says
which. Besides the rows requested (``rows_read``, ``bytes_read = rows_read · b`` as every store
counts them) it counts what really left the disk: ``disk_reads`` calls and ``disk_bytes_read``
(whole pages).

A file may also hold *packed* rows (:func:`~.stores.write_packed`): a 1-D structured ``.npy`` whose
record is several float32/float16 row vectors side by side, e.g. ``[X | mean]`` of a precomputed
first hop, padded so that a record never straddles a page. One ``pread`` then brings a node's
whole row, where two files cost two; ``read`` returns the fields joined, as float32.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numba import njit
from torch import Tensor

from .stores import PAGE, STORED_DTYPES, as_float32

_libc = ctypes.CDLL(None, use_errno=True)
_pread = _libc.pread
_pread.restype = ctypes.c_ssize_t
_pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]


@njit(nogil=True, cache=True)
def _plan(sorted_ids, header, row_bytes, page, max_pages):  # pragma: no cover - jitted
    """Runs over ``sorted_ids``: ``start[k]…start[k+1]`` are run ``k``'s ids, whose rows lie in
    pages ``first[k] … first[k] + pages[k] − 1``."""
    n = sorted_ids.shape[0]
    start = np.empty(n + 1, np.int64)
    first = np.empty(n, np.int64)
    pages = np.empty(n, np.int64)
    k = -1
    last = -2  # the last page of the open run
    for i in range(n):
        lo = (header + sorted_ids[i] * row_bytes) // page
        hi = (header + (sorted_ids[i] + 1) * row_bytes - 1) // page
        if k >= 0 and lo <= last + 1 and hi - first[k] + 1 <= max_pages:
            if hi > last:
                last = hi
                pages[k] = hi - first[k] + 1
            continue
        k += 1
        start[k] = i
        first[k] = lo
        pages[k] = hi - lo + 1
        last = hi
    start[k + 1] = n
    return start[: k + 2].copy(), first[: k + 1].copy(), pages[: k + 1].copy()


@njit(nogil=True)  # not cached: numba cannot cache a function that calls a ctypes pointer
def _read_runs(fd, sorted_ids, order, start, first, pages, r0, r1, out, header, row_bytes, page, max_pages):  # pragma: no cover
    """Read runs ``r0…r1`` into ``out`` (uint8 ``[n, row_bytes]``; row ``order[i]`` gets id
    ``sorted_ids[i]``). Returns ``-1`` when all succeeded, else the index of the failed run."""
    raw = np.empty((max_pages + 1) * page, np.uint8)
    skew = (page - raw.ctypes.data % page) % page
    buf = raw[skew : skew + max_pages * page]
    for r in range(r0, r1):
        offset = first[r] * page
        want = pages[r] * page
        got = _pread(fd, buf.ctypes.data, want, offset)
        # The run's last row must be complete (the file's last page may be short).
        need = header + (sorted_ids[start[r + 1] - 1] + 1) * row_bytes - offset
        if got < need:
            return r
        for i in range(start[r], start[r + 1]):
            pos = header + sorted_ids[i] * row_bytes - offset
            out[order[i], :] = buf[pos : pos + row_bytes]
    return -1


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an ``.npy`` file (its header only is read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(version, np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array; rows must be contiguous")
        return shape, dtype, f.tell()


def record_fields(dtype: np.dtype) -> list[tuple[str, np.dtype, int]] | None:
    """``[(name, dtype, width)]`` of a packed record (each field a float32/float16 vector), or None
    when ``dtype`` is not a structured dtype. Raises ValueError on any other field."""
    if dtype.names is None:
        return None
    out = []
    for name in dtype.names:
        sub = dtype.fields[name][0]
        if sub.base not in STORED_DTYPES or len(sub.shape) != 1:
            raise ValueError(f"packed field {name!r} must be a float32 or float16 vector, got {sub}")
        out.append((name, sub.base, int(sub.shape[0])))
    return out


class DiskFeatureStore:
    """Rows of a float32 (or float16: a precomputed table) ``[N, F]`` ``.npy`` file, or of a file of
    packed records (module docstring), read by ``pread`` from a thread pool.

    ``threads``: reads in flight at most (the queue depth the disk sees). 128 by default: when a read
    completes its thread must wait for a core, so on a busy 2-core machine 64 threads kept fewer than
    64 reads in flight (0.7-0.9x fio's depth-64 IOPS) and 128 reached fio's depth-64 figure
    (benchmarks/RESULTS.md); idle threads cost no memory but their stacks' address space. ``direct``: ``None``
    tries ``O_DIRECT`` and falls back; ``False`` never tries. ``max_run_pages``: the longest
    single read of merged adjacent rows.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike, *, threads: int = 128, direct: bool | None = None,
                 max_run_pages: int = 32) -> None:
        self.path = Path(path)
        shape, dtype, self.header = _npy_layout(self.path)
        self.dtype = np.dtype(dtype)
        try:
            self.fields = record_fields(self.dtype)
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from None
        if self.fields is not None and len(shape) == 1:  # packed records: one row a record
            n, f = int(shape[0]), sum(w for _, _, w in self.fields)
            self.stride = self.dtype.itemsize
        elif self.fields is None and len(shape) == 2 and self.dtype in STORED_DTYPES:
            n, f = int(shape[0]), int(shape[1])
            self.stride = f * self.dtype.itemsize
        else:
            raise ValueError(f"{self.path}: features must be a 2-D float32 (or float16) array or a 1-D array "
                             f"of packed records, got {dtype} {shape}")
        need = self.header + n * self.stride
        size = self.path.stat().st_size
        if size < need:
            raise ValueError(f"{self.path}: truncated: its header declares {n} rows of {self.stride} bytes "
                             f"({need} bytes with the header) but the file holds {size} bytes")
        self._shape = (n, f)
        self.threads = max(1, int(threads))
        self.max_run_pages = max(int(max_run_pages), -(-self.stride // PAGE) + 1)
        self.fd, self.direct = self._open(direct)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.rows_read = self.bytes_read = self.disk_reads = self.disk_bytes_read = 0
        self._x: np.memmap | None = None

    def _open(self, direct: bool | None) -> tuple[int, bool]:
        """An ``O_DIRECT`` descriptor if the file system takes it and a first aligned read works,
        else a buffered one advised ``POSIX_FADV_RANDOM``."""
        if direct is not False and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                fd = -1
            if fd >= 0:
                if self.num_nodes == 0 or self._probe(fd):
                    return fd, True
                os.close(fd)  # opened, but reads are refused (EINVAL on some file systems)
        fd = os.open(self.path, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):  # no readahead: rows are small and random
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return fd, False

    def _probe(self, fd: int) -> bool:
        """Whether ``fd`` serves the aligned reads :meth:`read` makes (row 0)."""
        one = np.zeros(1, np.int64)
        start, first, pages = _plan(one, self.header, self.stride, PAGE, self.max_run_pages)
        scratch = np.empty((1, self.stride), np.uint8)
        return _read_runs(fd, one, one, start, first, pages, 0, 1, scratch, self.header, self.stride, PAGE,
                          self.max_run_pages) < 0

    # ---- the FeatureStore protocol -------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self._shape[0]

    @property
    def dim(self) -> int:
        return self._shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's values (a packed record's padding not included; see ``stride``)."""
        if self.fields is None:
            return self.stride
        return sum(w * d.itemsize for _, d, w in self.fields)

    @property
    def on_disk(self) -> bool:
        return True

    @property
    def x(self) -> np.memmap:
        """The file memory-mapped (read-only; for :meth:`full` and for whoever needs its name)."""
        if self._x is None:
            self._x = np.load(self.path, mmap_mode="r")
        return self._x

    def read(self, ids: np.ndarray) -> Tensor:
        """Rows ``x[ids]`` as a new CPU float32 tensor ``[len(ids), F]`` (any order, repeats allowed)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        raw = np.empty((ids.shape[0], self.stride), np.uint8)
        if ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.num_nodes:
                raise IndexError(f"{self.path}: row {lo if lo < 0 else hi} outside [0, {self.num_nodes})")
            self._gather(ids, raw)
        self.rows_read += int(ids.size)
        self.bytes_read += int(ids.size) * self.row_bytes
        return self._decode(raw.view(self.dtype))

    def _decode(self, rows: np.ndarray) -> Tensor:
        """``rows`` (``[n, F]``, or packed records ``[n, 1]``) as float32 ``[n, dim]``."""
        if self.fields is None:
            return as_float32(rows)
        rec = rows.reshape(-1)
        return torch.cat([as_float32(np.ascontiguousarray(rec[name])) for name, _, _ in self.fields], 1)

    def _gather(self, ids: np.ndarray, out: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        start, first, pages = _plan(sorted_ids, self.header, self.stride, PAGE, self.max_run_pages)
        runs = len(first)
        # Several groups per thread, so a slow group does not leave the others idle.
        groups = min(runs, self.threads * 4)
        cuts = np.linspace(0, runs, groups + 1).astype(np.int64)
        args = (self.fd, sorted_ids, order, start, first, pages)
        tail = (out, self.header, self.stride, PAGE, self.max_run_pages)
        if groups <= 1:
            failed = [_read_runs(*args, 0, runs, *tail)]
        else:
            pool = self._executor()
            futures = [pool.submit(_read_runs, *args, int(cuts[g]), int(cuts[g + 1]), *tail) for g in range(groups)]
            failed = [fut.result() for fut in futures]
        bad = [r for r in failed if r >= 0]
        if bad:
            self._raise_for(int(first[bad[0]]), int(pages[bad[0]]))
        self.disk_reads += runs
        self.disk_bytes_read += int(pages.sum()) * PAGE

    def _raise_for(self, first_page: int, pages: int) -> None:
        """Repeat a failed read with Python's ``os.pread`` for the errno, and name the file."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                got = len(os.pread(fd, pages * PAGE, first_page * PAGE))
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, f"{self.path}: reading pages {first_page}..{first_page + pages - 1}: "
                                   f"{e.strerror}") from None
        raise OSError(f"{self.path}: short read at page {first_page}: {got} of {pages * PAGE} bytes "
                      "(was the file truncated while open?)")

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="approxgnn-pread")
            return self._pool

    def full(self) -> Tensor:
        """All of ``x`` as a tensor over the memory map (exact inference reads every row; the
        page cache serves that scan better than random reads). Counted as one full scan."""
        self.rows_read += self.num_nodes
        self.bytes_read += self.num_nodes * self.row_bytes
        return self._decode(self.x if self.fields is None else self.x.reshape(-1, 1))

    # ---- figures, state, lifetime --------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return {"rows_read": self.rows_read, "bytes_read": self.bytes_read, "disk_reads": self.disk_reads,
                "disk_bytes_read": self.disk_bytes_read}

    def state_dict(self) -> dict[str, Any]:
        """Counters; for packed records also their ``fields`` (names), so a checkpoint says the
        rows it read were joined (:func:`~.stores.joins_first_hop`)."""
        state = {"version": self.VERSION, **self.counters()}
        if self.fields is not None:
            state["fields"] = [name for name, _, _ in self.fields]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows_read, self.bytes_read = int(state["rows_read"]), int(state["bytes_read"])
        self.disk_reads = int(state.get("disk_reads", 0))  # absent when saved by the memory-map store
        self.disk_bytes_read = int(state.get("disk_bytes_read", 0))

    def close(self) -> None:
        """Stop the threads and close the file (also at garbage collection)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
