"""Models, the propagation interface they call, and the engine protocol trainers drive."""
from .engine import Engine
from .models import GCN, GCNII, MODELS, SAGE, FirstHop, build_model
from .propagation import ExactPropagation, Propagation

__all__ = ["GCN", "GCNII", "SAGE", "MODELS", "build_model", "FirstHop", "Propagation", "ExactPropagation", "Engine"]
