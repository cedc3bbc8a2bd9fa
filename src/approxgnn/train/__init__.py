"""Training loops, metrics, checkpoints and results."""
from __future__ import annotations

from typing import Any

from ..datasets import Dataset, load_dataset
from .checkpoint import seed_everything
from .config import ENGINES, FULL_BATCH_ENGINES, TrainConfig
from .memory import check_memory
from .base import Trainer, TrainingDiverged
from .loop import check_out_dir, fit, read_checkpoint, time_to_reach


def load_data(cfg: TrainConfig) -> Dataset:
    return load_dataset(cfg.dataset, root=cfg.data_root, split=cfg.split, seed=cfg.seed)


def build_trainer(cfg: TrainConfig, data: Dataset) -> Trainer:
    """Seed every RNG, then build the engine's trainer (model initialisation draws from the seed)."""
    seed_everything(cfg.seed)
    if cfg.engine in FULL_BATCH_ENGINES:
        from .full_batch import FullBatchTrainer

        return FullBatchTrainer(cfg, data)
    from .minibatch import MiniBatchTrainer

    return MiniBatchTrainer(cfg, data)


def run(cfg: TrainConfig, data: Dataset | None = None, *, resume_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the data (unless given), train, and return the result dict (also written to ``cfg.out``)."""
    data = load_data(cfg) if data is None else data
    check_memory(cfg, data)
    return fit(build_trainer(cfg, data), resume_state=resume_state)


__all__ = ["TrainConfig", "ENGINES", "Trainer", "TrainingDiverged", "build_trainer", "check_out_dir", "fit",
           "load_data", "read_checkpoint", "run", "time_to_reach"]
