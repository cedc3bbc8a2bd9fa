r"""Layer-wise FLOPs budget: who keeps how many rows.

Budget (in multiply-adds of the backward SpMMs):  ``total = C · nnz(Â_off) · Σ_l d_l``.
Keeping the top ``k`` rows (by score) of layer ``l`` costs ``cum_nnz_l[k] · d_l``.

Greedy allocation (RSC), step ``δ`` (0.02):

1. ``r_l`` = fraction of non-zero scores in layer ``l``.
2. While the cost exceeds ``total``: for each layer, dropping its next chunk of sorted rows
   ``[N(r_l-δ), N r_l)`` loses ``Δ_l = Σ(scores in chunk) / F_l`` (``F_l`` = ‖approximate output‖_F)
   and saves ``ΔFLOPs_l``. Shrink the layer with the smallest
   ``Δ_l`` (``mode="delta"``, the official rule) or smallest ``Δ_l / ΔFLOPs_l``
   (``mode="delta_per_flop"``).
3. Stop when within budget or no layer can shrink. Then (beyond the paper) give the budget left
   over by the last 2 % step back to that layer as extra non-zeros, so the budget is hit, not
   undershot by up to a whole chunk.

A layer the greedy never shrank gets an *uncapped* allowance (``max_nnz`` = all of ``Â_off``):
its statistics only estimate which rows will carry gradient, and dropout and ReLU change that set
at every step, so a cap taken from the last statistics would cut rows the budget meant to keep.
``planned_nnz`` records what the allocator charged such a layer.

``mode="uniform"`` instead gives every layer the same FLOPs fraction ``C`` of its own product.
Pure functions of the statistics: no state, easy to test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .spmm import num_rows


@dataclass
class LayerStats:
    """What the allocator knows about one layer (EMA over observations, see :meth:`update`).

    * ``sorted_scores [N]``: row scores sorted descending (EMA of sorted vectors);
    * ``cum_nnz [N+1]``: non-zeros of the top-``k`` rows, in the latest score order;
    * ``fnorm``: ‖output of the (approximated) backward SpMM‖_F (EMA);
    * ``width``: the SpMM width ``d_l``.
    """

    sorted_scores: Tensor
    cum_nnz: Tensor
    fnorm: float
    width: int
    observations: int = 1

    def update(self, sorted_scores: Tensor, cum_nnz: Tensor, fnorm: float, weight: float) -> None:
        """EMA with weight ``weight`` on the newest observation."""
        self.sorted_scores.mul_(1.0 - weight).add_(sorted_scores.to(self.sorted_scores.dtype), alpha=weight)
        self.cum_nnz = cum_nnz
        self.fnorm = (1.0 - weight) * self.fnorm + weight * fnorm
        self.observations += 1

    @property
    def num_rows(self) -> int:
        return self.sorted_scores.numel()

    def state_dict(self) -> dict:
        return {"sorted_scores": self.sorted_scores, "cum_nnz": self.cum_nnz, "fnorm": self.fnorm,
                "width": self.width, "observations": self.observations}

    @classmethod
    def from_state(cls, s: dict, device: torch.device | str = "cpu") -> "LayerStats":
        return cls(s["sorted_scores"].to(device), s["cum_nnz"].to(device), float(s["fnorm"]), int(s["width"]),
                   int(s["observations"]))


@dataclass
class Allocation:
    """One layer's share: ``ratio`` of rows, at most ``rows`` rows and ``max_nnz`` non-zeros kept.

    ``planned_nnz`` is the allocator's estimate of what the layer will keep (equal to ``max_nnz``
    for a shrunk layer; the statistics' non-zero rows for an uncapped one).
    """

    ratio: float
    rows: int
    max_nnz: int
    planned_nnz: int = -1

    def __post_init__(self) -> None:
        if self.planned_nnz < 0:
            self.planned_nnz = self.max_nnz

    def flops(self, width: int) -> int:
        return self.planned_nnz * width


def budget_flops(budget: float, nnz: int, widths: dict[int, int]) -> float:
    """``C · nnz(Â_off) · Σ_l d_l``."""
    return budget * nnz * sum(widths.values())


def allocate_budget(stats: dict[int, LayerStats], nnz: int, budget: float, *, step: float = 0.02,
                    mode: str = "delta_per_flop", min_rows: int = 10) -> dict[int, Allocation]:
    """Split ``budget`` (fraction of backward FLOPs) among layers; see the module docstring.

    ``nnz`` is ``nnz(Â_off)``. Returns, per layer, the kept ratio, the row cap and the nnz cap; the
    caps satisfy ``Σ_l max_nnz_l · d_l ≤ C · nnz · Σ_l d_l`` whenever a layer can still shrink.
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    if mode not in ("delta", "delta_per_flop", "uniform"):
        raise ValueError(f"unknown allocation mode {mode!r}")
    if not stats:
        return {}
    cum = {l: s.cum_nnz.detach().to("cpu", torch.float64) for l, s in stats.items()}
    cum_scores = {}
    for l, s in stats.items():
        sc = s.sorted_scores.detach().to("cpu", torch.float64)
        cum_scores[l] = torch.cat([sc.new_zeros(1), torch.cumsum(sc, 0)])
    n = {l: s.num_rows for l, s in stats.items()}
    nonzero = {l: int((s.sorted_scores > 0).sum()) for l, s in stats.items()}

    if mode == "uniform":
        out = {}
        cap = int(budget * nnz)
        for l in stats:
            need = int(cum[l][nonzero[l]])
            if need <= cap:  # fits: uncapped, whatever rows carry gradient at the next step
                out[l] = _uncapped(n[l], nnz, need)
                continue
            k = max(int(torch.searchsorted(cum[l], torch.tensor([float(cap)], dtype=torch.float64), right=True)) - 1, 0)
            out[l] = Allocation(k / n[l], k, cap)
        return out

    # Shrink steps m = 0, 1, ... lower the ratio from its start r0 (fraction of non-zero scores)
    # by `step`, down to r = 0, which still keeps `min_rows` rows (RSC's k rule). Only when every
    # layer sits there and the budget still is not met may a layer drop to zero rows: the budget
    # is a hard bound.
    last = {l: int(math.floor(nonzero[l] / n[l] / step + 1e-9)) for l in stats}

    def rows(l: int, m: int) -> int:
        if m > last[l]:
            return 0
        return min(num_rows(n[l], max(nonzero[l] / n[l] - m * step, 0.0), min_rows), nonzero[l])

    def cost(l: int, k: int) -> float:
        return float(cum[l][k]) * stats[l].width

    steps = {l: 0 for l in stats}
    k_now = {l: rows(l, 0) for l in stats}
    total = budget_flops(budget, nnz, {l: s.width for l, s in stats.items()})
    spent = sum(cost(l, k_now[l]) for l in stats)
    allow_zero = False
    last_shrunk = None
    while spent > total:
        best, best_key = None, None
        for l in stats:
            if steps[l] >= last[l] + allow_zero or k_now[l] == 0:
                continue
            k_lo = rows(l, steps[l] + 1)
            f = stats[l].fnorm
            delta = float(cum_scores[l][k_now[l]] - cum_scores[l][k_lo]) / f if f > 0 else 0.0
            saved = cost(l, k_now[l]) - cost(l, k_lo)
            key = delta if mode == "delta" else delta / max(saved, 1e-30)
            if best_key is None or key < best_key:
                best, best_key = l, key
        if best is None:
            if allow_zero:
                break  # every layer is at zero rows
            allow_zero = True
            continue
        steps[best] += 1
        k_now[best] = rows(best, steps[best])
        spent = sum(cost(l, k_now[l]) for l in stats)  # recomputed: no drift from repeated subtraction
        last_shrunk = best
    out = {l: Allocation(k_now[l] / n[l], k_now[l], int(cum[l][k_now[l]])) if steps[l] else
           _uncapped(n[l], nnz, int(cum[l][k_now[l]])) for l in stats}
    if last_shrunk is not None and spent < total:
        # Refill (beyond the paper): a 2 % chunk of rows can hold many non-zeros on a power-law
        # graph, so the last shrink may undershoot the budget by a lot. Hand the slack back to
        # that layer as extra non-zeros (its row cap returns to the previous step's).
        l = last_shrunk
        k_prev = rows(l, steps[l] - 1)
        extra = int((total - spent) // stats[l].width)
        out[l] = Allocation(k_prev / n[l], k_prev, min(int(cum[l][k_prev]), int(cum[l][k_now[l]]) + extra))
    return out


def _uncapped(rows: int, nnz: int, planned: int) -> Allocation:
    """An allowance that never truncates: every row, every non-zero of ``Â_off``."""
    return Allocation(1.0, rows, nnz, planned)
