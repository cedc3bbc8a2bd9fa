"""The rank context a trainer is given: where it runs among its peers, and the collectives.

A trainer never asks whether it is distributed; it is handed a context and calls its collectives
where its loop needs them (:class:`~.minibatch.MiniBatchTrainer`). :class:`LocalContext` is one
process, rank 0 of 1, whose collectives return this rank's own values; its data-parallel peer is
:class:`~.distributed.DistContext`, which has the same methods over a ``torch.distributed`` group.
Every rank must make the same sequence of collective calls, so they stay in the loop's code, in
plain sight, and never inside a helper that one rank might call once more than another.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["LocalContext"]


class LocalContext:
    """One process: rank 0 of a world of 1, on ``device``; each collective is the identity."""

    rank, world_size, local_rank, local_world_size = 0, 1, 0, 1
    backend: str | None = None
    threads: int | None = None
    distributed = False  # no peers: the feature store need not be a file every rank can map

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def is_main(self) -> bool:
        return True

    def all_values(self, value: float) -> list[float]:
        """Every rank's ``value`` in rank order: this one's."""
        return [value]

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def broadcast_tensors(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        pass

    def barrier(self) -> None:
        pass

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        if rows.size(0) != total:
            raise RuntimeError(f"gathered {rows.size(0)} rows, expected {total}")
        return rows
