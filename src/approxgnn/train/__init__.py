"""Training: configuration, the trainers, the epoch loop, checkpoints and results.

:func:`run` trains a :class:`TrainConfig` and returns the result (``approxgnn train``);
:func:`build_trainer` and :func:`fit` do the same in two steps, and :func:`read_checkpoint`
gives what ``fit(..., resume_state=...)`` continues from.
"""
from __future__ import annotations

from .api import as_dataset, build_trainer, load_data, run
from .base import Trainer, TrainingDiverged
from .config import ENGINES, TrainConfig
from .loop import fit, read_checkpoint, time_to_reach, time_to_within

__all__ = ["TrainConfig", "ENGINES", "Trainer", "TrainingDiverged", "as_dataset", "build_trainer", "fit", "load_data",
           "read_checkpoint", "run", "time_to_reach", "time_to_within"]
