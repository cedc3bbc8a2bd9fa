"""Learning-rate schedules over the planned epochs, shared by the full-batch and mini-batch trainers.

Both step once per epoch, so a schedule means the same thing whatever the batch count:
``constant`` keeps ``lr``; ``cosine`` anneals it to zero over ``epochs``,
``lr_e = lr · ½ (1 + cos(π e / epochs))`` for epoch ``e = 0 … epochs − 1`` (torch's
``CosineAnnealingLR`` with ``T_max = epochs``, ``eta_min = 0``, in closed form, so each value is
the formula's and a resumed run continues from ``last_epoch`` in the checkpoint).
"""
from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "cosine")


def cosine_factor(epoch: int, epochs: int) -> float:
    """The fraction of the base learning rate that epoch ``epoch`` of ``epochs`` trains with."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer,
                    epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The scheduler of schedule ``name`` (None for ``constant``: nothing to step or checkpoint)."""
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cosine_factor(e, epochs))
    raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {name!r}")
