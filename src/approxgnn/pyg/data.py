"""PyG ``Data`` ⇄ the library's :class:`~approxgnn.datasets.Dataset`, and saved ``Data`` files.

* :func:`from_pyg`: a node-classification ``Data`` (``x``, ``y``, ``edge_index`` or ``adj_t``,
  ``train_mask``/``val_mask``/``test_mask``; masks of shape ``[N, S]`` hold ``S`` splits) → ``Dataset``;
* :func:`to_pyg`: a ``Dataset`` → ``Data`` with the same fields (plus ``num_classes``);
* :func:`load_pt`: a ``.pt`` file written by ``torch.save(data, path)`` (or a one-graph PyG
  ``processed/data.pt``), read with ``torch.load(weights_only=True)``: only tensors and PyG's data
  classes are unpickled, nothing in the file is run. Failures are :class:`DatasetError`\\ s naming
  the file, like every other loader's.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..datasets import Dataset, DatasetError
from ..datasets._io import as_features, as_labels, fail, metric_for, num_classes_of, reading, require_file
from ..graph import CSRGraph

MASKS = ("train_mask", "val_mask", "test_mask")


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def _edge_index(data: Any, where: str) -> np.ndarray:
    """``edge_index`` as given, else the edges of ``adj_t`` (rows are targets: ``[col; row]``)."""
    ei = getattr(data, "edge_index", None)
    if ei is not None:
        return _numpy(ei)
    adj_t = getattr(data, "adj_t", None)
    if adj_t is None:
        raise DatasetError(f"{where}: the Data has neither edge_index nor adj_t")
    if isinstance(adj_t, Tensor):
        idx = adj_t.to_sparse_coo().coalesce().indices()
        row, col = idx[0], idx[1]
    else:  # torch_sparse.SparseTensor
        row, col, _ = adj_t.coo()
    return _numpy(torch.stack([col, row]))


def _mask(data: Any, key: str, n: int, split: int, where: str) -> np.ndarray:
    m = getattr(data, key, None)
    if m is None:
        raise DatasetError(f"{where}: the Data has no {key}")
    m = _numpy(m)
    if m.ndim == 2:  # several splits, one per column (as PyG's WikiCS or heterophilous graphs)
        if not 0 <= split < m.shape[1]:
            raise DatasetError(f"{where}: {key} holds {m.shape[1]} splits; split {split} is out of range")
        m = m[:, split]
    if m.shape != (n,) or m.dtype != np.bool_:
        raise DatasetError(f"{where}: {key} must be bool of shape ({n},) or ({n}, S), got {m.dtype} {m.shape}")
    return np.ascontiguousarray(m)


def from_pyg(data: Any, name: str = "pyg", *, split: int = 0, metric: str | None = None,
             source: str | None = None) -> Dataset:
    """A node-classification PyG ``Data`` (or a one-graph PyG dataset) as a :class:`Dataset`.

    Shapes: ``x [N, F]`` (float), ``y [N]`` or ``[N, 1]`` (integer classes), ``edge_index
    [2, E]`` (or ``adj_t [N, N]``), masks ``[N]`` or ``[N, S]`` (``split`` picks the column).
    ``num_classes`` is taken from the dataset or a ``data.num_classes`` integer when present, else
    ``max(y) + 1``; ``metric`` defaults to ROC-AUC for two classes and accuracy otherwise, as for
    every loader. Raises :class:`DatasetError` naming ``source`` (default ``name``).
    """
    from torch_geometric.data import Dataset as PyGDataset

    where = source or name
    num_classes = None
    if isinstance(data, PyGDataset):
        if len(data) != 1:
            raise DatasetError(f"{where}: the PyG dataset holds {len(data)} graphs; pass one Data")
        num_classes = int(data.num_classes)
        data = data[0]
    if getattr(data, "x", None) is None or getattr(data, "y", None) is None:
        raise DatasetError(f"{where}: expected a PyG Data with node features x and labels y, got "
                           f"{type(data).__name__}")
    src = Path(where)
    x = as_features(_numpy(data.x), src, "x")
    y = _numpy(data.y)
    y = as_labels(y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y, src, "y")
    stored = getattr(data, "num_classes", None) if num_classes is None else num_classes
    if isinstance(stored, (int, np.integer)) and not isinstance(stored, bool):
        num_classes = int(stored)
    num_classes = num_classes_of(y, src) if num_classes is None else num_classes
    edge_index = _edge_index(data, where)
    if edge_index.dtype.kind not in "iu":
        raise DatasetError(f"{where}: edge_index must be integer, got {edge_index.dtype}")
    masks = {k: _mask(data, k, y.shape[0], split, where) for k in MASKS}
    return Dataset(name=name, x=x, y=y, edge_index=np.ascontiguousarray(edge_index, dtype=np.int64), **masks,
                   num_classes=num_classes, metric=metric or metric_for(num_classes), source=where)


def to_pyg(dataset: Dataset, *, undirected: bool = True) -> Any:
    """``dataset`` as a PyG ``Data`` (``x``, ``y``, ``edge_index``, the three masks, ``num_classes``).

    ``undirected=True`` gives the graph the library trains on (both directions, no duplicates, no
    self-loops: :meth:`CSRGraph.from_edge_index`), so a PyG model sees the same neighbourhoods;
    ``False`` keeps ``dataset.edge_index`` exactly as stored.
    """
    from torch_geometric.data import Data

    if undirected:
        g = CSRGraph.from_edge_index(dataset.edge_index, dataset.num_nodes)
        edge_index = torch.stack([g.row(), g.col])
    else:
        edge_index = torch.from_numpy(np.ascontiguousarray(dataset.edge_index, dtype=np.int64))
    masks = {k: torch.from_numpy(np.ascontiguousarray(getattr(dataset, k))) for k in MASKS}
    return Data(x=torch.as_tensor(np.asarray(dataset.x, dtype=np.float32)), y=torch.from_numpy(dataset.y),
                edge_index=edge_index, num_classes=int(dataset.num_classes), **masks)


def _safe_globals() -> list[Any]:
    """PyG's classes a saved ``Data`` pickles (PyG itself allow-lists only some of them)."""
    from torch_geometric.data import Data
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage

    return [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage, EdgeStorage]


def load_pt(path: str | os.PathLike, name: str | None = None, *, split: int = 0) -> Dataset:
    """Read a ``Data`` saved with ``torch.save`` (or a one-graph ``processed/data.pt``) safely."""
    path = Path(path).expanduser()
    require_file(path, "a .pt file holding a torch_geometric Data (written by torch.save(data, path))")
    try:
        with reading(path, "torch .pt file"), torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except DatasetError as e:
        cause = str(e.__cause__) if isinstance(e.__cause__, pickle.UnpicklingError) else ""
        if "GLOBAL" in cause or "allowed global" in cause:  # torch refused to build a Python object
            found = re.search(r"GLOBAL (\S+)|(\S+) was not an allowed global", cause)
            what = f" ({found.group(1) or found.group(2)})" if found else ""
            raise fail(path, f"refused to load: the file holds a Python object{what} other than tensors and "
                             "torch_geometric's Data (read with torch.load(weights_only=True); nothing was run)") from None
        if cause:  # torch's message for a corrupt file is a page on weights_only; say what it means
            raise fail(path, "malformed torch .pt file: torch.load cannot read it (not written by torch.save?)") from None
        raise
    return from_pyg(_one_graph(obj, path), name or path.stem, split=split, source=str(path))


def _one_graph(obj: Any, path: Path) -> Any:
    """The ``Data`` in a loaded object: a ``Data``, its ``to_dict()``, or ``(dict, slices[, cls])``."""
    from torch_geometric.data import Data

    if isinstance(obj, (tuple, list)) and len(obj) in (2, 3) and isinstance(obj[1], dict):  # InMemoryDataset
        sizes = {k: int(v.numel()) - 1 for k, v in obj[1].items() if isinstance(v, Tensor)}
        if any(s != 1 for s in sizes.values()):
            raise fail(path, f"a PyG dataset file with {max(sizes.values())} graphs; approxgnn trains on one graph")
        obj = obj[0]
    if isinstance(obj, dict):
        with reading(path, "dict of Data fields"):
            obj = Data.from_dict(obj)
    if not isinstance(obj, Data):
        raise fail(path, f"expected a torch_geometric Data, found {type(obj).__name__}")
    return obj
