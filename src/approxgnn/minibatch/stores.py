"""Where raw node features come from: one protocol, ``read(ids)``, and the store that ends the chain.

Shaped like DGL GraphBolt's feature stores: a :class:`FeatureStore` is anything that turns node
ids into rows. :class:`ArrayFeatureStore` is the ground floor -- ``x [N, F]`` float32 in RAM or
in a ``.npy`` file opened with ``np.memmap`` (so features may exceed RAM) -- and counts every row
it reads: the "memory access" figure ReFresh reduces. A cache (:mod:`.feature_cache`) wraps any
store behind the same ``read`` and forwards only its misses, so the count is what really left
the slow store.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..datasets.layout_write import create_npy
from ..graph import CSRGraph
from ..precompute import FIRST_HOP_LAYOUTS, TABLE_DTYPES, FirstHopTable, precompute_first_hop
from ..state import check_version


# The dtypes a store may hold: features are float32; a precomputed table may be any of its dtypes.
STORED_DTYPES = tuple(np.dtype(t) for t in TABLE_DTYPES.values())
PAGE = 4096  # what one direct read transfers at least (:mod:`.disk_store`)


def index_dtype(count: int) -> type:
    """int32 while every node id fits, else int64 (slot maps have one entry per node)."""
    return np.int32 if count <= 2**31 else np.int64


@runtime_checkable
class FeatureStore(Protocol):
    """Rows of a node-feature matrix ``[num_nodes, dim]`` by id."""

    @property
    def num_nodes(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def read(self, ids: np.ndarray) -> Tensor:
        """``x[ids]`` as a new float32 tensor ``[len(ids), dim]`` (on the store's device)."""
        ...


@njit(parallel=True, nogil=True, cache=True)
def _gather_rows(x, ids, out):
    """``out[i] = x[ids[i]]``; parallel, without the GIL (works on memmaps too)."""
    for i in prange(ids.shape[0]):
        out[i] = x[ids[i]]


class ArrayFeatureStore:
    """Rows ``x [N, F]`` (an array or ``np.memmap``) behind one counted ``read``.

    Stored as float32, or float16 (a precomputed first-hop table, :mod:`approxgnn.precompute`):
    ``read`` always returns float32, and the bytes counted are the stored ones.
    """

    VERSION = 1

    def __init__(self, x: np.ndarray) -> None:
        if x.ndim != 2:
            raise ValueError(f"features must be 2-D [N, F], got shape {x.shape}")
        if isinstance(x, np.memmap):
            if x.dtype not in STORED_DTYPES:
                raise ValueError(f"memory-mapped features must be float32 or float16, got {x.dtype}")
        else:
            x = np.ascontiguousarray(x, dtype=x.dtype if x.dtype == np.float16 else np.float32)
        self.x = x
        self.rows_read = 0
        self.bytes_read = 0

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ArrayFeatureStore":
        """Memory-map a ``.npy`` written by :func:`write_features` (nothing is read yet)."""
        return cls(np.load(path, mmap_mode="r"))

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @property
    def row_bytes(self) -> int:
        return self.dim * self.x.dtype.itemsize

    @property
    def on_disk(self) -> bool:
        return isinstance(self.x, np.memmap)

    def read(self, ids: np.ndarray) -> Tensor:
        """Rows ``x[ids]`` as a new CPU float32 tensor ``[len(ids), F]``; counts them as read."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty((ids.shape[0], self.dim), self.x.dtype)
        if ids.size:
            if out.dtype == np.float16:  # numba has no float16: move the same bits as uint16
                _gather_rows(self.x.view(np.uint16), ids, out.view(np.uint16))
            else:
                _gather_rows(self.x, ids, out)
        self.rows_read += int(ids.size)
        self.bytes_read += int(ids.size) * self.row_bytes
        return as_float32(out)

    def full(self) -> Tensor:
        """All of ``x`` as a float32 tensor sharing its memory (a float32 memmap stays on disk; a
        float16 table is widened into RAM); counted as one full scan. For exact inference, which
        reads every row anyway."""
        self.rows_read += self.num_nodes
        self.bytes_read += self.num_nodes * self.row_bytes
        return as_float32(self.x)

    def counters(self) -> dict[str, int]:
        return {"rows_read": self.rows_read, "bytes_read": self.bytes_read}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, **self.counters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, self.VERSION, "feature store")
        self.rows_read, self.bytes_read = int(state["rows_read"]), int(state["bytes_read"])


def as_float32(x: np.ndarray) -> Tensor:
    """``x`` (float32 or float16) as a float32 tensor: shared when float32, widened when float16."""
    t = readonly_tensor(x)
    return t if t.dtype == torch.float32 else t.float()


class StoreFront:
    """Base of a cache in front of a ``fallback`` store (:mod:`.feature_cache`, :mod:`.lookahead`):
    the same rows, so the same shape, and on disk where the fallback is."""

    fallback: FeatureStore

    @property
    def num_nodes(self) -> int:
        return self.fallback.num_nodes

    @property
    def dim(self) -> int:
        return self.fallback.dim

    @property
    def on_disk(self) -> bool:
        return bool(getattr(self.fallback, "on_disk", False))


def readonly_tensor(x: np.ndarray) -> Tensor:
    """``x`` as a tensor sharing its memory, without torch's warning about a read-only array (a
    read-only memmap: nothing writes through the tensor)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


class JoinedFeatureStore:
    """Several counted stores over the same nodes read as one: row ``v`` is the concatenation of
    every part's row ``v`` (e.g. ``[X | mean_{j∈N(v)} x_j]`` for a precomputed first hop).

    Each part counts its own reads, so ``bytes_read`` is the sum over the tables; a cache over
    this store (:mod:`.feature_cache`) holds joined rows, i.e. rows of every table, in one budget.
    """

    VERSION = 1

    def __init__(self, parts: list[FeatureStore]) -> None:
        if not parts or len({p.num_nodes for p in parts}) != 1:
            raise ValueError(f"joined stores need one node count, got {[p.num_nodes for p in parts]}")
        self.parts = list(parts)

    @property
    def num_nodes(self) -> int:
        return self.parts[0].num_nodes

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    @property
    def row_bytes(self) -> int:
        return sum(p.row_bytes for p in self.parts)

    @property
    def on_disk(self) -> bool:
        return any(p.on_disk for p in self.parts)

    @property
    def rows_read(self) -> int:
        return self.parts[0].rows_read

    @property
    def bytes_read(self) -> int:
        return sum(p.bytes_read for p in self.parts)

    def read(self, ids: np.ndarray) -> Tensor:
        """``[len(ids), dim]``: every part's rows side by side (each part counts its read)."""
        return torch.cat([p.read(ids) for p in self.parts], 1)

    def full(self) -> Tensor:
        """All rows joined (a copy in RAM); counted as one full scan of every part."""
        return torch.cat([p.full() for p in self.parts], 1)

    def counters(self) -> dict[str, int]:
        """Every part's counters summed (a disk part's ``disk_bytes_read`` too); ``rows_read``
        counts a joined row once."""
        out: dict[str, int] = {}
        for p in self.parts:
            for k, v in p.counters().items():
                out[k] = out.get(k, 0) + v
        return out | {"rows_read": self.rows_read}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, self.VERSION, "joined feature store")
        if len(state["parts"]) != len(self.parts):
            raise ValueError(f"the state joins {len(state['parts'])} stores, this one {len(self.parts)}")
        for p, s in zip(self.parts, state["parts"]):
            p.load_state_dict(s)


def first_hop_store(graph: CSRGraph, store: FeatureStore, norm: str, directory: str | os.PathLike | None = None,
                    dtype: str = "float32", layout: str = "split") -> tuple[FeatureStore, FirstHopTable]:
    """The store layer 0 reads when its aggregation ``norm`` is precomputed over ``store``'s
    features (:mod:`approxgnn.precompute`): GCN's table ``[ÂX | Â1]`` alone (``ÂX`` holds the raw
    features), SAGE's ``[X | mean]`` joined; every read counted. The table (stored as ``dtype``)
    lives where ``X`` does (RAM, or on disk beside an on-disk ``X``), or in ``directory``, and is
    read the way ``X`` is (an on-disk table by ``pread`` when ``store`` is a disk store). Also
    returns the table.

    ``layout`` (SAGE over a disk store): ``split`` reads ``X`` and the table from their two files,
    two ``pread``s a row; ``packed`` writes them side by side into one file of page-aligned records
    beside the table (:func:`write_packed`, once per fingerprint) and reads a row with one;
    ``auto`` packs when the disk holds the packed file with room to spare (:func:`packed_fits`).
    """
    from .disk_store import DiskFeatureStore  # it builds on this module's helpers

    if layout not in FIRST_HOP_LAYOUTS:
        raise ValueError(f"first-hop layout must be one of {FIRST_HOP_LAYOUTS}, got {layout!r}")
    table = precompute_first_hop(graph, store.x, norm, directory=directory, dtype=dtype)
    on_disk = table.path is not None and isinstance(store, DiskFeatureStore)
    if layout == "packed" and not (on_disk and norm == "mean"):
        raise ValueError("a packed first-hop layout needs SAGE's [X | mean] rows read by the disk store "
                         "(--feature-store disk); use --precompute-layout auto or split")
    if norm == "mean" and on_disk:
        packed = Path(table.path).with_name(Path(table.path).stem + "-packed.npy")
        if layout == "packed" or (layout == "auto" and (packed.exists() or packed_fits(packed, store.x, table.table))):
            if not packed.exists():
                write_packed(packed, {"x": store.x, "mean": table.table})
            return DiskFeatureStore(packed, threads=store.threads), table
    rows: FeatureStore
    if on_disk:
        rows = DiskFeatureStore(table.path, threads=store.threads)
    else:
        rows = ArrayFeatureStore(table.table)
    return (rows if norm == "gcn" else JoinedFeatureStore([store, rows])), table


def joins_first_hop(state: dict[str, Any]) -> bool:
    """Whether a saved store's ``state_dict`` is of ``[X | mean]`` rows (joined from two files or
    packed in one), i.e. of a SAGE run with the precomputed first hop."""
    return "parts" in state or "fields" in state


def packed_dtype(parts: dict[str, np.ndarray]) -> np.dtype:
    """The record of :func:`write_packed`: each part's row side by side, then padding to the next
    power of two (a row of at most a page) or page multiple, so no record straddles a page."""
    names = list(parts)
    widths = [int(parts[k].shape[1]) * parts[k].dtype.itemsize for k in names]
    offsets = np.cumsum([0] + widths[:-1]).tolist()
    row = sum(widths)
    stride = 1 << max(0, (row - 1).bit_length()) if row <= PAGE else -(-row // PAGE) * PAGE
    return np.dtype({"names": names, "formats": [(parts[k].dtype, (parts[k].shape[1],)) for k in names],
                     "offsets": offsets, "itemsize": stride})


def packed_fits(path: Path, *parts: np.ndarray, spare: int = 4 << 30) -> bool:
    """Whether the disk under ``path`` holds a packed file of ``parts`` and still has ``spare`` bytes free."""
    dtype = packed_dtype({f"p{i}": p for i, p in enumerate(parts)})
    return shutil.disk_usage(path.parent).free >= PAGE + parts[0].shape[0] * dtype.itemsize + spare


def write_packed(path: str | os.PathLike, parts: dict[str, np.ndarray], *, chunk_bytes: int = 64 << 20) -> Path:
    """Write the rows of ``parts`` (arrays or memmaps ``[N, F_k]``, float32/float16) side by side as
    one ``.npy`` of records (:func:`packed_dtype`, page-aligned from a page-sized header), in row
    chunks of about ``chunk_bytes`` (bounded memory), to a temporary name then renamed. Returns ``path``."""
    path = Path(path)
    n = {int(p.shape[0]) for p in parts.values()}
    if len(n) != 1:
        raise ValueError(f"packed parts need one row count, got {sorted(n)}")
    rows = n.pop()
    dtype = packed_dtype(parts)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    offset = create_npy(tmp, (rows,), dtype)
    chunk = max(1, chunk_bytes // dtype.itemsize)
    with open(tmp, "r+b") as f:
        f.seek(offset)
        rec = np.zeros(min(chunk, rows), dtype)  # zeroed once: the padding is written as zeros
        for s in range(0, rows, chunk):
            e = min(s + chunk, rows)
            for name, part in parts.items():
                rec[name][: e - s] = part[s:e]
            f.write(rec[: e - s].tobytes())
    os.replace(tmp, path)
    return path


def degree_order(rowptr: np.ndarray) -> np.ndarray:
    """Node ids by degree, highest first (ties: lower id first)."""
    deg = np.diff(rowptr)
    return np.argsort(-deg, kind="stable")


def write_features(path: str | os.PathLike, x: np.ndarray, *, chunk: int = 1 << 16) -> np.memmap:
    """Write ``x`` (any array or memmap) to a float32 ``.npy`` in row chunks; return it memory-mapped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    create_npy(tmp, tuple(x.shape), "float32")  # page-aligned rows: fewer pages per direct read
    out = np.load(tmp, mmap_mode="r+")
    for s in range(0, x.shape[0], chunk):
        out[s : s + chunk] = x[s : s + chunk]
    out.flush()
    del out
    os.replace(tmp, path)  # a reader never sees a half-written file
    return np.load(path, mmap_mode="r")
