r"""Data-parallel mini-batch training (``--engine sample`` and ``refresh`` in N processes).

Every rank runs :func:`run_rank`, whichever way it was launched (:mod:`.distributed`), on the
one :class:`~.minibatch.MiniBatchTrainer` with these differences:

* **Batches.** Epoch ``e``'s permutation is drawn from ``(seed, e)`` as in one process and cut
  into global batches of ``W·B`` seeds (``W`` ranks, ``B = --batch-size`` per rank); rank ``r``
  trains slice ``r`` of each (:func:`~.distributed.shard_batches`), sampled with the global
  batch's key. The effective global batch is ``W·B`` seeds.
* **Gradients.** DDP all-reduces them; each rank's loss is the mean over its own seeds, so the
  step follows :math:`\frac1W\sum_r \frac{1}{|S_r|}\sum_{i\in S_r}\nabla\ell_i`, which equals one
  process's step on the global batch when the slices are equal (all but possibly the last).
  With dropout off and no history cache, W processes thus trace one process's loss curve at
  batch size ``W·B`` up to float summation order.
* **State per rank.** Each rank has its own history cache and feature cache within
  ``--cache-mb`` (embeddings are never exchanged); the feature store is one memory-mapped
  ``.npy`` that rank 0 writes (or ``--features-path`` names) and every rank opens read-only.
* **Figures.** Bytes read, rows, admissions and hit counts are summed over ranks (the hit rate
  is recomputed from the summed counts); the epoch time is the slowest rank's; ``per_rank``
  keeps each rank's own.
* **The NaN guard** is collective: every rank learns every rank's loss before any backward, so
  all stop together, naming the rank. (Gradient norms need no exchange: after the all-reduce
  every rank holds the same gradients.)
* **Evaluation** is exact layer-wise inference, sharded over the ranks and all-gathered per
  layer (``--dist-eval sharded``), or run by rank 0 alone while the others wait (``rank0``).
* **Checkpoints**: each rank writes its shard (engine state, RNGs) atomically; after a barrier
  rank 0 writes ``checkpoint.pt`` (model, optimiser, loop, the shard names) last, so a manifest
  only ever names complete shards. Resuming needs the same world size.
"""
from __future__ import annotations

import copy
import io
import math
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..datasets import Dataset
from ..history import HistoryEngine
from ..state import check_version
from .base import TrainingDiverged, check_finite, resolve_device
from .checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint, seed_everything
from .config import DIST_EVAL_MODES, TrainConfig
from .distributed import DistContext, shard_batches
from .loop import fit, read_checkpoint
from .memory import check_memory
from .minibatch import MiniBatchTrainer

SHARD_VERSION = 1  # of a rank's checkpoint shard
SHARD_PATTERN = re.compile(r"^checkpoint\.e(\d+)\.rank(\d+)\.pt$")
# Each rank reads with its own store and caches: their counts add up to the run's.
CACHE_COUNTS = ("feature_bytes_read", "feature_rows_read", "feature_cache_rows_served", "disk_reads", "disk_bytes_read",
                "lookahead_rows_served", "lookahead_rows_prefetched")
SUMMED = (*CACHE_COUNTS, "admitted", "evicted", "entries", "feature_cache_rows")
PER_RANK = ("step_time_s", *CACHE_COUNTS, "hit_rate", "mean_age", "occupancy", "time")


def shard_name(epoch: int, rank: int) -> str:
    return f"checkpoint.e{epoch}.rank{rank}.pt"


class DistributedMiniBatchTrainer(MiniBatchTrainer):
    """:class:`MiniBatchTrainer` as one rank of ``ctx`` (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, data: Dataset, ctx: DistContext) -> None:
        super().__init__(cfg, data, ctx)
        if len(self.train_ids) < ctx.world_size:
            raise ValueError(f"{len(self.train_ids)} training nodes cannot be shared by {ctx.world_size} processes")
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.comm = {"allreduce_s": 0.0, "allreduce_bytes": 0, "allreduce_calls": 0}
        self.net.register_comm_hook(self.comm, _timed_allreduce)
        if ctx.rank:  # model initialised alike on every rank; dropout streams differ from here on
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, ctx.rank]).generate_state(1)[0]))
        self._last_checkpoint: int | None = None

    # ---- training ------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return shard_batches(self.epoch_permutation(epoch), self.mc.batch_size, self.ctx.rank, self.ctx.world_size)

    def finite_guard(self, what: str, value: torch.Tensor) -> None:
        """The loss is checked on every rank at once (before backward enters the all-reduce), so
        all ranks stop together; gradient norms are equal on every rank after the all-reduce."""
        if what != "loss":
            return check_finite(what, value)
        values = self.ctx.all_values(float(value))
        bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(f"{what} became {values[bad[0]]} on rank {', '.join(map(str, bad))}")

    def _epoch_record(self, before: dict[str, int], elapsed: float, loss_sum: float, hop_sum: np.ndarray,
                      num_batches: int, t: dict[str, float]) -> dict[str, Any]:
        """This rank's record with its all-reduce figures (no communication: the loop gathers)."""
        t = {**t, "allreduce_s": self.comm["allreduce_s"]}
        rec = super()._epoch_record(before, elapsed, loss_sum, hop_sum, num_batches, t)
        rec["allreduce_calls"], rec["allreduce_bytes"] = self.comm["allreduce_calls"], self.comm["allreduce_bytes"]
        self.comm.update(allreduce_s=0.0, allreduce_bytes=0, allreduce_calls=0)
        return rec

    def merge_ranks(self, recs: list[dict[str, Any]], counts: list[dict[str, int]]) -> dict[str, Any]:
        return aggregate_records(recs, counts)

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, mode: str | None = None) -> dict[str, float]:
        """Exact metrics, equal on every rank: sharded inference gathered per layer, or rank 0's
        inference broadcast (``mode``: ``sharded`` or ``rank0``, by default ``--dist-eval``).
        Batch-norm statistics are rank 0's on every rank."""
        mode = self.cfg.dist.eval if mode is None else mode
        if mode not in DIST_EVAL_MODES:
            raise ValueError(f"dist eval must be one of {DIST_EVAL_MODES}, got {mode!r}")
        self.ctx.broadcast_tensors(list(self.model.buffers()))
        if mode == "sharded":
            nodes = self.eval_nodes()
            logits = self.infer(nodes, part=(self.ctx.rank, self.ctx.world_size), gather=self.ctx.gather_rows)
            return self.metrics(logits, nodes)
        return self.ctx.broadcast_object(super().evaluate() if self.ctx.is_main else None)

    # ---- outputs and checkpoints ---------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        per_rank = [[r["per_rank"][k] for r in self.epoch_log] for k in range(self.ctx.world_size)] \
            if self.epoch_log else []
        info.update(world_size=self.ctx.world_size, backend=self.ctx.backend, threads_per_rank=self.ctx.threads,
                    dist_eval=self.cfg.dist.eval, global_batch_size=self.mc.batch_size * self.ctx.world_size,
                    per_rank=[_median_figures(rank, recs) for rank, recs in enumerate(per_rank)])
        return info

    def write_checkpoint(self, run_dir: Path, state: dict[str, Any]) -> None:
        """This rank's shard, a barrier, then rank 0's manifest ``checkpoint.pt`` naming the shards."""
        epoch, rank, world = int(state["loop"]["epoch"]), self.ctx.rank, self.ctx.world_size
        shard = {"version": SHARD_VERSION, "rank": rank, "world_size": world, "epoch": epoch,
                 "trainer": state.pop("trainer"), "rng": state.pop("rng")}
        buf = io.BytesIO()
        torch.save(shard, buf)
        atomic_write_bytes(run_dir / shard_name(epoch, rank), buf.getvalue())
        self.ctx.barrier()  # every shard is whole on disk before a manifest names it
        if self.ctx.is_main:
            save_checkpoint(run_dir, {**state, "world_size": world, "shards": [shard_name(epoch, r) for r in range(world)]})
            keep = {epoch, self._last_checkpoint}  # the shards of checkpoint.pt and checkpoint.prev.pt
            for p in run_dir.glob("checkpoint.e*.rank*.pt"):
                m = SHARD_PATTERN.match(p.name)
                if m and int(m.group(1)) not in keep:
                    p.unlink(missing_ok=True)
        self._last_checkpoint = epoch


def _timed_allreduce(state, bucket):  # unannotated: DDP checks the annotations, which are strings here
    """DDP's default gradient hook (average over ranks) on a ``dist.GradBucket``, timed from
    launch to completion; returns the future of the averaged bucket."""
    t0 = time.perf_counter()
    buf = bucket.buffer().div_(dist.get_world_size())
    state["allreduce_calls"] += 1
    state["allreduce_bytes"] += buf.numel() * buf.element_size()

    def done(fut: torch.futures.Future) -> torch.Tensor:
        state["allreduce_s"] += time.perf_counter() - t0
        return fut.value()[0]

    return dist.all_reduce(buf, async_op=True).get_future().then(done)


def aggregate_records(recs: list[dict[str, Any]], counts: list[dict[str, int]]) -> dict[str, Any]:
    """One epoch record for the run from every rank's (rank 0's as the base): sums of the
    counted figures, the slowest rank's time, the global loss, hit rate and age from the summed
    counts, and ``per_rank`` with each rank's own figures."""
    out = dict(recs[0])
    out["loss"] = sum(r["loss"] for r in recs)  # each is its loss sum over all training nodes
    out["step_time_s"] = max(r["step_time_s"] for r in recs)
    for k in SUMMED:
        if k in out:
            out[k] = sum(r[k] for r in recs)
    out["sampled_nodes_per_hop"] = np.mean([r["sampled_nodes_per_hop"] for r in recs], axis=0).round(1).tolist()
    if counts and counts[0]:
        out.update(HistoryEngine.rates({k: sum(c[k] for c in counts) for k in counts[0]}))
        out["occupancy"] = float(np.mean([r["occupancy"] for r in recs]))
    out["per_rank"] = [{k: r[k] for k in PER_RANK if k in r} for r in recs]
    return out


def _median_figures(rank: int, recs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rank": rank}
    for k in ("step_time_s", "feature_bytes_read", "hit_rate"):
        if recs and k in recs[0]:
            out[k] = statistics.median(r[k] for r in recs)
    if recs:
        out["allreduce_s"] = statistics.median(r["time"]["allreduce_s"] for r in recs)
    return out


def check_world_size(state: dict[str, Any], world: int, where: str | Path) -> None:
    """Refuse to resume a checkpoint written by another number of processes."""
    recorded = int(state.get("world_size", 1))
    if recorded != world:
        how = "without --nproc (one process)" if recorded == 1 else \
            f"with --nproc {recorded} (or torchrun --nproc-per-node {recorded})"
        raise ValueError(f"{where} was checkpointed by {recorded} process(es) and cannot be resumed by {world}: "
                         f"each rank's history cache is in its own shard. Resume it {how}")


def load_resume_state(out: str | Path, ctx: DistContext) -> dict[str, Any]:
    """The manifest of ``out``'s newest complete checkpoint with this rank's shard merged in."""
    state = read_checkpoint(out)
    check_world_size(state, ctx.world_size, out)
    shard = load_checkpoint(Path(out) / state["shards"][ctx.rank])
    check_version(shard, SHARD_VERSION, "checkpoint shard")
    if shard["rank"] != ctx.rank or shard["epoch"] != state["loop"]["epoch"]:
        raise RuntimeError(f"{out}: shard {state['shards'][ctx.rank]} does not belong to this checkpoint")
    state["trainer"], state["rng"] = shard["trainer"], shard["rng"]
    return state


def run_rank(cfg: TrainConfig, data: Dataset | None = None, *, resume: bool = False,
             ctx: DistContext | None = None) -> dict[str, Any]:
    """Train as one rank of the group in the environment (the one code path of both launches);
    every rank returns the result, rank 0 writes it. ``resume``: continue ``cfg.out``. ``ctx``:
    a group already joined (several runs in one group); by default this call joins and leaves it."""
    cfg = copy.deepcopy(cfg)
    own = ctx is None
    ctx = DistContext.from_env(cfg.dist, resolve_device(cfg.device)) if ctx is None else ctx
    error: BaseException | None = None
    try:
        cfg.dist.nproc = ctx.world_size  # the run records the world it ran in
        cfg.validate()
        resume_state = load_resume_state(cfg.out, ctx) if resume else None
        data = _load(cfg) if data is None else data
        check_memory(replace(cfg, minibatch=replace(cfg.minibatch, features_on_disk=True)), data)
        seed_everything(cfg.seed)
        trainer = DistributedMiniBatchTrainer(cfg, data, ctx)
        del data  # the features now live in the shared memory-mapped file only
        if resume_state is not None:
            trainer._last_checkpoint = int(resume_state["loop"]["epoch"])
        return fit(trainer, resume_state=resume_state)
    except BaseException as e:
        error = ctx.explain(e)
        if error is e:
            raise
        raise error from e
    finally:
        if own:
            ctx.close(error)


def _load(cfg: TrainConfig) -> Dataset:
    from .api import load_data

    return load_data(cfg)
