"""Adapters for PyTorch Geometric users (optional extra ``approxgnn[pyg]``).

* :func:`approximate` -- RSC's sampled backward in a user's own PyG model and full-batch loop;
  :func:`engine_of` gives its state (figures, explicit epochs, ``state_dict``);
* :func:`from_pyg` / :func:`to_pyg` -- a PyG ``Data`` to the library's ``Dataset`` and back;
  :func:`load_pt` reads a saved ``Data`` safely (``weights_only``);
* :class:`NeighborBatchLoader` -- PyG-style ``Data`` mini-batches from approxgnn's sampler,
  pruned below history-cache hits;
* :class:`HistoryGNN` -- ReFresh's history cache on a PyG ``GraphSAGE``/``GCN`` in a user's loop;
* :class:`PropagationGNN` -- a PyG ``BasicGNN`` on approxgnn's propagation interface.

``torch_geometric`` is imported only when these are used; the core never imports this package.
"""
from .data import from_pyg, load_pt, to_pyg
from .history import HistoryGNN, PropagationGNN
from .loader import NeighborBatchLoader, to_pyg_batch
from .rsc import PyGApproximation, approximate, engine_of

__all__ = ["NeighborBatchLoader", "to_pyg_batch", "HistoryGNN", "PropagationGNN", "PyGApproximation",
           "approximate", "engine_of", "from_pyg", "load_pt", "to_pyg"]
