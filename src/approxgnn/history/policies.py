"""History policies as small strategy objects: what to admit, what to evict, how old may serve.

* :class:`RefreshPolicy` (ReFresh): entries older than ``staleness`` iterations are
  misses. After the optimiser step, the candidates of a cached layer are the batch's computed
  non-seed nodes without a fresh entry; with ``g_v = ‖∂L/∂h_v‖₂`` (the retained ``.grad``), those
  with ``g_v ≤ quantile_rate(g)`` are admitted, smallest ``g_v`` (most stable) first. With
  ``evict``, served hits whose gradient (taken on the cached rows) lies strictly above their own
  ``rate`` quantile are dropped.
* :class:`GasPolicy` (GNNAutoScale-style): no criteria -- every computed non-seed embedding is
  pushed, entries never go stale (``staleness = None``), nothing is evicted.

``staleness`` is the one name of that limit, from the config (``--staleness``) down to the
sampler's prune test; ``max_age`` is a deprecated alias on the policy objects.
"""
from __future__ import annotations

import warnings
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from .config import HISTORY_POLICIES


def admission_order(grad_norm: Tensor, rate: float) -> Tensor:
    """Indices of the rows to admit: ``grad_norm ≤ quantile(grad_norm, rate)``, smallest first."""
    if grad_norm.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=grad_norm.device)
    thr = torch.quantile(grad_norm.double(), rate)
    idx = torch.nonzero(grad_norm.double() <= thr).flatten()
    return idx[torch.argsort(grad_norm[idx], stable=True)]


def eviction_mask(grad_norm: Tensor, rate: float) -> Tensor:
    """Rows whose ``grad_norm`` lies in the top ``1 − rate`` (strictly above the quantile)."""
    if grad_norm.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=grad_norm.device)
    return grad_norm.double() > torch.quantile(grad_norm.double(), rate)


class HistoryPolicy(Protocol):
    """A strategy the :class:`~.engine.HistoryEngine` consults."""

    name: str
    staleness: int | None  # an entry written at w serves at t while t − w ≤ staleness; None: forever
    evicts: bool

    def admit(self, rows: Tensor, grad: Tensor | None, is_fresh: Callable[[], np.ndarray]) -> tuple[Tensor, int]:
        """Rows to write, in priority order (CPU long tensor), and the number of candidates.

        ``rows [k, d]``: the computed non-seed embeddings; ``grad``: their retained gradient (or
        None); ``is_fresh()``: bool mask ``[k]`` of nodes that already hold a fresh entry.
        """
        ...

    def evict(self, hit_grad: Tensor) -> np.ndarray:
        """Bool mask over served hits (``hit_grad [k, d]``) of those to drop."""
        ...


class _Policy:
    staleness: int | None

    @property
    def max_age(self) -> int | None:
        """Deprecated name of :attr:`staleness`."""
        warnings.warn("a history policy's max_age is deprecated; use .staleness", DeprecationWarning, stacklevel=2)
        return self.staleness


class GasPolicy(_Policy):
    """Push every computed embedding; never stale, never evict."""

    name, staleness, evicts = "gas", None, False

    def admit(self, rows: Tensor, grad: Tensor | None, is_fresh: Callable[[], np.ndarray]) -> tuple[Tensor, int]:
        return torch.arange(rows.size(0)), 0  # overwrite older entries; no candidate selection

    def evict(self, hit_grad: Tensor) -> np.ndarray:
        return np.zeros(hit_grad.size(0), dtype=bool)


class RefreshPolicy(_Policy):
    """Admit stale or missing nodes below the ``rate`` gradient quantile; serve for ``staleness``."""

    name = "refresh"

    def __init__(self, rate: float = 0.9, staleness: int = 200, evict: bool = False) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        if staleness is not None and staleness < 1:
            raise ValueError(f"staleness must be >= 1 iteration, got {staleness}")
        self.rate, self.staleness, self.evicts = rate, staleness, evict

    def admit(self, rows: Tensor, grad: Tensor | None, is_fresh: Callable[[], np.ndarray]) -> tuple[Tensor, int]:
        cand = torch.from_numpy(np.flatnonzero(~is_fresh()))
        g = grad if grad is not None else torch.zeros_like(rows)
        norms = g[cand.to(g.device)].norm(dim=1)
        return cand[admission_order(norms, self.rate).cpu()], len(cand)

    def evict(self, hit_grad: Tensor) -> np.ndarray:
        return eviction_mask(hit_grad.norm(dim=1), self.rate).cpu().numpy()


def make_policy(name: str, rate: float = 0.9, staleness: int | None = 200, evict: bool = False) -> HistoryPolicy:
    """The strategy object for history policy ``name`` (``gas``, ``refresh`` or ``refresh-paper``:
    both ReFresh names admit and expire alike; they differ in the budget split, which
    :meth:`~.engine.HistoryEngine.build` applies)."""
    if name not in HISTORY_POLICIES:
        raise ValueError(f"history policy must be one of {HISTORY_POLICIES}, got {name!r}")
    if name == "gas":
        if not 0.0 < rate <= 1.0:  # unused by GAS, but a bad value is still a mistake worth naming
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        return GasPolicy()
    return RefreshPolicy(rate, staleness, evict)
