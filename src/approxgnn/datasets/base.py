"""The one record every loader returns, and the error every loader raises."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing or malformed. The message names the file and what was expected."""


class UnknownDatasetError(DatasetError):
    """The name, path or loader option names no dataset: a usage error (the CLI exits 2), not bad data.

    The message lists the valid names or options.
    """


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: explicit argument, else ``$APPROXGNN_DATA``, else ``~/.approxgnn/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("APPROXGNN_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".approxgnn" / "data"


@dataclass
class Dataset:
    """A node-classification dataset held as numpy arrays.

    Shapes (N nodes, E directed edges as stored on disk, F features):
      * ``x``: ``[N, F]`` float32 (dense) -- or a ``np.memmap`` for features kept on disk
      * ``y``: ``[N]`` int64 in ``[0, num_classes)``
      * ``edge_index``: ``[2, E]`` int64; may be directed, contain duplicates or self-loops --
        :class:`approxgnn.graph.CSRGraph` cleans it (symmetrise, dedupe, drop self-loops)
      * ``train_mask``/``val_mask``/``test_mask``: ``[N]`` bool

    A dataset opened from the on-disk layout (:mod:`.layout`) carries its graph as ``csr = (rowptr
    [N+1] int64, col [nnz] int32/int64)``, memory-mapped: the symmetric, deduplicated graph without
    self-loops, rows sorted; its ``edge_index`` is then empty (``[2, 0]``), since listing the edges
    would read them all into memory, and ``num_edges`` counts each undirected edge once (``nnz / 2``).

    ``metric`` is the headline metric of the task: ``"acc"`` or ``"auc"`` (binary ROC-AUC).
    ``source`` says where the data came from; ``files`` optionally maps a field (``x``, ``y``,
    ``edge_index``, ``masks``) to the file it was read from, so that a validation error names
    that file rather than the whole dataset.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    edge_index: np.ndarray
    train_mask: np.ndarray
    val_mask: np.ndarray
    test_mask: np.ndarray
    num_classes: int
    metric: str = "acc"
    source: str = ""
    meta: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    csr: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_nodes(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_edges(self) -> int:
        if self.csr is not None:
            return int(self.csr[1].shape[0]) // 2
        return int(self.edge_index.shape[1])

    def validate(self) -> None:
        """Check shapes, ranges and finiteness; raise :class:`DatasetError` naming the file and field."""

        def fail(msg: str, of: str | None = None) -> None:
            where = self.files.get(of or "") or self.source or self.name
            raise DatasetError(f"{where}: {msg}")

        if self.x.ndim != 2:
            fail(f"features must be 2-D [N, F], got shape {self.x.shape}", "x")
        if self.y.ndim != 1:
            fail(f"labels must be 1-D [N], got shape {self.y.shape}", "y")
        n = self.y.shape[0]
        if n == 0:
            fail("empty graph: no nodes", "y")
        if self.x.shape[0] != n:
            fail(f"label/feature length mismatch: {n} labels but {self.x.shape[0]} feature rows", "x")
        if self.edge_index.ndim != 2 or self.edge_index.shape[0] != 2:
            fail(f"edge_index must have shape [2, E], got {self.edge_index.shape}", "edge_index")
        if not np.issubdtype(self.edge_index.dtype, np.integer):
            fail(f"edge_index must be integer, got {self.edge_index.dtype}", "edge_index")
        if self.edge_index.size:
            lo, hi = int(self.edge_index.min()), int(self.edge_index.max())
            if lo < 0:
                fail(f"edge_index holds a negative node id ({lo})", "edge_index")
            if hi >= n:
                fail(f"edge_index holds node id {hi} outside the node range [0, {n})", "edge_index")
        if self.num_classes < 1:
            fail(f"num_classes must be >= 1, got {self.num_classes}", "y")
        if n and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            fail(f"labels out of range [0, {self.num_classes}): min {self.y.min()}, max {self.y.max()}", "y")
        for mname in ("train_mask", "val_mask", "test_mask"):
            m = getattr(self, mname)
            if m.dtype != np.bool_ or m.shape != (n,):
                fail(f"{mname} must be bool of shape ({n},), got {m.dtype} {m.shape}", "masks")
        if not self.train_mask.any():
            fail("train_mask selects no node", "masks")
        # Memmapped features may exceed RAM: check them in chunks rather than all at once. The layout
        # writer checked them as it wrote them (``features_checked``): a rescan would read them all.
        chunk = max(1, (1 << 26) // max(1, self.x.shape[1] * 4))
        for s in range(0, 0 if self.meta.get("features_checked") else n, chunk):
            if not np.isfinite(self.x[s : s + chunk]).all():
                fail("features contain NaN or inf", "x")
        if self.metric not in ("acc", "auc"):
            fail(f"metric must be 'acc' or 'auc', got {self.metric!r}")
        if self.metric == "auc" and self.num_classes != 2:
            fail("ROC-AUC needs a binary task")

    def summary(self) -> dict:
        return {
            "name": self.name,
            "nodes": self.num_nodes,
            "edges": self.num_edges,
            "features": self.num_features,
            "classes": self.num_classes,
            "metric": self.metric,
            "train/val/test": f"{int(self.train_mask.sum())}/{int(self.val_mask.sum())}/{int(self.test_mask.sum())}",
        }
