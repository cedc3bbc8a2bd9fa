"""Neighbour-sampled mini-batches, the ground floor both mini-batch engines stand on.

* :class:`MiniBatchConfig` -- fanouts, batch size, cache budget, feature placement, prefetching;
* :class:`NeighborSampler` -- numba, per-layer fanouts, blocks with targets first, cache pruning;
* feature stores behind one ``read(ids)`` protocol (:class:`FeatureStore`): :class:`ArrayFeatureStore`
  (RAM or ``.npy`` memmap, counted), :class:`DiskFeatureStore` (``pread`` from a thread pool over
  ``O_DIRECT``, counting the pages really read) and :class:`CachedFeatureStore` (a cache over any store);
* :class:`BatchLoader` / :class:`Prefetcher` -- one batch ahead in a worker thread;
* :class:`BlockPropagation` -- a model on one batch's blocks;
* :func:`layerwise_inference` -- exact inference over full neighbourhoods, chunk by chunk.
"""
from .blocks import BlockPropagation
from .config import FEATURE_STORES, MiniBatchConfig, default_fanouts
from .disk_store import DiskFeatureStore
from .feature_cache import CachedFeatureStore
from .inference import layerwise_inference
from .loader import Batch, BatchLoader, Prefetcher, epoch_permutation, epoch_seeds
from .sampler import NeighborSampler, SampledBatch, batch_key
from .stores import ArrayFeatureStore, FeatureStore, JoinedFeatureStore, degree_order, first_hop_store, write_features

__all__ = ["MiniBatchConfig", "FEATURE_STORES", "default_fanouts", "NeighborSampler", "SampledBatch", "batch_key",
           "FeatureStore", "ArrayFeatureStore", "DiskFeatureStore", "JoinedFeatureStore", "CachedFeatureStore",
           "degree_order", "first_hop_store",
           "write_features", "Batch", "BatchLoader", "Prefetcher", "epoch_permutation", "epoch_seeds",
           "BlockPropagation", "layerwise_inference"]
