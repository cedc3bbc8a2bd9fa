"""approxgnn: train graph neural networks faster by computing less.

Two approximation engines on one small core:

* :mod:`approxgnn.rsc` -- randomized sparse computation for full-batch training,
* :mod:`approxgnn.history` -- a historical-embedding cache for neighbour-sampled training,

over :mod:`approxgnn.datasets` → :mod:`approxgnn.graph` → :mod:`approxgnn.nn` → :mod:`approxgnn.train`.
"""
import warnings

__version__ = "0.1.0"

# torch warns on every CSR construction; the library builds CSR tensors from validated pieces, so
# the notices carry no information for our users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
