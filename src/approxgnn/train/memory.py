"""A quick memory estimate, checked before training starts, so a run that cannot fit fails in
seconds with the flag that fixes it instead of being killed an hour in."""
from __future__ import annotations

import numpy as np

from ..datasets import Dataset
from .config import FULL_BATCH_ENGINES, TrainConfig

GIB = 1 << 30


def available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (None where the platform has none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate_bytes(cfg: TrainConfig, data: Dataset) -> dict[str, int]:
    """Rough peak bytes by part. Full batch: features, graph, activations kept for backward
    (≈ 4 tensors of ``N × width`` per layer). Mini-batch: features (unless on disk) and caches."""
    n, f, nnz = data.num_nodes, data.num_features, 2 * data.num_edges
    on_disk = isinstance(data.x, np.memmap) or (cfg.engine not in FULL_BATCH_ENGINES and cfg.minibatch.features_on_disk)
    parts = {"features": 0 if on_disk else n * f * 4,
             "graph": nnz * (8 + 4) * (2 if cfg.model == "sage" else 1) + n * 16}
    if cfg.engine in FULL_BATCH_ENGINES:
        width = max(cfg.hidden, data.num_classes)
        parts["features"] = n * f * 4 * 2  # the float32 copy plus dropout's mask/output
        parts["activations"] = 4 * cfg.layers * n * width * 4
    else:
        parts["caches"] = int(cfg.minibatch.cache_mb * (1 << 20))
    return parts


def check_memory(cfg: TrainConfig, data: Dataset, available: int | None = None) -> None:
    """Raise ``MemoryError`` naming the fix when the estimate exceeds the available memory."""
    if cfg.device not in ("auto", "cpu"):
        return  # device memory is the limit there; torch reports it precisely
    available = available_bytes() if available is None else available
    if available is None:
        return
    parts = estimate_bytes(cfg, data)
    need = sum(parts.values())
    if need <= available:
        return
    detail = ", ".join(f"{k} {v / GIB:.1f} GiB" for k, v in parts.items() if v)
    if cfg.engine in FULL_BATCH_ENGINES:
        fix = ("full-batch training keeps every layer's activations; use --engine refresh (mini-batch) "
               "with --features-on-disk, or a smaller --hidden")
    elif parts["features"] > parts["caches"]:
        fix = "pass --features-on-disk to read features from a memory-mapped file"
    else:
        fix = "lower --cache-mb"
    raise MemoryError(f"this run needs about {need / GIB:.1f} GiB ({detail}) but only "
                      f"{available / GIB:.1f} GiB is available: {fix}")
