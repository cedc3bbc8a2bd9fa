"""Adapters for PyTorch Geometric users (optional extra ``approxgnn[pyg]``).

* :class:`NeighborBatchLoader` -- PyG-style ``Data`` mini-batches from approxgnn's sampler,
  pruned below history-cache hits;
* :class:`HistoryGNN` -- ReFresh's history cache on a PyG ``GraphSAGE``/``GCN`` in a user's loop;
* :class:`PropagationGNN` -- a PyG ``BasicGNN`` on approxgnn's propagation interface.

``torch_geometric`` is imported only when these are used; the core never imports this package.
"""
from .history import HistoryGNN, PropagationGNN
from .loader import NeighborBatchLoader, to_pyg_batch

__all__ = ["NeighborBatchLoader", "to_pyg_batch", "HistoryGNN", "PropagationGNN"]
