"""History-cache configuration (spec: docs/refresh.md): the knobs of ``--engine refresh``."""
from __future__ import annotations

from dataclasses import dataclass

# Cache policies. ``none`` and ``feature`` keep no history (no cache / raw-feature cache only);
# ``gas``, ``refresh`` and ``refresh-paper`` are the history policies (:mod:`.policies`).
POLICIES = ("none", "feature", "gas", "refresh", "refresh-paper")
HISTORY_POLICIES = ("gas", "refresh", "refresh-paper")

# The part of the arena embeddings may claim, per history policy, when ``embedding_share`` is not
# given. ``refresh`` keeps at least half of the budget for the highest-degree feature rows: on
# synthetic-hard-1m at 5-25 % of the feature bytes this read up to 15 % fewer bytes than the
# uncapped split, at 0.2-0.5 pp higher test (benchmarks/RESULTS.md, "Budgets of 5, 10 and 25%").
# ``refresh-paper`` (the paper's rule) and ``gas`` let embeddings displace every feature row.
DEFAULT_EMBEDDING_SHARE = {"gas": 1.0, "refresh": 0.5, "refresh-paper": 1.0}

# What a cached layer's entries hold: ``output`` its output after batch norm and activation (a hit
# prunes the node's whole sub-tree); ``aggregate`` its input neighbour mean (SAGE; a hit prunes the
# neighbours only, and the layer's linear maps, batch norm and activation run on it fresh);
# ``auto`` (the default) the aggregate wherever it applies (:meth:`HistoryConfig.resolved_cached_value`):
# on synthetic-hard-1m at 10 % and 25 % of the feature bytes it kept test accuracy within 0.5 pp of
# no cache where the output lost 1.5 pp (benchmarks/RESULTS.md, "History cache defaults").
CACHED_VALUES = ("auto", "output", "aggregate")
# How a history entry is stored. float16 holds twice the entries in the same bytes; a served value's
# rounding error is far below its staleness, which the value oracle found costs no accuracy.
ENTRY_DTYPES = ("float32", "float16")


@dataclass
class HistoryConfig:
    """Knobs of the history cache.

    * ``policy``: ``none`` (no cache), ``feature`` (raw-feature cache only), ``gas`` (every
      out-of-batch neighbour from history, no criteria), ``refresh`` (gradient admission +
      staleness). The byte budget is :attr:`MiniBatchConfig.cache_mb`.
    * ``rate`` ∈ (0, 1]: admit candidates below this gradient-norm quantile; ``evict`` also drops
      cached nodes above it. ``staleness``: iterations after which an entry is a miss.
    * ``cached_layers``: hidden layers whose outputs are cached (default: the second-to-last);
      checked against the depth by ``TrainConfig``, which knows it.
    * ``embedding_share`` ∈ [0, 1]: the most of the cache arena that embeddings may take from the
      feature rows (``None``: the policy's :data:`DEFAULT_EMBEDDING_SHARE`). ``refresh-paper`` is
      ``refresh`` with the paper's split: embeddings may displace every feature row.
    * ``switch_time`` ∈ [0, 1]: the fraction of the epochs trained with the history cache (as RSC's
      ``switch_time``). From epoch ``⌊switch_time · epochs⌋`` on, training is exact: no hits, no
      admissions, and the whole budget holds feature rows again. ``1``: never switch.
    * ``start_time`` ∈ [0, 1): a warm start -- before epoch ``⌊start_time · epochs⌋`` the history is
      neither read nor written (the feature rows hold the whole budget). ``0``: from the start.
    * ``cached_value``: :data:`CACHED_VALUES` (``aggregate`` needs SAGE and a cached layer >= 1;
      ``auto`` resolves by the model, :meth:`resolved_cached_value`).
    * ``hit_fanout`` (LMC-style partial refresh of output hits): ``None`` prunes a hit's sub-tree;
      ``k >= 1`` recomputes the hit from ``k`` sampled neighbours and serves
      ``h = fresh + (1 − hit_mix)(hist − fresh.detach())``: the value ``hit_mix · fresh +
      (1 − hit_mix) · hist``, the gradient through ``fresh``.
    * ``control_variate`` ρ ∈ (0, 1] (VR-GCN-style, output hits): each hit is recomputed with
      probability ρ (from ``hit_fanout`` neighbours, else the hop's fanout) and served as
      ``h = hist + (fresh − hist) / ρ``; the others are served as ``hist`` and pruned. Then
      ``E[h] = fresh`` and the recomputed hits carry the gradient, scaled by ``1/ρ``
      (:meth:`~.engine.HistoryEngine.mix`). Replaces LMC's mixing (``hit_mix`` unused).
    * ``staleness_decay`` β >= 0 (VISAGNN-style): the layer above a cached layer aggregates its
      sources with weights ``w = exp(−β · age / staleness)`` for served rows (``age`` in
      iterations) and 1 for computed ones, renormalised per target so that the row's total weight
      is unchanged (:func:`~.engine.staleness_weight`). ``0``: off.
    * ``entry_dtype``: :data:`ENTRY_DTYPES`, how an entry is stored in the arena (float16: half the
      bytes an entry, so the embeddings' share of the budget holds twice as many).
    * ``refresh_every`` R (REST-style forward-only refreshes): after every R-th step, the
      ``refresh_rows`` oldest entries of each cached layer are recomputed with the current weights
      in a forward pass without gradient and rewritten (:mod:`.refresh`). Its time and feature
      reads count in the epoch's. ``None``: off.
    """

    policy: str = "refresh"
    rate: float = 0.9
    evict: bool = False
    staleness: int = 200
    cached_layers: list[int] | None = None
    embedding_share: float | None = None
    switch_time: float = 1.0
    start_time: float = 0.0
    cached_value: str = "auto"
    hit_fanout: int | None = None
    hit_mix: float = 0.5
    control_variate: float | None = None
    staleness_decay: float = 0.0
    refresh_every: int | None = None
    refresh_rows: int = 1024
    entry_dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        if self.staleness < 1:
            raise ValueError(f"staleness must be >= 1 iteration, got {self.staleness}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.embedding_share is not None and not 0.0 <= self.embedding_share <= 1.0:
            raise ValueError(f"embedding_share must be in [0, 1], got {self.embedding_share}")
        if not 0.0 <= self.switch_time <= 1.0:
            raise ValueError(f"switch_time must be in [0, 1], got {self.switch_time}")
        if not 0.0 <= self.start_time < 1.0:
            raise ValueError(f"start_time must be in [0, 1), got {self.start_time}")
        if self.start_time > 0 and self.start_time >= self.switch_time:
            raise ValueError(f"start_time {self.start_time} must come before switch_time {self.switch_time}")
        if self.cached_value not in CACHED_VALUES:
            raise ValueError(f"cached_value must be one of {CACHED_VALUES}, got {self.cached_value!r}")
        if self.hit_fanout is not None and self.hit_fanout < 1:
            raise ValueError(f"hit_fanout must be >= 1 (or None: prune hits), got {self.hit_fanout}")
        if self.hit_fanout is not None and self.cached_value == "aggregate":
            raise ValueError("hit_fanout refreshes cached outputs; an aggregate hit draws no neighbour")
        if not 0.0 <= self.hit_mix <= 1.0:
            raise ValueError(f"hit_mix must be in [0, 1], got {self.hit_mix}")
        if self.control_variate is not None and not 0.0 < self.control_variate <= 1.0:
            raise ValueError(f"control_variate must be in (0, 1] (or None: off), got {self.control_variate}")
        if not (self.staleness_decay >= 0.0 and self.staleness_decay < float("inf")):
            raise ValueError(f"staleness_decay must be finite and >= 0, got {self.staleness_decay}")
        if self.cached_value == "aggregate" and (self.control_variate is not None or self.staleness_decay > 0):
            raise ValueError("control_variate and staleness_decay correct served outputs; an aggregate hit "
                             "is computed by its own layer (use cached_value 'output')")
        if self.refresh_every is not None and self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1 step (or None: off), got {self.refresh_every}")
        if self.refresh_rows < 1:
            raise ValueError(f"refresh_rows must be >= 1, got {self.refresh_rows}")
        if self.entry_dtype not in ENTRY_DTYPES:
            raise ValueError(f"entry_dtype must be one of {ENTRY_DTYPES}, got {self.entry_dtype!r}")
        for layer in self.cached_layers or ():
            if layer < 0:
                raise ValueError(f"cached layer {layer} is not a hidden layer (must be >= 0)")

    def resolved_cached_value(self, mean_aggregation: bool, num_layers: int) -> str:
        """``cached_value``, with ``auto`` resolved for a ``num_layers``-layer model: ``aggregate``
        where it applies -- a mean aggregation (SAGE), cached layers >= 1, and none of the
        corrections that act on a served output (``hit_fanout``, ``control_variate``,
        ``staleness_decay``) -- else ``output``."""
        if self.cached_value != "auto":
            return self.cached_value
        layers = self.cached_layers if self.cached_layers is not None else [num_layers - 2]
        output_only = self.hit_fanout is not None or self.control_variate is not None or self.staleness_decay > 0
        return "aggregate" if mean_aggregation and min(layers, default=0) >= 1 and not output_only else "output"

    def resolved_embedding_share(self) -> float:
        """``embedding_share``, or the policy's default share (1.0 for the non-history policies)."""
        if self.embedding_share is not None:
            return self.embedding_share
        return DEFAULT_EMBEDDING_SHARE.get(self.policy, 1.0)

    def check_depth(self, num_layers: int) -> None:
        """Every cached layer must be a hidden layer of a ``num_layers``-layer model."""
        n_hidden = num_layers - 1
        for layer in self.cached_layers or ():
            if not 0 <= layer < n_hidden:
                raise ValueError(f"cached layer {layer} is not a hidden layer (0..{n_hidden - 1})")
        default = [num_layers - 2] if self.cached_layers is None else self.cached_layers
        if self.cached_value == "aggregate" and min(default, default=1) < 1:
            # layer 0's aggregate is over raw features (width F, not hidden): a feature cache's job
            raise ValueError("cached_value 'aggregate' caches a hidden layer's input: cached layers must be >= 1")
