"""Randomized sparse computation (RSC): sampled backward SpMM under a layer-wise FLOPs budget.

* :class:`SampledPropagation` — the engine, a drop-in :class:`~approxgnn.nn.propagation.Propagation`;
* :class:`SampledSpMM`, :func:`build_slice`, :func:`sampled_backward` — the sampled product;
* :func:`allocate_budget` — greedy layer-wise allocation (pure function of statistics);
* :class:`Schedule` — warm-up, re-tuning, switch to exact, validation guard;
* :class:`RSCConfig` — the knobs.
"""
from .budget import Allocation, LayerStats, allocate_budget, budget_flops
from .config import ALLOCATIONS, SELECTIONS, RSCConfig
from .propagation import LayerSampler, SampledPropagation
from .schedule import Schedule
from .spmm import CSR, SampledSlice, SampledSpMM, build_slice, row_scores, sampled_backward, select_importance, \
    select_topk

__all__ = ["ALLOCATIONS", "SELECTIONS", "Allocation", "CSR", "LayerSampler", "LayerStats", "RSCConfig",
           "SampledPropagation", "SampledSlice", "SampledSpMM", "Schedule", "allocate_budget", "budget_flops",
           "build_slice", "row_scores", "sampled_backward", "select_importance", "select_topk"]
