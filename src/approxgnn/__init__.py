"""approxgnn: train graph neural networks faster by computing less.

Two approximation engines on one small core:

* :mod:`approxgnn.rsc` -- randomized sparse computation for full-batch training,
* :mod:`approxgnn.history` -- a historical-embedding cache for neighbour-sampled training,

over :mod:`approxgnn.datasets` → :mod:`approxgnn.graph` → :mod:`approxgnn.nn` → :mod:`approxgnn.train`.

What a user calls is here: :class:`TrainConfig` and :func:`run` (train and get the result, as
``approxgnn train`` does), :func:`build_trainer` / :func:`fit` / :func:`read_checkpoint` (the same
in steps, resumable), :func:`load_dataset` and :func:`set_threads`. PyG users start at
:mod:`approxgnn.pyg`. The names load on first use, so that ``import approxgnn`` stays cheap.
"""
import os
import warnings

# numba's parallel kernels and torch share one OpenMP runtime; with its default wait policy the
# idle team spins after every kernel and starves torch's small ops on a busy machine (measured:
# a Cora-sized dropout+ReLU went from 1.2 ms to 26 ms). The policy is read when libgomp loads, so
# it only takes effect if approxgnn is imported before torch (as the CLI does); a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# torch warns on every CSR construction; the library builds CSR tensors from validated pieces, so
# the notices carry no information for our users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

# name → module that defines it (imported on first use: torch and numba load only when needed)
_EXPORTS = {"TrainConfig": "approxgnn.train", "run": "approxgnn.train", "build_trainer": "approxgnn.train",
            "fit": "approxgnn.train", "read_checkpoint": "approxgnn.train", "load_dataset": "approxgnn.datasets",
            "set_threads": "approxgnn.threads"}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):  # PEP 562: the lazy exports above
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'approxgnn' has no attribute {name!r}")
