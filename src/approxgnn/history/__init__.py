"""Historical-embedding engine (ReFresh, GAS) for mini-batch training.

* :class:`HistoryConfig` -- the policy and its knobs (the byte budget is the mini-batch config's);
* :class:`HistoryEngine` -- builds the arena, feature cache and history cache under one byte
  budget, prunes and serves hits, admits/evicts after each step, reports and checkpoints;
* :class:`RefreshPolicy` / :class:`GasPolicy` -- the admission, eviction and staleness strategies.

The sampler, feature stores, loader and blocks it plugs into are :mod:`approxgnn.minibatch`; the
trainer that drives both is :class:`approxgnn.train.minibatch.MiniBatchTrainer`.
"""
from .config import POLICIES, HistoryConfig
from .engine import HistoryEngine
from .policies import GasPolicy, RefreshPolicy

__all__ = ["POLICIES", "HistoryConfig", "HistoryEngine", "GasPolicy", "RefreshPolicy"]
