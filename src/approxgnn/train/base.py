"""The base every trainer stands on: the guarded optimiser step, the device, the engine slot.

A trainer (full-batch or mini-batch) implements :meth:`Trainer.train_epoch` and
:meth:`Trainer.evaluate`; :func:`~.loop.fit` does the rest. Trainers drive their engine through the
one :class:`~approxgnn.nn.engine.Engine` protocol held in :attr:`Trainer.engine`, and take every
optimiser step through :meth:`Trainer.step`, which refuses NaN/inf before the parameters change.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..datasets import Dataset
from ..graph import CSRGraph
from ..nn.engine import Engine
from ..state import check_version
from .checkpoint import save_checkpoint
from .config import TrainConfig


class TrainingDiverged(RuntimeError):
    """Loss or gradients became NaN/inf; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dataset_graph(data: Dataset, *, in_memory: bool = False) -> CSRGraph:
    """The clean symmetric graph of ``data``: an on-disk layout's CSR as it is (memory-mapped; with
    ``in_memory``, copied into RAM with int64 ids, as full-batch operators need), else built from
    ``edge_index``."""
    if data.csr is None:
        return CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    rowptr, col = data.csr
    if in_memory:
        return CSRGraph.from_arrays(np.array(rowptr, np.int64), np.array(col, np.int64), data.num_nodes)
    return CSRGraph.from_arrays(rowptr, col, data.num_nodes)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Timings on CUDA need a sync before reading the clock; elsewhere a no-op."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def check_finite(what: str, value: torch.Tensor) -> None:
    """Raise :class:`TrainingDiverged` when the scalar ``value`` is NaN/inf (one process's guard)."""
    if not torch.isfinite(value):
        raise TrainingDiverged(f"{what} became {float(value)}")


def backward_and_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      guard: Callable[[str, torch.Tensor], None] = check_finite) -> float:
    """``loss.backward()`` then ``optimizer.step()``, refusing NaN/inf loss or gradients.

    The checks come before the step, so the parameters (and any later checkpoint) stay finite.
    ``guard(what, value)`` raises on a bad value; a data-parallel trainer passes one that decides
    for every rank at once (:meth:`Trainer.finite_guard`). Returns the total gradient norm
    ``‖(∂L/∂θ_1, …, ∂L/∂θ_P)‖₂``.
    """
    guard("loss", loss.detach())
    loss.backward()
    grads = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    norm = torch.stack(grads).norm() if grads else torch.zeros(())
    guard("gradient norm", norm)
    optimizer.step()
    return float(norm)


class Trainer(ABC):
    """What :func:`~.loop.fit` needs from an engine family's trainer.

    Subclasses set ``cfg``, ``model``, ``optimizer``, ``scheduler`` (or None), ``metric``,
    ``device`` and ``engine`` (an :class:`Engine`; the exact engine is ``Engine()`` itself).
    """

    STATE_VERSION = 1

    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped by fit() once per epoch
    metric: str
    device: torch.device
    engine: Engine

    @abstractmethod
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of optimisation; returns at least ``loss`` and ``step_time_s``. Calls
        ``engine.on_epoch_start`` first (inside the timed epoch: the engine's schedule is work)."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Exact evaluation: the metric on ``train``, ``val`` and ``test``."""

    def step(self, loss: torch.Tensor) -> float:
        """The one optimiser step: clear gradients, then the guarded backward and step
        (:func:`backward_and_step`, guarded by :meth:`finite_guard`). Returns the gradient norm."""
        self.optimizer.zero_grad(set_to_none=True)
        return backward_and_step(loss, self.model, self.optimizer, self.finite_guard)

    def finite_guard(self, what: str, value: torch.Tensor) -> None:
        """Stop on a NaN/inf ``value``; data-parallel trainers make this decision collective."""
        check_finite(what, value)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's outputs (rank 0; always, in one process)."""
        return True

    def write_checkpoint(self, run_dir: Path, state: dict[str, Any]) -> None:
        """Write ``state`` (model, optimiser, loop, trainer, RNGs) as the run's checkpoint."""
        save_checkpoint(run_dir, state)

    def stats(self) -> dict[str, Any]:
        """Figures for the progress bar and ``result["engine_stats"]`` (default: the engine's)."""
        return self.engine.stats()

    def state_dict(self) -> dict[str, Any]:
        """The trainer's resumable state besides model, optimiser and RNGs: the engine's, plus
        whatever :meth:`extra_state` adds."""
        return {"version": self.STATE_VERSION, "engine": self.engine.state_dict(), **self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, self.STATE_VERSION, "trainer",
                      hint="checkpoints from before the engine refactor cannot be resumed")
        self.engine.load_state_dict(state["engine"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Trainer-owned state beyond the engine (e.g. iteration counters); default none."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def run_info(self) -> dict[str, Any]:
        """Static facts recorded in the result (graph size, device, ...)."""
        return {}
