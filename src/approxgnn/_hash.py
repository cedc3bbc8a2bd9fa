"""splitmix64, the one counter-based hash of the library (dropout masks, sampler draws, batch keys).

Steele, Lea & Flood's finaliser of SplitMix64 (the same constants as ``java.util.SplittableRandom``)::

    mix64(z)      = z3,  z1 = (z ^ z >> 30) · 0xBF58476D1CE4E5B9,
                         z2 = (z1 ^ z1 >> 27) · 0x94D049BB133111EB,  z3 = z2 ^ z2 >> 31
    splitmix64(z) = mix64(z + γ),  γ = 0x9E3779B97F4A7C15 (the golden-ratio increment)

all modulo 2^64 on ``uint64``. Counter ``i`` of stream ``s`` is ``splitmix64(s + i·γ)``, so a draw is
a pure function of its inputs, whatever thread computes it. The jitted functions are inlined into
the numba kernels that call them; :func:`mix_key` is the Python-side key derivation, made once per
batch, which calls the same jitted finaliser.
"""
from __future__ import annotations

import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_KEY_INIT = 0x243F6A8885A308D3  # π's first hex digits: the chain's starting state


@njit(inline="always", cache=True)
def mix64(z: np.uint64) -> np.uint64:  # pragma: no cover - jitted
    """The splitmix64 finaliser of a ``uint64`` state (module docstring)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(inline="always", cache=True)
def splitmix64(z: np.uint64) -> np.uint64:  # pragma: no cover - jitted
    """``mix64(z + γ)``: one step of the generator from state ``z``."""
    return mix64(z + GOLDEN)


@njit(cache=True)
def _absorb(z: np.uint64, part: np.uint64) -> np.uint64:  # pragma: no cover - jitted
    return mix64(z + part * GOLDEN + GOLDEN)


def mix_key(*parts: int) -> int:
    """Hash a tuple of integers to one ``uint64`` key: ``z ← mix64(z + (p+1)·γ)`` per part.

    Parts are taken modulo 2^64 (negative ones two's-complement). Called a few times per batch,
    so the call overhead into the jitted finaliser does not matter.
    """
    z = np.uint64(_KEY_INIT)
    for p in parts:
        # numba boxes a uint64 result as a Python int, which it would type as int64 on the way
        # back in (and mix with float arithmetic): re-wrap it every time.
        z = np.uint64(_absorb(z, np.uint64(p & _MASK64)))
    return int(z)
