"""Randomized sparse computation (RSC): sampled backward SpMM under a layer-wise FLOPs budget.

* :class:`SampledPropagation` -- the engine: the model's :class:`~approxgnn.nn.Propagation` and
  the trainer's :class:`~approxgnn.nn.Engine` in one object;
* :class:`RSCConfig` (and the named :data:`PRESETS`) -- the knobs;
* :class:`RSCProfile` / :class:`LayerProfile` -- what :meth:`SampledPropagation.profile` reports
  (the profiling hook benchmarks and tests read).

The pieces -- the sampled product (:mod:`.spmm`), the greedy allocation (:mod:`.budget`) and the
schedule (:mod:`.schedule`) -- are importable from their modules; the CSR kernels they run on are
the library's one kernel module, :mod:`approxgnn.csr_kernels`, behind :func:`approxgnn.ops.spmm_diag`.
"""
from .config import PRESETS, RSCConfig
from .profile import LayerProfile, RSCProfile
from .propagation import SampledPropagation

__all__ = ["PRESETS", "RSCConfig", "SampledPropagation", "RSCProfile", "LayerProfile"]
