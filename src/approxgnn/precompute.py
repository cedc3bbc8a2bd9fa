"""The first aggregation, computed once: a second feature table beside ``X``.

With no dropout on the input features, a model's first aggregation holds no weights:

* GCN:  ``Â(XW + 1bᵀ) = (ÂX)W + (Â1)bᵀ``, so the table is ``[ÂX | Â1]``, ``[N, F+1]``
  (the last column is the row sum of ``Â``, which the bias needs: ``Â1 ≠ 1``);
* mean-SAGE: ``W_r x_i + W_n · mean_{j∈N(i)} x_j``, so the table is the neighbour mean ``[N, F]``
  (isolated nodes: zeros, as the mean aggregation gives them);
* GCNII: its first layer is a plain linear map, nothing to precompute.

Computed over full neighbourhoods, in row chunks, so that a memory-mapped ``X`` gives an on-disk
table in bounded memory. The table is keyed by a fingerprint of the graph's structure, the
features and the aggregation: a second run finds and reuses it, a changed graph or changed
features name a different file and never reuse a stale one.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .ops import spmm_diag
from .graph import CSRGraph, NormalizedAdjacency, normalize

# Bumped whenever the table's contents for the same inputs would change (layout, normalisation).
TABLE_VERSION = 1
# The aggregation each model's first layer needs (its ``norm``); models not named have none.
FIRST_HOP_NORM = {"gcn": "gcn", "sage": "mean"}
CHUNK_BYTES = 64 << 20  # output rows computed (and held) at once, about this many bytes
# How a table may be stored. float16 halves the bytes a mini-batch reads per table row; an average
# of float32 features keeps 11 significant bits, far finer than the features' own noise.
TABLE_DTYPES = {"float32": np.float32, "float16": np.float16}
# How SAGE's ``[X | mean]`` rows lie on disk for a mini-batch run (:func:`~approxgnn.minibatch.first_hop_store`).
FIRST_HOP_LAYOUTS = ("auto", "packed", "split")


def first_hop_norm(model: str) -> str | None:
    """``"gcn"`` or ``"mean"``: the aggregation model ``model`` can take precomputed; None if none."""
    return FIRST_HOP_NORM.get(model)


def table_width(norm: str, num_features: int) -> int:
    """Columns of the table: ``F + 1`` for GCN (``ÂX`` and ``Â1``), ``F`` for the mean."""
    return num_features + 1 if norm == "gcn" else num_features


def fingerprint(graph: CSRGraph, x: np.ndarray, norm: str, *, chunk_rows: int = 1 << 16,
                memo_dir: str | os.PathLike | None = None) -> str:
    """Hex BLAKE2b digest of (table version, aggregation, graph structure, features' shape and bytes).

    The normalised values are functions of the structure and ``norm``, so hashing the structure
    covers them. Features are hashed in row chunks (a memmap is read once, sequentially); for
    features memory-mapped from a file, :func:`features_digest` keeps that digest in ``memo_dir``.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([TABLE_VERSION, norm, graph.num_nodes, list(x.shape), str(x.dtype)]).encode())
    for t in (graph.rowptr, graph.col):
        h.update(np.ascontiguousarray(t.cpu().numpy()).data)
    h.update(features_digest(x, chunk_rows=chunk_rows, memo_dir=memo_dir).encode())
    return h.hexdigest()


def features_digest(x: np.ndarray, *, chunk_rows: int = 1 << 16, memo_dir: str | os.PathLike | None = None) -> str:
    """Hex BLAKE2b digest of ``x``'s bytes, read in row chunks.

    Hashing features on disk reads all of them (10 GiB: most of a minute from a cold disk), on
    every run. So for a memmap of a file and a ``memo_dir``, the digest is kept there beside the
    file's identity (path, inode, size, modification time in ns, offset, shape, dtype), and read
    back while that identity is unchanged: a file rewritten, replaced or touched is hashed again.
    """
    memo = None
    name = getattr(x, "filename", None) if isinstance(x, np.memmap) else None
    if name is not None and memo_dir is not None:
        st = os.stat(name)
        ident = [os.path.realpath(name), st.st_ino, st.st_size, st.st_mtime_ns, int(x.offset), list(x.shape),
                 str(x.dtype)]
        memo = Path(memo_dir) / f".features-{hashlib.blake2b(ident[0].encode(), digest_size=8).hexdigest()}.json"
        try:
            kept = json.loads(memo.read_text())
            if kept.get("identity") == ident:
                return str(kept["digest"])
        except (OSError, ValueError, AttributeError, KeyError):
            pass  # no memo yet, or an unreadable one: hash
    h = hashlib.blake2b(digest_size=16)
    for s in range(0, x.shape[0], chunk_rows):
        h.update(np.ascontiguousarray(x[s : s + chunk_rows]).data)
    digest = h.hexdigest()
    if memo is not None:
        try:
            tmp = memo.with_name(f"{memo.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"identity": ident, "digest": digest}))
            os.replace(tmp, memo)
        except OSError:
            pass  # a read-only directory: hash again next time
    return digest


def compute_first_hop(adj: NormalizedAdjacency, x: np.ndarray, out: np.ndarray, *,
                      chunk_rows: int | None = None) -> np.ndarray:
    """Fill ``out [N, w]`` with the first aggregation of ``x [N, F]`` under ``adj``, chunk by chunk.

    Computed in float32 and rounded to ``out``'s dtype when stored. ``adj.kind == "gcn"``:
    ``out[:, :F] = Â_off X + diag ⊙ X`` and ``out[:, F] = Σ_j Â_ij``;
    ``"mean"``: ``out = Â X`` (row-normalised). ``x`` and ``out`` may be memmaps: only one chunk of
    output rows (plus the rows of ``x`` the chunk's neighbours touch, through the page cache) is
    in memory at a time. Returns ``out``.
    """
    n, f = x.shape
    if adj.num_nodes != n:
        raise ValueError(f"graph has {adj.num_nodes} nodes, features {n} rows")
    width = table_width(adj.kind, f)
    if out.shape != (n, width):
        raise ValueError(f"output must have shape {(n, width)}, got {out.shape}")
    rows = chunk_rows or max(1, CHUNK_BYTES // (4 * width))
    rowptr, col = adj.off.rowptr.cpu(), adj.off.col.cpu()
    val = adj.off.value.cpu().to(torch.float32)
    diag = None if adj.diag is None else adj.diag.cpu().to(torch.float32)
    with warnings.catch_warnings():  # a read-only memmap: the kernel only reads it
        warnings.simplefilter("ignore", UserWarning)
        xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    buf = torch.empty((min(rows, n), f), dtype=torch.float32)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        lo, hi = int(rowptr[s]), int(rowptr[e])
        part = buf[: e - s]
        spmm_diag(CSRGraph(rowptr[s : e + 1] - lo, col[lo:hi], e - s, val[lo:hi], num_cols=n), xt, None, part)
        if diag is not None:
            part.addcmul_(diag[s:e, None], xt[s:e])
        out[s:e, :f] = part.numpy()
        if adj.kind == "gcn":
            # Â1 = diag + row sums of Â_off, accumulated in float64 (one number per row).
            sums = torch.zeros(e - s, dtype=torch.float64)
            sums.index_add_(0, torch.repeat_interleave(torch.arange(e - s), rowptr[s + 1 : e + 1] - rowptr[s:e]),
                            val[lo:hi].double())
            out[s:e, f] = (sums + (0.0 if diag is None else diag[s:e].double())).float().numpy()
    if isinstance(out, np.memmap):
        out.flush()
    return out


@dataclass
class FirstHopTable:
    """The precomputed first aggregation ``table [N, w]`` (float32 or float16; in RAM or a memmap) and its cost.

    ``seconds``/``bytes`` are what building (or finding and opening) the table cost: the
    fingerprint, the aggregation and the write; ``reused`` says an earlier run's table was found.
    """

    table: np.ndarray
    norm: str
    fingerprint: str
    seconds: float
    bytes: int
    reused: bool
    path: str | None = None

    @property
    def num_features(self) -> int:
        """``F`` of the features it was computed from."""
        return self.table.shape[1] - (1 if self.norm == "gcn" else 0)

    def info(self) -> dict[str, Any]:
        """The facts ``result.json`` records under ``precompute``."""
        return {"norm": self.norm, "dtype": str(self.table.dtype), "fingerprint": self.fingerprint,
                "seconds": self.seconds, "bytes": self.bytes,
                "reused": self.reused, "file": self.path, "on_disk": isinstance(self.table, np.memmap)}


def table_path(directory: str | os.PathLike, norm: str, key: str, dtype: str = "float32") -> Path:
    """Where the table of fingerprint ``key`` lives in ``directory``: the key is in the name, so a
    different graph or different features can never open another's table (nor a float16 table a
    float32 one)."""
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return Path(directory) / f"first_hop-{norm}{suffix}-{key}.npy"


def precompute_first_hop(graph: CSRGraph, x: np.ndarray, norm: str, *, directory: str | os.PathLike | None = None,
                         chunk_rows: int | None = None, dtype: str = "float32") -> FirstHopTable:
    """The first-hop table of ``(graph, x)`` under ``norm`` (``"gcn"`` or ``"mean"``), stored as
    ``dtype`` (``"float32"`` or ``"float16"``, see :data:`TABLE_DTYPES`).

    ``directory`` None: computed in RAM (or, when ``x`` is a memmap, in the directory of its file,
    so that an on-disk ``X`` gets an on-disk table). With a directory, the table is
    ``first_hop-<norm>-<fingerprint>.npy`` there: opened memory-mapped if an earlier run wrote it,
    else written (to a temporary name, then renamed, so no reader sees half a table).
    """
    if norm not in ("gcn", "mean"):
        raise ValueError(f"no first hop to precompute for normalisation {norm!r}")
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"table dtype must be one of {sorted(TABLE_DTYPES)}, got {dtype!r}")
    np_dtype = TABLE_DTYPES[dtype]
    t0 = time.perf_counter()
    if directory is None and isinstance(x, np.memmap) and getattr(x, "filename", None):
        directory = Path(x.filename).parent
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    key = fingerprint(graph, x, norm, memo_dir=directory)
    shape = (graph.num_nodes, table_width(norm, x.shape[1]))
    if directory is None:
        out = compute_first_hop(normalize(graph, norm), x, np.empty(shape, np_dtype), chunk_rows=chunk_rows)
        return FirstHopTable(out, norm, key, time.perf_counter() - t0, out.nbytes, False)
    path = table_path(directory, norm, key, dtype)
    if path.exists():
        table = np.load(path, mmap_mode="r")
        if table.shape == shape and table.dtype == np_dtype:
            return FirstHopTable(table, norm, key, time.perf_counter() - t0, 0, True, str(path))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=shape)
    compute_first_hop(normalize(graph, norm), x, out, chunk_rows=chunk_rows)
    del out
    os.replace(tmp, path)
    table = np.load(path, mmap_mode="r")
    return FirstHopTable(table, norm, key, time.perf_counter() - t0, table.nbytes, False, str(path))
