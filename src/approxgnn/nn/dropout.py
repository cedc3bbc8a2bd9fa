"""Dropout whose mask is a hash of (seed, element index), so it is cheap and never stored.

``F.dropout`` on CPU draws one Bernoulli float per element: on a 2-core machine that is 3.8 s
for a 1M×256 activation, more than the layer's SpMM. Here each element keeps its value iff
16 bits of ``splitmix64(seed, index // 4)`` are at least ``round(p · 2^16)``, computed in a
parallel numba loop: forward+backward ~5x cheaper (``benchmarks/dropout.py``). The backward
recomputes the same mask from the seed instead of saving it, so no ``N×d`` mask tensor lives
between forward and backward.

The seed is drawn from torch's default generator, so ``torch.manual_seed`` and the RNG state
kept in checkpoints still make runs repeatable. Non-CPU tensors use ``F.dropout`` (fast on GPU).
"""
from __future__ import annotations

import numba as _nb
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._hash import splitmix64

_BITS = 16
_LANES = 64 // _BITS  # mask decisions per hash
_BLOCK = 4096  # hash groups per parallel work item


@_nb.njit(cache=True, parallel=True, nogil=True)
def _masked_scale_nb(x, out, seed, threshold, scale):  # pragma: no cover - jitted
    # ``scale`` has x's dtype: a float64 scalar would promote every product (6x slower).
    n_groups = (x.shape[0] + _LANES - 1) // _LANES
    n_blocks = (n_groups + _BLOCK - 1) // _BLOCK
    thr = np.uint64(threshold)
    lane_mask = np.uint64((1 << _BITS) - 1)
    zero = scale * 0
    for b in _nb.prange(n_blocks):
        for q in range(b * _BLOCK, min(b * _BLOCK + _BLOCK, n_groups)):
            h = splitmix64(np.uint64(seed) ^ np.uint64(q))
            g = _LANES * q
            if g + _LANES <= x.shape[0]:  # unrolled: one hash gives the four 16-bit lanes
                out[g] = x[g] * (scale if (h & lane_mask) >= thr else zero)
                out[g + 1] = x[g + 1] * (scale if ((h >> np.uint64(16)) & lane_mask) >= thr else zero)
                out[g + 2] = x[g + 2] * (scale if ((h >> np.uint64(32)) & lane_mask) >= thr else zero)
                out[g + 3] = x[g + 3] * (scale if (h >> np.uint64(48)) >= thr else zero)
            else:
                for lane in range(x.shape[0] - g):
                    bits = (h >> np.uint64(_BITS * lane)) & lane_mask
                    out[g + lane] = x[g + lane] * (scale if bits >= thr else zero)


def _masked_scale(x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    flat = x.view(-1).numpy()
    _masked_scale_nb(flat, out.view(-1).numpy(), seed, threshold, flat.dtype.type(scale))
    return out


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:  # type: ignore[override]
        ctx.params = (seed, threshold, scale)
        return _masked_scale(x, seed, threshold, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _masked_scale(grad, *ctx.params), None, None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    r"""Inverted dropout: :math:`y = x \cdot m / (1-p')`, :math:`m_i \sim \text{Bernoulli}(1-p')`.

    ``p' = round(p·2^16)/2^16`` is ``p`` to 16 bits. Same contract as ``F.dropout``; any shape.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)):
        return F.dropout(x, p, training)
    threshold = round(p * (1 << _BITS))
    scale = float((1 << _BITS) / ((1 << _BITS) - threshold))
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return _HashDropout.apply(x, seed, threshold, scale)
