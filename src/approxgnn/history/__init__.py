"""Historical-embedding engine (ReFresh): neighbour sampler, feature store/cache, history cache.

* :class:`NeighborSampler` — numba, per-layer fanouts, blocks with targets first, cache pruning;
* :class:`FeatureStore` (RAM or ``.npy`` memmap, counted gathers) and :class:`FeatureCache`;
* :class:`HistoryCache` — per-layer embedding tables sharing the feature cache's byte budget;
* :class:`HistoryEngine` — the ``gas`` and ``refresh`` policies (admission, staleness, eviction);
* :class:`BatchLoader` / :class:`Prefetcher` — one batch ahead in a worker thread;
* :class:`BlockPropagation` / :class:`LayerwisePropagation` — the models' propagation interface.

The trainer that composes them is :class:`approxgnn.train.minibatch.MiniBatchTrainer`.
"""
from .cache import HistoryCache
from .config import POLICIES, RefreshConfig
from .engine import HistoryEngine, admission_order, eviction_mask
from .features import FeatureCache, FeatureStore, degree_order, write_features
from .loader import Batch, BatchLoader, Prefetcher
from .propagation import BlockPropagation, LayerOutput, LayerwisePropagation
from .sampler import Block, NeighborSampler, PruneTest, SampledBatch, batch_key

__all__ = ["RefreshConfig", "POLICIES", "NeighborSampler", "SampledBatch", "Block", "PruneTest", "batch_key",
           "FeatureStore", "FeatureCache", "degree_order", "write_features", "HistoryCache", "HistoryEngine",
           "admission_order", "eviction_mask", "Batch", "BatchLoader", "Prefetcher", "BlockPropagation",
           "LayerwisePropagation", "LayerOutput"]
