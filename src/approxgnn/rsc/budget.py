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

The loop is not run one step at a time. Each layer's keys for its successive steps depend on that
layer alone, so the greedy merges ``L`` key sequences by always taking the smallest head (the
lower layer on a tie). That merge visits the steps in the order of a stable sort by the running
maximum of each layer's keys, so one sort of all ``L·⌈1/δ⌉`` candidate steps and a cumulative sum
of their savings give the same allocation as the step loop, in a few tensor operations per layer
(the loop's cost grew as layers × steps of Python scalar operations: seconds for 64 layers).

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
    The work is a few tensor operations per layer plus one sort of all ``L · ⌈1/step⌉`` candidate
    steps, never a Python operation per layer per step.
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    if mode not in ("delta", "delta_per_flop", "uniform"):
        raise ValueError(f"unknown allocation mode {mode!r}")
    if not stats:
        return {}
    layers = list(stats)
    n = [stats[l].num_rows for l in layers]
    nonzero = torch.stack([(stats[l].sorted_scores > 0).sum() for l in layers]).tolist()  # one sync
    if mode == "uniform":
        return _uniform(stats, layers, n, nonzero, nnz, budget)

    # Shrink steps m = 0, 1, ... lower layer l's ratio from its start r0 (fraction of non-zero
    # scores) by `step`, down to r = 0 at m = last_l, which still keeps `min_rows` rows (RSC's k
    # rule). Only when every layer sits there and the budget still is not met may a layer take
    # one more step, to zero rows: the budget is a hard bound.
    last = [int(math.floor(nz / nl / step + 1e-9)) for nz, nl in zip(nonzero, n)]
    width = torch.tensor([stats[l].width for l in layers], dtype=torch.int64)
    m = torch.arange(max(last) + 2, dtype=torch.float64)
    nz_t, n_t = torch.tensor(nonzero, dtype=torch.float64), torch.tensor(n, dtype=torch.float64)
    ratio = (nz_t / n_t)[:, None].sub(m * step).clamp_(min=0.0)  # the same float64 ops as num_rows()
    k = (n_t[:, None] * ratio + 1e-9).floor_().clamp_(min=min_rows).minimum(n_t[:, None]).minimum(nz_t[:, None])
    k = k.long().masked_fill_(m[None, :].long() > torch.tensor(last)[:, None], 0)  # k[l, m]: rows at step m
    kept_nnz = torch.empty_like(k)  # non-zeros of the top k[l, m] rows
    kept_score = torch.empty(k.shape, dtype=torch.float64)  # their summed scores
    for i, l in enumerate(layers):
        s, idx = stats[l], k[i].to(stats[l].cum_nnz.device)
        kept_nnz[i] = s.cum_nnz[idx].cpu()
        cum = torch.cat([s.sorted_scores.new_zeros(1, dtype=torch.float64), torch.cumsum(s.sorted_scores.double(), 0)])
        kept_score[i] = cum[idx].cpu()
    cost = kept_nnz * width[:, None]  # exact integers (FLOPs of the top-k rows' product)

    # Step m -> m+1 of layer l drops Δ = (score mass lost) / F_l and saves cost[m] - cost[m+1].
    fnorm = torch.tensor([stats[l].fnorm for l in layers], dtype=torch.float64)
    delta = torch.where(fnorm[:, None] > 0, (kept_score[:, :-1] - kept_score[:, 1:]) / fnorm[:, None], 0.0)
    saved = cost[:, :-1] - cost[:, 1:]
    key = delta if mode == "delta" else delta / saved.double().clamp(min=1e-30)
    step_no = m[:-1].long()[None, :].expand_as(key)
    last_t = torch.tensor(last)[:, None]
    movable = k[:, :-1] > 0  # a layer at zero rows cannot shrink further
    shrink = movable & (step_no < last_t)  # regular steps
    to_zero = movable & (step_no == last_t)  # the last resort, one per layer

    # The greedy shrinks, at every turn, the layer whose next step has the smallest key (the
    # first layer on a tie). Taking the smallest head of L sequences gives the order of a stable
    # sort by each step's prefix maximum of its layer's keys, so one sort replaces the loop.
    run_max = key.masked_fill(~shrink, -math.inf).cummax(1).values
    order_regular = _stable_order(run_max, shrink)
    order_zero = _stable_order(key, to_zero)
    order = torch.cat([order_regular, order_zero])
    total = budget_flops(budget, nnz, {l: stats[l].width for l in layers})
    spent0 = int(cost[:, 0].sum())
    spent_after = spent0 - torch.cumsum(saved.reshape(-1)[order], 0)  # spent once steps[:j+1] are taken
    taken = 0 if spent0 <= total else int((spent_after > total).sum()) + 1
    taken = min(taken, order.numel())  # every layer at zero rows and still above: all steps taken
    steps = torch.bincount(order[:taken] // key.size(1), minlength=len(layers)).tolist()
    spent = spent0 if taken == 0 else int(spent_after[taken - 1])
    k_now = k.gather(1, torch.tensor(steps)[:, None]).squeeze(1).tolist()
    nnz_now = kept_nnz.gather(1, torch.tensor(steps)[:, None]).squeeze(1).tolist()
    out = {l: Allocation(k_now[i] / n[i], k_now[i], nnz_now[i]) if steps[i] else _uncapped(n[i], nnz, nnz_now[i])
           for i, l in enumerate(layers)}
    if taken and spent < total:
        # Refill (beyond the paper): a 2 % chunk of rows can hold many non-zeros on a power-law
        # graph, so the last shrink may undershoot the budget by a lot. Hand the slack back to
        # that layer as extra non-zeros (its row cap returns to the previous step's).
        i = int(order[taken - 1]) // key.size(1)
        prev = steps[i] - 1
        k_prev, nnz_prev = int(k[i, prev]), int(kept_nnz[i, prev])
        extra = int((total - spent) // stats[layers[i]].width)
        out[layers[i]] = Allocation(k_prev / n[i], k_prev, min(nnz_prev, nnz_now[i] + extra))
    return out


def _stable_order(key: Tensor, valid: Tensor) -> Tensor:
    """Flat indices (row-major into ``key``) of the ``valid`` entries, by ascending key; ties keep
    row-major order (the lower layer first, then the earlier step)."""
    flat = valid.reshape(-1).nonzero().squeeze(1)
    return flat[torch.sort(key.reshape(-1)[flat], stable=True).indices]


def _uniform(stats: dict[int, LayerStats], layers: list[int], n: list[int], nonzero: list[int], nnz: int,
             budget: float) -> dict[int, Allocation]:
    """Every layer the same FLOPs fraction ``C`` of its own product."""
    out = {}
    cap = int(budget * nnz)
    for i, l in enumerate(layers):
        cum = stats[l].cum_nnz
        need = int(cum[nonzero[i]])
        if need <= cap:  # fits: uncapped, whatever rows carry gradient at the next step
            out[l] = _uncapped(n[i], nnz, need)
            continue
        k = max(int(torch.searchsorted(cum, torch.tensor([cap], dtype=cum.dtype, device=cum.device), right=True)) - 1, 0)
        out[l] = Allocation(k / n[i], k, cap)
    return out


def _uncapped(rows: int, nnz: int, planned: int) -> Allocation:
    """An allowance that never truncates: every row, every non-zero of ``Â_off``."""
    return Allocation(1.0, rows, nnz, planned)
