"""Historical-embedding engine: neighbour sampler, feature store and history cache."""
from .config import RefreshConfig

__all__ = ["RefreshConfig"]
