"""Mini-batch / historical-cache configuration (spec: docs/refresh.md)."""
from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("none", "feature", "gas", "refresh")

# The fanouts of the common 3-layer setup (e.g. PyG's ogbn-products GraphSAGE example): wide next to
# the seeds, narrow towards the features, where each hop multiplies the number of nodes read.
STANDARD_FANOUTS = (15, 10, 5)


def default_fanouts(layers: int) -> list[int]:
    """The fanouts used when none are given: the first ``layers`` entries of ``[15, 10, 5]``,
    extended with 5s for deeper models (2 layers: ``[15, 10]``; 4 layers: ``[15, 10, 5, 5]``)."""
    return [STANDARD_FANOUTS[i] if i < len(STANDARD_FANOUTS) else STANDARD_FANOUTS[-1] for i in range(layers)]


@dataclass
class RefreshConfig:
    """Knobs of neighbour-sampled training and its caches.

    * ``fanouts``: neighbours sampled per hop, PyG's ``num_neighbors`` order: ``fanouts[0]`` for
      the seeds' own neighbours (the last layer), ``fanouts[-1]`` for the hop that reaches the
      raw features; ``-1`` takes every neighbour. ``len(fanouts)`` is the number of layers.
      ``None`` (the default): one per layer by :func:`default_fanouts`, filled in by
      ``TrainConfig``, which knows the number of layers.
    * ``batch_size``: seed nodes per mini-batch.
    * ``cache_mb``: one byte budget shared by the feature cache and the history cache.
    * ``policy``: ``none`` (no cache), ``feature`` (raw-feature cache only), ``gas`` (every
      out-of-batch neighbour from history, no criteria), ``refresh`` (gradient admission +
      staleness).
    * ``rate`` ∈ (0, 1]: admit candidates below this gradient-norm quantile; ``evict`` also drops
      cached nodes above it. ``staleness``: iterations after which an entry is a miss.
    * ``cached_layers``: hidden layers whose outputs are cached (default: the second-to-last).
    * ``eval_batch_size``: nodes per chunk in exact layer-wise evaluation.
    * ``features_on_disk``: keep features in a memory-mapped ``.npy`` instead of RAM (written
      to ``<out>/features.npy``, or a temporary directory without ``--out``).
    * ``features_path``: memory-map this ``.npy`` (from ``approxgnn prepare``) as the features.
    * ``prefetch``: sample the next batch in a worker thread while this one trains.
    """

    fanouts: list[int] | None = None
    batch_size: int = 1024
    cache_mb: float = 512.0
    policy: str = "refresh"
    rate: float = 0.9
    evict: bool = False
    staleness: int = 200
    cached_layers: list[int] | None = None
    eval_batch_size: int = 65536
    features_on_disk: bool = False
    features_path: str | None = None
    prefetch: bool = True

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
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        if self.cache_mb < 0:
            raise ValueError(f"cache budget must be >= 0 MB, got {self.cache_mb}")
        if self.staleness < 1:
            raise ValueError(f"staleness must be >= 1 iteration, got {self.staleness}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.features_path is not None and not str(self.features_path).endswith(".npy"):
            raise ValueError(f"features_path must name a .npy file, got {self.features_path!r}")
        if self.cached_layers is not None and self.fanouts is not None:  # else checked once resolved
            n_hidden = len(self.fanouts) - 1
            for layer in self.cached_layers:
                if not 0 <= layer < n_hidden:
                    raise ValueError(f"cached layer {layer} is not a hidden layer (0..{n_hidden - 1})")
