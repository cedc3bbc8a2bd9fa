"""Dataset loaders: every format becomes one :class:`Dataset` record of numpy arrays.

>>> from approxgnn.datasets import load_dataset
>>> ds = load_dataset("cora")                 # <data root>/planetoid/raw/ind.cora.*
>>> ds = load_dataset("tolokers", split=3)    # one of the 10 fixed splits
>>> ds = load_dataset("/data/ogbn_arxiv")     # an OGB folder already on disk
>>> ds = load_dataset("synthetic-1m")         # generated: 1M nodes, 10M edges, in seconds
>>> ds = load_dataset("/data/big_layout")     # an on-disk layout: everything memory-mapped

The data root is ``root=``, else ``$APPROXGNN_DATA``, else ``~/.approxgnn/data``. Nothing is
ever downloaded. Every missing or malformed file raises :class:`DatasetError` naming the file.
"""
from __future__ import annotations

from .base import Dataset, DatasetError, UnknownDatasetError, data_root
from .layout import open_layout
from .layout_write import write_layout, write_synthetic_layout
from .registry import REGISTRY, check_dataset_name, dataset_names, list_datasets, load_dataset
from .synthetic_graph import synthetic

__all__ = [
    "Dataset",
    "DatasetError",
    "REGISTRY",
    "UnknownDatasetError",
    "check_dataset_name",
    "data_root",
    "dataset_names",
    "list_datasets",
    "load_dataset",
    "open_layout",
    "synthetic",
    "write_layout",
    "write_synthetic_layout",
]
