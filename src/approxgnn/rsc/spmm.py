r"""The sampled-backward SpMM: exact forward, column-row-sampled backward.

Forward (exact):   ``Z = Â_off X + diag ⊙ X``                              ``X, Z: [N, d]``

Backward (sampled): with ``G = ∂L/∂Z`` and S a set of rows of ``Â_off``,

.. math::
    \frac{\partial L}{\partial X} = \hat A^\top G \approx \sum_{i \in S} s_i\, \hat A_{\mathrm{off}}[i,:]^\top G[i,:]
    \;+\; \mathrm{diag} \odot G,

where ``s_i = 1`` for deterministic top-k (biased, the paper's rule), ``s_i = 1/π_i`` for
cost-optimal Poisson sampling (unbiased: rows with ``π_i = 1`` are a deterministic top part, the
rest are drawn independently, see :func:`inclusion_probabilities`), and ``s_i = c_i / (k p_i)`` for
importance sampling with replacement (unbiased ablation). The sum is ``T @ G`` with ``T = (diag(s) Â_off[S,:])ᵀ``,
the *transposed slice*, built once per resample (:class:`SampledSlice`) and reused.

Selection scores: ``score_i = ‖Â_off[i,:]‖₂ · ‖G[i,:]‖₂`` (NaN/inf → 0). Rows with zero gradient
score 0 and are never kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import CSRGraph
from ..ops import spmm_diag


@dataclass
class SampledSlice:
    """A cached sample: kept rows ``index`` (sorted ``[k]``), optional ``scale [k]``, and
    ``t = (diag(scale) Â_off[index,:])ᵀ`` (a :class:`~approxgnn.graph.CSRGraph` ``[N, N]`` with
    global column ids, :meth:`~approxgnn.graph.CSRGraph.transposed_rows`)."""

    index: Tensor
    scale: Tensor | None
    t: CSRGraph

    @property
    def rows(self) -> int:
        return self.index.numel()


def build_slice(adj: CSRGraph, index: Tensor, scale: Tensor | None = None) -> SampledSlice:
    """Gather rows ``index`` of ``adj`` (rowptr arithmetic) and transpose them once."""
    return SampledSlice(index, scale, adj.transposed_rows(index, scale))


def sampled_backward(slc: SampledSlice, g: Tensor, diag: Tensor | None, out: Tensor | None = None) -> Tensor:
    """``Σ_{i∈S} s_i Â_off[i,:]ᵀ G[i,:] + diag ⊙ G`` into ``out`` (allocated if ``None``); ``g: [N, d]``."""
    return spmm_diag(slc.t, g.contiguous(), diag, out)


def row_scores(row_norm: Tensor, g: Tensor) -> Tensor:
    """``‖Â[i,:]‖₂ · ‖G[i,:]‖₂`` per row ``[N]``; NaN and inf become 0 (as in RSC)."""
    s = row_norm.to(g.dtype) * torch.linalg.vector_norm(g, dim=1)
    return torch.nan_to_num_(s, nan=0.0, posinf=0.0, neginf=0.0)


def num_rows(n: int, ratio: float, min_rows: int = 10) -> int:
    """RSC's row count ``k = min(max(int(N·ratio), min_rows), N)`` (``ratio ≥ 0``)."""
    return min(max(int(n * ratio + 1e-9), min_rows), n)


def cumulative_nnz(order: Tensor, degree: Tensor) -> Tensor:
    """``cum[k]`` = non-zeros of rows ``order[:k]``, int64 ``[N+1]``."""
    cum = torch.zeros(order.numel() + 1, dtype=torch.int64, device=order.device)
    torch.cumsum(degree[order], 0, out=cum[1:])
    return cum


def select_topk(sorted_scores: Tensor, order: Tensor, degree: Tensor, max_nnz: int, max_rows: int | None = None,
                cum: Tensor | None = None) -> Tensor:
    """Rows in decreasing score order while their non-zeros fit in ``max_nnz``; returned sorted.

    ``sorted_scores``/``order``: the scores sorted descending and the row ids in that order;
    ``cum``: :func:`cumulative_nnz` of ``order`` if already at hand. Zero scores are never kept.
    The FLOPs allowance, not a row count, is what is hit: on power-law graphs the order moves
    between low-degree rows and hubs during training, and a row count fixed at allocation time
    would then keep far fewer (or more) non-zeros than budgeted. ``max_rows`` optionally caps
    the row count as well (RSC's ``k``).
    """
    k = int((sorted_scores > 0).sum())
    if max_rows is not None:
        k = min(k, max_rows)
    if k == 0:
        return order[:0]
    if cum is None:
        cum = cumulative_nnz(order[:k], degree)
    limit = torch.tensor([max_nnz], dtype=cum.dtype, device=cum.device)
    k = min(k, int(torch.searchsorted(cum[1:k + 1], limit, right=True)))
    return torch.sort(order[:k]).values


def select_importance(scores: Tensor, degree: Tensor, max_nnz: int,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""Unbiased importance sampling (ablation): draw rows with ``p_i ∝ score_i`` with replacement and
    weight row i by ``c_i / (k p_i)`` (``c_i`` draws of it among ``k``).

    About twice the draws that fill ``max_nnz`` are made (expected non-zeros per draw
    ``Σ p_i deg_i``); ``k`` is the longest prefix of draws whose *distinct* rows stay within
    ``max_nnz`` non-zeros, so the FLOPs budget holds exactly (the data-dependent stopping makes
    the estimator unbiased only up to that truncation). Returns sorted rows and their scales.
    """
    total = scores.sum()
    empty = scores.new_zeros(0, dtype=torch.int64), scores.new_zeros(0)
    if max_nnz <= 0 or not bool(total > 0):
        return empty
    p = scores / total
    per_draw = float((p * degree.to(p.dtype)).sum())
    n_draws = min(int(2 * max_nnz / max(per_draw, 1e-12)) + 16, 4 * scores.numel() + 16)
    draws = torch.multinomial(p, n_draws, replacement=True, generator=generator)
    # Cost of the prefix = non-zeros of the distinct rows seen so far.
    uniq, inv = torch.unique(draws, return_inverse=True)
    first = torch.full((uniq.numel(),), draws.numel(), dtype=torch.int64, device=draws.device)
    first.scatter_reduce_(0, inv, torch.arange(draws.numel(), device=draws.device), reduce="amin")
    new_cost = torch.zeros(draws.numel(), dtype=degree.dtype, device=draws.device)
    new_cost[first] = degree[uniq]
    cum = torch.cumsum(new_cost, 0)
    k = int(torch.searchsorted(cum, torch.tensor([max_nnz], device=cum.device, dtype=cum.dtype), right=True))
    if k == 0:
        return empty
    rows, counts = torch.unique(draws[:k], return_counts=True)  # sorted
    scale = counts.to(p.dtype) / (k * p[rows])
    return rows, scale


def inclusion_probabilities(scores: Tensor, cost: Tensor, budget: float) -> Tensor:
    r"""Inclusion probabilities ``π [N]`` of the minimum-variance unbiased row sample whose
    expected cost is ``budget``.

    Keeping row ``i`` independently with probability ``π_i`` and scaling it by ``1/π_i`` gives an
    unbiased estimate of ``Â_offᵀ G`` with error ``E‖·‖_F² = Σ_i (1/π_i - 1) s_i²`` (``s_i`` the
    row score, the norm of row ``i``'s rank-one term). Minimising it subject to
    ``Σ_i π_i c_i = budget`` (``c_i`` the row's non-zeros) gives

    .. math:: \pi_i = \min\big(1,\ \mu\, s_i / \sqrt{c_i}\big),

    with ``μ`` set by the budget: the rows with the largest ``s_i/√c_i`` are kept for certain (a
    top-k part), the rest are sampled in proportion to that ratio. Solved exactly in one sort:
    with ``t`` sorted descending, capping the first ``m`` rows gives
    ``μ_m = (budget - Σ_{i<m} c_i) / Σ_{i≥m} t_i c_i``, and the answer is the first ``m`` with
    ``μ_m t_m ≤ 1``. Rows with zero score or zero cost get ``π = 0``.
    """
    cost = cost.to(scores.dtype)
    t = torch.where((scores > 0) & (cost > 0), scores / cost.clamp_min(1).sqrt(), scores.new_zeros(()))
    live = t > 0
    pi = torch.zeros_like(scores)
    if budget <= 0 or not bool(live.any()):
        return pi
    if float(cost[live].sum()) <= budget:
        return live.to(scores.dtype)
    t_sorted, order = torch.sort(t, descending=True)
    m_live = int(live.sum())
    t_sorted, order = t_sorted[:m_live], order[:m_live]
    c_sorted = cost[order]
    capped_cost = torch.cumsum(c_sorted, 0) - c_sorted  # Σ_{i<m} c_i
    tail = torch.flip(torch.cumsum(torch.flip(t_sorted * c_sorted, (0,)), 0), (0,))  # Σ_{i≥m} t_i c_i
    mu = (budget - capped_cost) / tail
    ok = (mu * t_sorted <= 1.0) & (mu > 0)
    m = int(torch.argmax(ok.to(torch.int8))) if bool(ok.any()) else m_live - 1
    pi[order] = torch.clamp(mu[m] * t_sorted, max=1.0)
    return pi


def select_poisson(scores: Tensor, degree: Tensor, max_nnz: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rows kept independently with the cost-optimal ``π`` (:func:`inclusion_probabilities`,
    expected non-zeros ``max_nnz``), scaled by ``1/π``. Returns sorted rows and their scales."""
    pi = inclusion_probabilities(scores, degree, float(max_nnz))
    u = torch.rand(pi.shape, generator=generator, device=pi.device, dtype=pi.dtype)
    rows = torch.nonzero(u < pi).flatten()  # π = 1 always passes (u < 1); π = 0 never
    return rows, 1.0 / pi[rows]


class SampledSpMM(torch.autograd.Function):
    """``op.forward(x)`` exactly; the backward is delegated to ``sampler.backward(g)``.

    ``sampler`` is a per-layer object (see :class:`approxgnn.rsc.propagation.LayerSampler`) that
    decides, at backward time, whether to resample, reuse its cached slice, or run exactly.
    """

    @staticmethod
    def forward(ctx, x: Tensor, op, sampler) -> Tensor:  # type: ignore[override]
        ctx.sampler = sampler
        return op.forward(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return ctx.sampler.backward(g.contiguous()), None, None
