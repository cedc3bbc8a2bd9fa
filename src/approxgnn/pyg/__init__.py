"""Adapters for PyG users (needs ``torch_geometric``: ``pip install 'approxgnn[pyg]'``).

* :func:`approximate` -- RSC's sampled backward in a user's own PyG model and training loop;
  :func:`engine_of` gives its state (figures, explicit epochs, ``state_dict``);
* :func:`from_pyg` / :func:`to_pyg` -- a PyG ``Data`` to the library's ``Dataset`` and back;
  :func:`load_pt` reads a saved ``Data`` safely (``weights_only``).
"""
try:
    import torch_geometric  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("approxgnn.pyg needs torch_geometric: pip install 'approxgnn[pyg]'") from e

from .data import from_pyg, load_pt, to_pyg
from .rsc import PyGApproximation, approximate, engine_of

__all__ = ["PyGApproximation", "approximate", "engine_of", "from_pyg", "load_pt", "to_pyg"]
