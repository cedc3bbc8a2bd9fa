"""Neighbour-sampled mini-batches, the ground floor both mini-batch engines stand on.

* :class:`MiniBatchConfig` -- fanouts, batch size, cache budget, feature placement, prefetching;
* :class:`NeighborSampler` -- numba, per-layer fanouts, blocks with targets first, cache pruning;
* feature stores behind one ``read(ids)`` protocol (:class:`FeatureStore`): :class:`ArrayFeatureStore`
  (RAM or ``.npy`` memmap, counted), :class:`DiskFeatureStore` (``pread`` from a thread pool over
  ``O_DIRECT``, counting the pages really read), :class:`CachedFeatureStore` (a cache over any store)
  and :class:`LookaheadCache` (Belady over the next batches, their misses prefetched);
* :class:`BatchLoader` -- one batch ahead in a worker thread (:class:`.loader.Prefetcher`);
* :class:`BlockPropagation` -- a model on one batch's blocks;
* :func:`layerwise_inference` -- exact inference over full neighbourhoods, chunk by chunk.
"""
from .blocks import BlockPropagation
from .config import MiniBatchConfig
from .disk_store import DiskFeatureStore
from .feature_cache import CachedFeatureStore
from .inference import layerwise_inference
from .loader import BatchLoader
from .lookahead import LookaheadCache
from .sampler import NeighborSampler
from .stores import ArrayFeatureStore, FeatureStore, JoinedFeatureStore, first_hop_store, write_features

# What a user builds a loop from; the helpers (seeds per epoch, batch keys, the prefetcher, the
# degree order, ...) are imported from their modules.
__all__ = ["MiniBatchConfig", "NeighborSampler", "FeatureStore", "ArrayFeatureStore", "DiskFeatureStore",
           "JoinedFeatureStore", "CachedFeatureStore", "LookaheadCache", "first_hop_store", "write_features", "BatchLoader",
           "BlockPropagation", "layerwise_inference"]
