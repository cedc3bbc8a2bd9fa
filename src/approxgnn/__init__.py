"""approxgnn: train graph neural networks faster by computing less.

Two approximation engines on one small core:

* :mod:`approxgnn.rsc` -- randomized sparse computation for full-batch training,
* :mod:`approxgnn.history` -- a historical-embedding cache for neighbour-sampled training,

over :mod:`approxgnn.datasets` → :mod:`approxgnn.graph` → :mod:`approxgnn.nn` → :mod:`approxgnn.train`.
"""
__version__ = "0.1.0"
