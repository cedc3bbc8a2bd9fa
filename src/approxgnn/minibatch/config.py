"""Mini-batch configuration: sampling, batches, feature stores and the cache byte budget.

Shared by both mini-batch engines (``sample`` and ``refresh``); the history cache's own knobs
live in :class:`approxgnn.history.HistoryConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass

FEATURE_STORES = ("auto", "disk", "mmap")

# The fanouts of the common 3-layer setup (e.g. PyG's ogbn-products GraphSAGE example): wide next to
# the seeds, narrow towards the features, where each hop multiplies the number of nodes read.
STANDARD_FANOUTS = (15, 10, 5)

# Batches the look-ahead cache plans ahead when features are on disk and --lookahead is not given.
# 0 (off) until a timing says otherwise (benchmarks/RESULTS.md, "Out-of-core training end to end"):
# on 50k nodes it cut the rows read per epoch from 24 % to 18 % of those requested, but no timing of
# it under a memory cap exists yet, and turning it on by default would halve the history cache's
# share of --cache-mb (a change of training, not only of speed).
DEFAULT_LOOKAHEAD = 0


def default_fanouts(layers: int) -> list[int]:
    """The fanouts used when none are given: the first ``layers`` entries of ``[15, 10, 5]``,
    extended with 5s for deeper models (2 layers: ``[15, 10]``; 4 layers: ``[15, 10, 5, 5]``)."""
    return [STANDARD_FANOUTS[i] if i < len(STANDARD_FANOUTS) else STANDARD_FANOUTS[-1] for i in range(layers)]


@dataclass
class MiniBatchConfig:
    """Knobs of neighbour-sampled training.

    * ``fanouts``: neighbours sampled per hop, PyG's ``num_neighbors`` order: ``fanouts[0]`` for
      the seeds' own neighbours (the last layer), ``fanouts[-1]`` for the hop that reaches the
      raw features; ``-1`` takes every neighbour. ``len(fanouts)`` is the number of layers.
      ``None`` (the default): one per layer by :func:`default_fanouts`, filled in by
      ``TrainConfig``, which knows the number of layers.
    * ``batch_size``: seed nodes per mini-batch.
    * ``cache_mb``: one byte budget for the caches, shared by the feature cache and (under the
      history policies) the history cache; it holds their metadata too.
    * ``eval_batch_size``: nodes per chunk in exact layer-wise evaluation.
    * ``eval_fanouts``: ``None`` (the default) evaluates exactly, layer by layer over full
      neighbourhoods; a list (one per layer, as ``fanouts``) evaluates on sampled neighbourhoods
      instead, ``batch_size`` targets a batch (:func:`~.inference.sampled_inference`): PyG's way
      on graphs where one exact pass reads every edge's rows, e.g. features larger than memory.
    * ``eval_nodes``: evaluate at most this many nodes of each split (a seeded sample, the same
      at every evaluation); 0 (the default): all of them.
    * ``features_on_disk``: keep features in a memory-mapped ``.npy`` instead of RAM (written
      to ``<out>/features.npy``, or a temporary directory without ``--out``).
    * ``features_path``: memory-map this ``.npy`` (from ``approxgnn prepare``) as the features.
    * ``feature_store``: how features on disk are read: ``disk`` (:class:`~.disk_store.DiskFeatureStore`:
      ``pread`` from a thread pool, ``O_DIRECT``), ``mmap`` (a memory map, as before) or ``auto``
      (the memory map for a file that fits in half the memory the run may use, where the page
      cache serves it from RAM; ``disk`` for a larger one). ``disk`` implies ``features_on_disk``;
      features in RAM stay in RAM under ``auto`` and ``mmap``.
    * ``prefetch``: sample the next batch in a worker thread while this one trains (and let the
      look-ahead cache prefetch in its own thread).
    * ``lookahead``: batches sampled ahead for the look-ahead cache (:mod:`.lookahead`: Belady
      over the window, the next batch's misses prefetched); 0 turns it off. ``None`` (default):
      :data:`DEFAULT_LOOKAHEAD` when the features are read from disk, off for features in RAM
      (there it would only copy rows from memory to memory).
    * ``lookahead_share``: the part of ``cache_mb`` the look-ahead buffer takes when it is on; the
      rest holds the feature and history caches. Under policy ``none`` (no other cache) it takes
      the whole budget.
    """

    fanouts: list[int] | None = None
    batch_size: int = 1024
    cache_mb: float = 512.0
    eval_batch_size: int = 65536
    eval_fanouts: list[int] | None = None
    eval_nodes: int = 0
    features_on_disk: bool = False
    features_path: str | None = None
    prefetch: bool = True
    feature_store: str = "auto"
    lookahead: int | None = None
    lookahead_share: float = 0.5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.fanouts is not None and not self.fanouts:
            raise ValueError("fanouts must list at least one layer")
        for f in self.fanouts or ():
            if f != -1 and f <= 0:
                raise ValueError(f"fanouts must be positive or -1 (all neighbours), got {f}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.eval_batch_size <= 0:
            raise ValueError(f"eval_batch_size must be positive, got {self.eval_batch_size}")
        if self.eval_fanouts is not None and (not self.eval_fanouts or any(f != -1 and f <= 0 for f in self.eval_fanouts)):
            raise ValueError(f"eval_fanouts must list positive fanouts or -1, one per layer, got {self.eval_fanouts}")
        if self.eval_nodes < 0:
            raise ValueError(f"eval_nodes must be >= 0 (0: every node of a split), got {self.eval_nodes}")
        if self.cache_mb < 0:
            raise ValueError(f"cache budget must be >= 0 MB, got {self.cache_mb}")
        if self.feature_store not in FEATURE_STORES:
            raise ValueError(f"feature_store must be one of {', '.join(FEATURE_STORES)}, got {self.feature_store!r}")
        if self.lookahead is not None and self.lookahead < 0:
            raise ValueError(f"lookahead must be >= 0 batches (0: off), got {self.lookahead}")
        if not 0.0 < self.lookahead_share <= 1.0:
            raise ValueError(f"lookahead_share must be in (0, 1], got {self.lookahead_share}")
        if self.features_path is not None and not str(self.features_path).endswith(".npy"):
            raise ValueError(f"features_path must name a .npy file, got {self.features_path!r}")
