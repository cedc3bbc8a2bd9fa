"""Randomized sparse computation: sampled backward SpMM under a layer-wise FLOPs budget."""
from .config import RSCConfig

__all__ = ["RSCConfig"]
