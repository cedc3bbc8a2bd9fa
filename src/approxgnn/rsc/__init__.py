"""Randomized sparse computation (RSC): sampled backward SpMM under a layer-wise FLOPs budget.

* :class:`SampledPropagation` -- the engine: the model's :class:`~approxgnn.nn.Propagation` and
  the trainer's :class:`~approxgnn.nn.Engine` in one object;
* :class:`RSCConfig` (and the named :data:`PRESETS`) -- the knobs.

The pieces -- the sampled product (:mod:`.spmm`), the greedy allocation (:mod:`.budget`), the
schedule (:mod:`.schedule`) and the kernels (:mod:`.kernels`) -- are importable from their modules.
"""
from .config import PRESETS, RSCConfig
from .propagation import SampledPropagation

__all__ = ["PRESETS", "RSCConfig", "SampledPropagation"]
