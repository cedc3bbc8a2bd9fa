"""The entry points: load a run's data, build its trainer, run it (what ``approxgnn train`` does)."""
from __future__ import annotations

from typing import Any

from ..datasets import Dataset, DatasetError, load_dataset
from ..threads import start_numba_pool
from .base import Trainer
from .checkpoint import seed_everything
from .config import FULL_BATCH_ENGINES, TrainConfig
from .loop import fit
from .memory import check_memory

__all__ = ["load_data", "as_dataset", "build_trainer", "run"]


def load_data(cfg: TrainConfig) -> Dataset:
    """``cfg.dataset`` by name or path; a ``.pt`` file holding a saved PyG ``Data`` needs torch_geometric."""
    if str(cfg.dataset).endswith(".pt"):
        return _pyg_data().load_pt(cfg.dataset, split=cfg.split)
    return load_dataset(cfg.dataset, root=cfg.data_root, split=cfg.split, seed=cfg.seed)


def _pyg_data() -> Any:
    try:
        from ..pyg import data
    except ImportError as e:
        raise DatasetError(f"{e} (needed to read a PyG Data)") from None
    return data


def as_dataset(data: Any, cfg: TrainConfig) -> Dataset:
    """A :class:`Dataset` as is; a PyG ``Data`` (or one-graph PyG dataset) through :func:`~approxgnn.pyg.from_pyg`,
    named ``cfg.dataset`` and split by ``cfg.split``."""
    if isinstance(data, Dataset):
        return data
    return _pyg_data().from_pyg(data, name=cfg.dataset, split=cfg.split)


def build_trainer(cfg: TrainConfig, data: Dataset) -> Trainer:
    """Seed every RNG, then build the engine's trainer (model initialisation draws from the seed)."""
    seed_everything(cfg.seed)
    start_numba_pool()
    if cfg.engine in FULL_BATCH_ENGINES:
        from .full_batch import FullBatchTrainer

        return FullBatchTrainer(cfg, data)
    from .minibatch import MiniBatchTrainer

    return MiniBatchTrainer(cfg, data)


def run(cfg: TrainConfig, data: Any = None, *, resume_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the data (unless given), train, and return the result dict (also written to ``cfg.out``).

    ``data`` is a :class:`Dataset`, a PyG ``Data`` (``x``, ``y``, ``edge_index`` or ``adj_t``, the
    three masks) or None to load ``cfg.dataset``.
    """
    data = load_data(cfg) if data is None else as_dataset(data, cfg)
    check_memory(cfg, data)
    return fit(build_trainer(cfg, data), resume_state=resume_state)
