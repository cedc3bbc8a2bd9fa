"""The caches of one mini-batch run, assembled in one place under one byte budget.

Both the trainer (``approxgnn train --engine sample|refresh``) and the PyG wrapper
(:class:`~approxgnn.pyg.history.HistoryGNN`) build their caches here, so that a policy means the
same thing in both and the checkpoint rule is written once:

* ``none``: batches read the feature store itself; nothing cached, nothing to checkpoint;
* ``feature``: a :class:`~approxgnn.minibatch.CachedFeatureStore` of the highest-degree rows fills
  the budget; its state is the caches' own (:meth:`Caches.state_dict`);
* a history policy (``gas``, ``refresh``, ``refresh-paper``): a :class:`~.engine.HistoryEngine`
  owns the arena, the feature cache in its front and the history in its back; the engine
  checkpoints both through the :class:`~approxgnn.nn.engine.Engine` protocol. With
  ``refresh_every``, a :class:`~.refresh.HistoryRefresher` (stateless) rewrites its oldest entries
  between steps; the training loop calls it (:meth:`Caches.after_step`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..minibatch.feature_cache import CachedFeatureStore
from ..minibatch.sampler import NeighborSampler
from ..minibatch.stores import FeatureStore, degree_order
from ..nn.engine import Engine
from .config import HISTORY_POLICIES, HistoryConfig
from .engine import HistoryEngine
from .refresh import HistoryRefresher

__all__ = ["Caches", "build_caches"]


@dataclass
class Caches:
    """What :func:`build_caches` assembled.

    ``features``: the store batches read (the feature cache, else the plain store);
    ``engine``: the history engine, else the no-op :class:`Engine`; ``history`` the same engine or
    None; ``feature_cache``: the cached store (the engine's own under a history policy) or None;
    ``refresher``: REST's forward-only refreshes of the history, or None.
    """

    policy: str
    budget_bytes: int
    features: FeatureStore
    feature_cache: CachedFeatureStore | None = None
    engine: Engine = field(default_factory=Engine)
    refresher: HistoryRefresher | None = None

    def after_step(self, model: torch.nn.Module, make_input: Any, step: int, key: int, device: torch.device) -> int:
        """After training step ``step`` (its admission done): a forward-only refresh of the history
        with ``model`` when one is due (:class:`~.refresh.HistoryRefresher`). Returns the entries
        rewritten (0: none due)."""
        if self.refresher is None or not self.refresher.due(step):
            return 0
        return self.refresher.run(model, self.features, make_input, step, key, device)

    @property
    def history(self) -> HistoryEngine | None:
        return self.engine if isinstance(self.engine, HistoryEngine) else None

    @property
    def cached_layers(self) -> tuple[int, ...]:
        """The layers whose outputs are cached (none without a history)."""
        return self.history.cached_layers if self.history is not None else ()

    def metadata_bytes(self) -> int:
        """Bytes of the caches' metadata (slot maps, write iterations, replacement order): part of
        the budget, next to the arena's rows."""
        meta = self.feature_cache.metadata_bytes if self.feature_cache is not None else 0
        return meta + (self.history.cache.metadata_bytes if self.history is not None else 0)

    def state_dict(self) -> dict[str, Any]:
        """The state no engine holds: ``{"feature_cache": …}`` under ``feature``, else empty (a
        history engine checkpoints its feature cache itself, through :meth:`Engine.state_dict`)."""
        if self.feature_cache is not None and self.history is None:
            return {"feature_cache": self.feature_cache.state_dict()}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote (``state`` may hold other keys too)."""
        if self.feature_cache is not None and self.history is None:
            if "feature_cache" not in state:
                raise ValueError(f"the state holds no feature cache, which policy {self.policy!r} keeps")
            self.feature_cache.load_state_dict(state["feature_cache"])


def build_caches(cfg: HistoryConfig, store: FeatureStore, rowptr: np.ndarray, weight: np.ndarray, num_layers: int,
                 hidden: int, cache_mb: float, device: torch.device,
                 sampler: NeighborSampler | None = None) -> Caches:
    """The caches of policy ``cfg.policy`` over ``store`` within ``cache_mb`` MiB (metadata included).

    ``rowptr [N+1]``: the graph's CSR row pointers; feature rows are cached highest degree first.
    ``weight [N]`` (float64, shared, not copied): the history's capacity guard (a uniform sampler
    reaches a node about in proportion to its degree). ``num_layers``/``hidden``: the model's depth
    and width (the history's rows are ``hidden`` floats). ``sampler``: the run's, needed by
    ``cfg.refresh_every`` (the refreshes sample as training does).
    """
    if cache_mb < 0:
        raise ValueError(f"cache budget must be >= 0 MB, got {cache_mb}")
    if cfg.policy == "none":
        return Caches("none", 0, store)
    budget = int(cache_mb * 2**20)
    order = degree_order(rowptr)
    if cfg.policy in HISTORY_POLICIES:
        engine = HistoryEngine.build(cfg, store, order, weight, num_layers, hidden, budget, device)
        refresher = None
        if cfg.refresh_every is not None:
            if sampler is None:
                raise ValueError("refresh_every samples the refreshed entries: build_caches needs the run's sampler")
            refresher = HistoryRefresher(engine, sampler, cfg.refresh_every, cfg.refresh_rows)
        return Caches(cfg.policy, budget, engine.features, engine.features, engine, refresher)
    cached = CachedFeatureStore.within_budget(store, order, budget, device)
    return Caches(cfg.policy, budget, cached, cached)
