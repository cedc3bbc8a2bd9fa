"""Models and the propagation interface engines implement."""
from .models import GCN, GCNII, MODELS, SAGE, build_model
from .propagation import ExactPropagation, Propagation

__all__ = ["GCN", "GCNII", "SAGE", "MODELS", "build_model", "Propagation", "ExactPropagation"]
