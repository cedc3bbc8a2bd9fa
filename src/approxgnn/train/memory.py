"""The memory plan, checked before training starts: a run that cannot fit stops in seconds with
the flag that fixes it, instead of being killed by the OOM killer an hour in.

The memory a run may use is the smaller of the machine's ``MemAvailable`` and what the process's
memory cgroup still allows (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, of its cgroup and
every ancestor: limit − usage + the inactive file pages the kernel would reclaim first). The plan
adds up, by part:

* full batch: the features twice (the float32 copy, dropout's output), the graph, the activations
  kept for backward (≈ 4 tensors of ``N × width`` per layer);
* mini-batch: the features unless they are on disk; the graph (memory-mapped from an on-disk
  layout, but read at random by the sampler, so it should stay in memory); per-node arrays
  (degrees, relabel map, labels, masks: 32 bytes a node); the precomputed first hop's table where
  ``X`` is in RAM; the cache budget ``--cache-mb``; the input rows of a batch,
  ``B · (1 + f₁ + f₁f₂ + …)`` capped at ``N`` (with the first hop: one hop fewer, as wide as
  the rows layer 0 reads), twice with prefetching and once more where a feature cache merges
  them; the activations a batch keeps for backward (:func:`batch_activation_bytes`); the
  look-ahead's window (``K`` batches' input ids, 8 bytes each, twice: ids and drawn samples);
  exact evaluation's two ``[N, max(hidden, C)]`` layer outputs, or with ``--eval-fanouts`` what
  one sampled batch's rows (twice: prefetched) and activations hold beyond a training batch's.

The look-ahead cache's buffer is part of ``--cache-mb`` (``--lookahead-share`` of it). When
evaluation's layers do not fit beside training, :func:`evaluation_plan` has them written to disk
and, when the feature file does not fit either, the features read chunk by chunk through the store
(:func:`~approxgnn.minibatch.layerwise_inference`'s ``spill_dir`` and ``stream``); evaluation then
needs a chunk's rows only (:func:`bounded_evaluation_bytes`), and that is what the plan counts.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..minibatch.config import DEFAULT_LOOKAHEAD
from ..precompute import first_hop_norm, table_width
from .config import FULL_BATCH_ENGINES, TrainConfig

GIB = 1 << 30
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as about 2^63


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _read_int(path: Path) -> int | None:
    """An integer file of the cgroup tree; None when absent, unreadable or ``max`` (no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    value = int(text)
    return None if value >= _NO_LIMIT else value


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_headroom(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's memory cgroup still allows: ``limit − usage + inactive_file``, the
    smallest over its cgroup and the ancestors that set a limit (v2 and v1); None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts), -1, -1):  # the cgroup, then its ancestors up to the mount's root
            d = base.joinpath(*parts[:depth])
            limit = _read_int(d / files[0])
            if limit is None:
                continue
            room = limit - (_read_int(d / files[1]) or 0) + _stat(d / "memory.stat", files[2])
            best = room if best is None else min(best, room)
    return best


def available_bytes() -> int | None:
    """The memory this run may use: the smaller of ``MemAvailable`` and the cgroup's headroom
    (None where neither is known)."""
    known = [b for b in (_meminfo_available(), cgroup_headroom()) if b is not None]
    return min(known) if known else None


def _graph_bytes(cfg: TrainConfig, data: Dataset) -> int:
    if data.csr is not None:  # the layout's CSR as stored (int32 ids), plus the row pointers
        rowptr, col = data.csr
        return int(rowptr.nbytes) + int(col.nbytes) * (1 if cfg.engine not in FULL_BATCH_ENGINES else 2)
    nnz, n = 2 * data.num_edges, data.num_nodes
    return nnz * (8 + 4) * (2 if cfg.model == "sage" else 1) + n * 16


def batch_input_rows(fanouts: list[int], batch_size: int, num_nodes: int) -> int:
    """An upper bound on a batch's input rows: ``B · (1 + f₁ + f₁f₂ + …)`` (``-1``: every node), at most ``N``."""
    rows, frontier = batch_size, batch_size
    for f in fanouts:
        frontier = num_nodes if f < 0 else frontier * f
        rows += frontier
        if rows >= num_nodes:
            return num_nodes
    return min(rows, num_nodes)


def batch_activation_bytes(fanouts: list[int], batch_size: int, num_nodes: int, in_width: int, width: int) -> int:
    """An upper bound on what a batch's forward keeps for backward, in bytes.

    Layer ``l`` of ``L = len(fanouts)`` computes the rows of the hops above its input,
    ``T_l = batch_input_rows(fanouts[:L-1-l])``, and keeps per row its aggregated input (``in_width``
    at layer 0, ``width`` above) and four ``width``-wide tensors (linear output, batch norm,
    activation, dropout): ``Σ_l T_l · (in_l + 4 · width) · 4``. With the precomputed first hop
    layer 0's targets are the batch's input rows and ``in_width`` is the joined row's width."""
    layers = len(fanouts)
    return sum(batch_input_rows(fanouts[:layers - 1 - l], batch_size, num_nodes)
               * ((in_width if l == 0 else width) + 4 * width) * 4 for l in range(layers))


def features_on_disk(cfg: TrainConfig, data: Dataset) -> bool:
    """Whether the run reads its features from disk (a layout, ``--features-path``, ``--features-on-disk``)."""
    return isinstance(data.x, np.memmap) or (cfg.engine not in FULL_BATCH_ENGINES and bool(
        cfg.minibatch.features_on_disk or cfg.minibatch.features_path or cfg.minibatch.feature_store == "disk"))


def bounded_evaluation_bytes(cfg: TrainConfig, data: Dataset) -> int:
    """Evaluation's memory when it streams and spills: a chunk of ``eval_batch_size`` targets with
    its full-neighbourhood sources (twice the mean degree, for skew), at the widest of features and
    layers, the rows read and the layer's output."""
    n = data.num_nodes
    nnz = int(data.csr[1].shape[0]) if data.csr is not None else 2 * data.num_edges
    chunk = min(n, cfg.minibatch.eval_batch_size)
    rows = min(n, chunk * (1 + 2 * -(-nnz // max(n, 1))))
    return 2 * (rows + chunk) * max(data.num_features, cfg.hidden, data.num_classes) * 4


def estimate_bytes(cfg: TrainConfig, data: Dataset) -> dict[str, int]:
    """Peak bytes by part (module docstring), evaluation's layers in memory."""
    n, f = data.num_nodes, data.num_features
    on_disk = features_on_disk(cfg, data)
    parts = {"features": 0 if on_disk else n * f * 4, "graph": _graph_bytes(cfg, data)}
    width = max(cfg.hidden, data.num_classes)
    if cfg.engine in FULL_BATCH_ENGINES:
        parts["features"] = n * f * 4 * 2  # the float32 copy plus dropout's mask/output
        parts["activations"] = 4 * cfg.layers * n * width * 4
        return parts
    mc = cfg.minibatch
    depth = mc.lookahead if mc.lookahead is not None else (DEFAULT_LOOKAHEAD if on_disk else 0)
    first_hop = cfg.first_hop_path()[0]
    in_width = f  # of a batch's input rows, read as float32
    if first_hop:  # the table beside X, where X is
        norm = first_hop_norm(cfg.model)
        table = table_width(norm, f)
        parts["first-hop table"] = 0 if on_disk else n * table * (2 if cfg.table_dtype() == "float16" else 4)
        in_width = table if norm == "gcn" else f + table  # GCN reads the table alone, SAGE [X | mean]
    # --cache-mb is spent by a cache: a feature or history cache, or the look-ahead's buffer.
    cached = cfg.cache_policy() != "none"
    parts["caches"] = int(mc.cache_mb * (1 << 20)) if cached or depth else 0
    parts["per-node arrays"] = 32 * n
    fanouts = list(mc.fanouts or [])
    rows = batch_input_rows(fanouts[:-1] if first_hop else fanouts, mc.batch_size, n)
    # A batch's rows, held twice with prefetching, and once more where a feature cache merges its
    # rows with the read ones.
    parts["batches"] = rows * in_width * 4 * ((2 if mc.prefetch else 1) + cached)
    parts["activations"] = batch_activation_bytes(fanouts, mc.batch_size, n, in_width, max(cfg.hidden, data.num_classes))
    parts["look-ahead window"] = depth * rows * 8 * 2
    if mc.eval_fanouts is not None:
        # Sampled evaluation holds a batch's rows (and the next, prefetched) and its activations,
        # after training's batches are freed: only what exceeds theirs adds to the peak.
        eval_fanouts = list(mc.eval_fanouts)
        eval_rows = batch_input_rows(eval_fanouts[:-1] if first_hop else eval_fanouts, mc.batch_size, n)
        held = eval_rows * in_width * 4 * 2 + batch_activation_bytes(eval_fanouts, mc.batch_size, n, in_width, width)
        parts["evaluation"] = max(0, held - parts["batches"] - parts["activations"])
    else:
        parts["evaluation"] = 2 * n * width * 4
    return parts


def evaluation_plan(cfg: TrainConfig, data: Dataset, available: int | None = None) -> dict[str, bool]:
    """How exact evaluation keeps within memory: ``spill_layers`` when its two ``[N, width]``
    layers do not fit beside training's parts, ``stream_features`` when, besides, the feature file
    (on disk) would not fit in what is left for the page cache."""
    plan = {"stream_features": False, "spill_layers": False}
    if cfg.device not in ("auto", "cpu") or cfg.engine in FULL_BATCH_ENGINES or cfg.minibatch.eval_fanouts is not None:
        return plan  # (sampled evaluation holds a batch, never a layer)
    available = available_bytes() if available is None else available
    if available is None:
        return plan
    parts = estimate_bytes(cfg, data)
    room = available - (sum(parts.values()) - parts["evaluation"])
    bounded = bounded_evaluation_bytes(cfg, data)
    plan["spill_layers"] = parts["evaluation"] > room and bounded < parts["evaluation"]
    layers = bounded if plan["spill_layers"] else parts["evaluation"]
    table = data.num_nodes * data.num_features * 4
    plan["stream_features"] = features_on_disk(cfg, data) and table + layers > room
    return plan


_FIXES = {
    "caches": "lower --cache-mb",
    "batches": "lower --batch-size or --fanouts (a batch's input rows are held twice with prefetching; "
               "--no-prefetch holds them once)",
    "evaluation": "lower --eval-batch-size (exact evaluation, its layers written to disk, still holds a chunk)",
    "look-ahead window": "lower --lookahead (each planned batch's input ids are held)",
    "activations": "lower --batch-size, --fanouts or --hidden (a batch's activations are kept for backward)",
    "first-hop table": "pass --features-on-disk (the table is then written beside X on disk) or --precompute off",
    "graph": "write the dataset as an on-disk layout (approxgnn prepare --out DIR) and train with --dataset DIR",
    "per-node arrays": "use a machine with more memory",
}


def check_memory(cfg: TrainConfig, data: Dataset, available: int | None = None) -> None:
    """Raise ``MemoryError`` naming the fix when the plan exceeds the memory available."""
    if cfg.device not in ("auto", "cpu"):
        return  # device memory is the limit there; torch reports it precisely
    available = available_bytes() if available is None else available
    if available is None:
        return
    parts = estimate_bytes(cfg, data)
    if cfg.engine not in FULL_BATCH_ENGINES and cfg.minibatch.eval_fanouts is None and sum(parts.values()) > available:
        # its layers go to disk where that needs less (evaluation_plan)
        parts["evaluation"] = min(parts["evaluation"], bounded_evaluation_bytes(cfg, data))
    need = sum(parts.values())
    if need <= available:
        return
    detail = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in parts.items() if v)
    if cfg.engine in FULL_BATCH_ENGINES:
        fix = ("full-batch training keeps every layer's activations; use --engine refresh (mini-batch) "
               "with --features-on-disk, or a smaller --hidden")
    elif parts["features"] and parts["features"] >= parts["caches"]:
        fix = ("pass --features-on-disk to read features from disk, or train from an on-disk layout "
               "(approxgnn prepare --out DIR)")
    else:
        fix = _FIXES[max(_FIXES, key=lambda k: parts.get(k, 0))]
        if fix == _FIXES["evaluation"] and cfg.minibatch.eval_fanouts is not None:
            fix = "lower --eval-fanouts or --batch-size (a sampled evaluation batch is larger than a training one)"
    raise MemoryError(f"this run plans about {math.ceil(need / GIB * 100) / 100:.2f} GiB ({detail}) but only "
                      f"{available / GIB:.2f} GiB is available (the machine's free memory or this process's cgroup "
                      f"limit, whichever is smaller): {fix}")
