"""Mini-batch training with neighbour sampling (``--engine sample``) and a history cache
(``--engine refresh``), with exact layer-wise evaluation.

Cache policies (:meth:`TrainConfig.cache_policy`; ``--engine sample`` runs ``none``, or ``feature``
if asked):

* ``none``: every input row read from the feature store;
* ``feature``: the whole byte budget caches raw features of the highest-degree nodes
  (a :class:`~approxgnn.minibatch.CachedFeatureStore` over the store);
* ``gas`` / ``refresh``: a :class:`~approxgnn.history.HistoryEngine` owns a history cache at the
  cached layers and the feature cache, sharing the budget (see :mod:`approxgnn.history`).

Per batch: load (sample with pruning, read features, serve hits; one batch ahead in a worker
thread), forward, the guarded optimiser step (:meth:`Trainer.step`), then the history update.
Batch ``b``'s seeds come from a permutation of the training nodes drawn from ``(seed, epoch)`` and
its sample from ``(seed, epoch, b)``, so a resumed run redraws every batch exactly.

Evaluation never reads the history cache (:func:`~approxgnn.minibatch.layerwise_inference`).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets import Dataset
from ..graph import CSRGraph
from ..history import HistoryEngine
from ..history.caches import Caches, build_caches
from ..minibatch import (ArrayFeatureStore, BatchLoader, BlockPropagation, CachedFeatureStore, DiskFeatureStore,
                         FeatureStore, JoinedFeatureStore, MiniBatchConfig, NeighborSampler, first_hop_store,
                         layerwise_inference, write_features)
from ..minibatch.inference import sampled_inference
from ..minibatch.config import DEFAULT_LOOKAHEAD
from ..minibatch.loader import Batch, Prefetcher, epoch_permutation, epoch_seeds
from ..minibatch.lookahead import LookaheadCache
from ..minibatch.stores import joins_first_hop
from .._hash import mix_key
from ..minibatch.sampler import batch_key
from ..nn import Engine, FirstHop, build_model
from .base import Trainer, dataset_graph, resolve_device, synchronizer
from .config import TrainConfig
from .context import LocalContext
from .loop import interactive
from .memory import available_bytes, evaluation_plan
from .metrics import evaluate_logits
from .schedule import build_scheduler

MINIBATCH_MODELS = ("sage", "gcn")
FIGURES = ("hit_rate", "mean_age", "occupancy")  # history figures reported per epoch and in the result


def open_feature_store(mc: MiniBatchConfig, x: np.ndarray, out: str | None,
                       ctx: Any = None) -> tuple[FeatureStore, Any]:
    """The counted store of ``x`` as configured: a prepared ``.npy`` (``features_path``), ``x``
    itself (RAM, or a memmap already: an on-disk layout's features), or ``x`` written to
    ``<out>/features.npy`` (or a temporary directory, returned second: keep it alive as long as the
    store). Features on disk are read by ``mc.feature_store`` (:func:`open_store_file`): ``disk`` a
    :class:`DiskFeatureStore`, ``mmap`` an :class:`ArrayFeatureStore` over a memory map, ``auto``
    the memory map for a file that fits in memory and the disk store for one that does not.

    Under a distributed rank context ``ctx`` every rank reads one file: rank 0 writes it (as if
    ``features_on_disk``) and broadcasts its path, which the other ranks open read-only.
    """
    shared = ctx is not None and ctx.distributed
    tmp = None
    if mc.features_path:
        path = Path(mc.features_path)
    elif isinstance(x, np.memmap):
        if mc.feature_store == "mmap" or not _is_whole_npy(x):
            return ArrayFeatureStore(x), None  # a raw memory map: only the memory map can read it
        path = Path(x.filename)
    elif mc.features_on_disk or mc.feature_store == "disk" or shared:
        if shared and not ctx.is_main:
            path = Path(ctx.broadcast_object(None))
        else:
            tmp = None if out else tempfile.TemporaryDirectory(prefix="approxgnn-")
            path = Path(out if out else tmp.name) / "features.npy"
            write_features(path, x)
            if shared:
                ctx.broadcast_object(str(path))  # the file is whole before any other rank opens it
    else:
        return ArrayFeatureStore(x), None
    store = open_store_file(path, mc.feature_store)
    if tuple(store.x.shape) != tuple(x.shape):
        raise ValueError(f"features file {path} holds shape {store.x.shape}, the dataset has {x.shape}")
    return store, tmp


def _is_whole_npy(x: np.memmap) -> bool:
    """Whether ``x`` maps a whole ``.npy`` file (what :class:`DiskFeatureStore` opens)."""
    if not x.filename or not str(x.filename).endswith(".npy"):
        return False
    try:
        return tuple(np.load(x.filename, mmap_mode="r").shape) == tuple(x.shape)
    except (OSError, ValueError):
        return False


def open_store_file(path: str | Path, kind: str) -> FeatureStore:
    """A store over the float32 ``.npy`` at ``path``: ``mmap`` an :class:`ArrayFeatureStore` over a
    memory map, ``disk`` a :class:`DiskFeatureStore`; ``auto`` the memory map when the file takes
    at most half the memory this run may use (:func:`~.memory.available_bytes`), else the disk store.

    Why: a file the page cache can hold is read from RAM after its first touch, and ``O_DIRECT``
    would go to the disk for every row again (3x slower epochs on a 512 MB file, RESULTS.md,
    "Precomputed first hop"); a file larger than memory is read at the disk's speed either way,
    and there the disk store is 5-6x a memory map's cold gather."""
    if kind == "auto":
        room = available_bytes()
        kind = "mmap" if room is not None and Path(path).stat().st_size <= room // 2 else "disk"
    return ArrayFeatureStore.open(path) if kind == "mmap" else DiskFeatureStore(path)


def lookahead_depth(mc: MiniBatchConfig, store: FeatureStore) -> int:
    """Batches the look-ahead plans: ``mc.lookahead`` if given, else :data:`DEFAULT_LOOKAHEAD` for
    features read by the disk store and 0 (off) for features in RAM or memory-mapped (a file the
    page cache holds: ``--feature-store auto`` maps only those), where it would only take half of
    the cache budget."""
    if mc.lookahead is not None:
        return int(mc.lookahead)
    return DEFAULT_LOOKAHEAD if store_kind(store) == "disk" else 0


def store_kind(store: FeatureStore) -> str:
    """``disk``, ``memmap`` or ``ram``: what ``result.json`` records as ``feature_store``. Under a
    precomputed first hop, the kind of the store ``X`` is read by (the table is read the same way)."""
    if isinstance(store, JoinedFeatureStore):
        store = store.parts[0]
    if isinstance(store, DiskFeatureStore):
        return "disk"
    return "memmap" if getattr(store, "on_disk", False) else "ram"


def open_first_hop(graph: CSRGraph, store: FeatureStore, norm: str, directory: str | None,
                   ctx: Any = None, dtype: str = "float32", layout: str = "split") -> tuple[FeatureStore, dict[str, Any]]:
    """:func:`~approxgnn.minibatch.first_hop_store` of ``store``, and its facts for ``result.json``
    (the table's, and ``layout``: ``packed`` or ``split``). Under a distributed context rank 0
    builds the table (and the packed file) first and the other ranks then find them on disk (the
    fingerprint names the files), so each is written once."""
    ranks = ctx is not None and ctx.distributed
    if ranks and not ctx.is_main:
        ctx.broadcast_object(None)  # wait until rank 0's table is whole
    joined, table = first_hop_store(graph, store, norm, directory, dtype, layout)
    if ranks and ctx.is_main:
        ctx.broadcast_object(table.path)
    packed = getattr(joined, "fields", None) is not None
    info = table.info() | {"layout": "packed" if packed else "split"}
    if packed:
        info["packed_file"] = str(joined.path)
    return joined, info


class MiniBatchTrainer(Trainer):
    """Sampled mini-batches on SAGE/GCN with an optional feature cache and history engine.

    ``ctx``: this process's rank context (default :class:`LocalContext`, one process); the
    data-parallel trainer (:mod:`.ddp`) passes its group's. ``caches`` (:func:`build_caches`):
    ``engine`` is the :class:`HistoryEngine` under the history policies, else the no-op
    :class:`Engine`; ``history`` is the same engine or None, ``features`` the store batches read.
    """

    def __init__(self, cfg: TrainConfig, data: Dataset, ctx: Any = None) -> None:
        if cfg.model not in MINIBATCH_MODELS:
            raise ValueError(f"mini-batch engines run {list(MINIBATCH_MODELS)}, not {cfg.model!r} "
                             "(GCNII's initial residual needs the input rows of every layer's targets)")
        self.ctx = LocalContext(resolve_device(cfg.device)) if ctx is None else ctx
        if not self.ctx.is_main:  # one progress bar, from rank 0
            cfg = replace(cfg, progress=False)
        mc = self.mc = cfg.minibatch
        self.cfg, self.metric, self.policy = cfg, data.metric, cfg.cache_policy()
        self.device = self.ctx.device
        graph = dataset_graph(data)
        self.model = build_model(cfg.model, data.num_features, cfg.hidden, data.num_classes, cfg.layers,
                                 cfg.dropout, cfg.batch_norm, cfg.resolved_input_dropout()).to(self.device)
        self.net: torch.nn.Module = self.model  # what the forward pass calls (a data-parallel wrapper, in ddp.py)
        self.first_hop, why = cfg.first_hop_path()
        self.sampler = NeighborSampler(graph, list(mc.fanouts), self.model.norm, first_hop=self.first_hop)
        self.store, self._tmp = open_feature_store(mc, data.x, cfg.out, self.ctx)
        self.num_features = data.num_features
        precompute: dict[str, Any] = {"path": "precomputed" if self.first_hop else "plain", "reason": why}
        if self.first_hop:
            self.store, info = open_first_hop(graph, self.store, self.model.norm, cfg.precompute_dir, self.ctx,
                                              cfg.table_dtype(), cfg.precompute_layout)
            precompute.update(info)
        self.depth = lookahead_depth(mc, self.store)
        # Evaluation's layers on disk, its features streamed, when the memory plan says so.
        self.eval_plan = evaluation_plan(cfg, data)
        self._eval_sampler: NeighborSampler | None = None  # eval_fanouts' sampler, built at the first evaluation
        self.lookahead, cache_mb = self._build_lookahead()
        history = replace(cfg.history, policy=self.policy, cached_value=cfg.resolved_cached_value())
        self.caches: Caches = build_caches(history, self.lookahead or self.store, self.sampler.rowptr, self.sampler.deg,
                                           cfg.layers, cfg.hidden, cache_mb, self.device, sampler=self.sampler)
        # Short names for the parts (the caches are built once and never replaced).
        self.engine: Engine = self.caches.engine
        self.history: HistoryEngine | None = self.caches.history
        self.feature_cache: CachedFeatureStore | None = self.caches.feature_cache
        self.features: FeatureStore = self.caches.features
        fc = self.feature_cache
        self.loader = BatchLoader(self.sampler, self.features, self.history, self.device, lookahead=self.lookahead,
                                  depth=self.depth, upstream=fc.uncached if fc is not None else None)
        self.y = torch.as_tensor(data.y).to(self.device)
        self.train_ids = np.flatnonzero(data.train_mask).astype(np.int64)
        self.split_masks = {k: np.asarray(getattr(data, f"{k}_mask")) for k in ("train", "val", "test")}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(cfg.lr_schedule, self.optimizer, cfg.epochs)
        self.iteration = 0
        self.epoch_log: list[dict[str, Any]] = []
        self._info = {"num_nodes": data.num_nodes, "nnz": graph.nnz, "num_features": data.num_features,
                      "device": str(self.device), "input_dropout": cfg.resolved_input_dropout(),
                      "policy": self.policy, "cache_budget_bytes": self.caches.budget_bytes,
                      "cached_layers": list(self.caches.cached_layers),
                      "feature_store": store_kind(self.store), "precompute": precompute,
                      "lookahead": self.depth, "cache_split": self._cache_split(),
                      "evaluation": self.eval_plan}

    def _build_lookahead(self) -> tuple[LookaheadCache | None, float]:
        """The look-ahead cache (None when off) and the MiB of ``--cache-mb`` left to the other
        caches: it takes ``lookahead_share`` of the budget, all of it under policy ``none``. By
        default (``lookahead`` None) it is left off where its share cannot hold its metadata."""
        mc = self.mc
        if not self.depth:
            return None, mc.cache_mb
        total = int(mc.cache_mb * 2**20)
        share = total if self.policy == "none" else int(total * mc.lookahead_share)
        try:
            cache = LookaheadCache.within_budget(self.store, share, background=mc.prefetch)
        except ValueError as e:
            if mc.lookahead is None:  # the default, not asked for: off where its share holds no row
                self.depth = 0
                return None, mc.cache_mb
            raise ValueError(f"the look-ahead cache's share of --cache-mb ({share / 2**20:.4g} MiB, "
                             f"--lookahead-share {mc.lookahead_share}): {e}") from None
        return cache, (total - share) / 2**20

    def _cache_split(self) -> dict[str, int]:
        """How ``--cache-mb`` was divided (bytes; rows of each cache), for ``result.json``."""
        la = self.lookahead
        split = {"budget_bytes": int(self.mc.cache_mb * 2**20), "lookahead_bytes": la.nbytes if la else 0,
                 "lookahead_rows": la.capacity if la else 0, "caches_bytes": self.caches.budget_bytes,
                 "feature_cache_rows": self.feature_cache.capacity if self.feature_cache is not None else 0}
        if self.history is not None:
            split["history_rows"] = self.history.cache.max_slots  # embedding rows it may take from feature rows
        return split

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    # ---- training ------------------------------------------------------------------------
    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The training nodes in epoch ``epoch``'s order, drawn from ``(seed, epoch)``."""
        return epoch_permutation(self.train_ids, self.cfg.seed, epoch)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_seeds(self.train_ids, self.mc.batch_size, self.cfg.seed, epoch)

    def _input(self, rows: torch.Tensor) -> torch.Tensor | FirstHop:
        """The model's input from rows read for layer 0: the rows themselves, or (first hop
        precomputed) a :class:`FirstHop` of them."""
        return FirstHop.from_rows(rows, self.model.norm, self.num_features) if self.first_hop else rows

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, BlockPropagation]:
        prop = self.history.propagation(batch.sample, batch.ops, batch.served) if self.history \
            else BlockPropagation(batch.ops)
        out = self.net(self._input(batch.x), prop)
        return F.cross_entropy(out, self.y[torch.from_numpy(batch.sample.seeds).to(self.device)]), prop

    @property
    def _bars(self) -> bool:
        """Per-batch and evaluation bars only on a terminal (elsewhere fit prints a line per epoch)."""
        return self.cfg.progress and interactive()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        sync = synchronizer(self.device)
        t_start = time.perf_counter()
        before = self._counters()  # before the engine's epoch start: a switch to exact re-reads rows
        self.engine.on_epoch_start(epoch, self.cfg.epochs)
        self.model.train()
        batches = self._epoch_batches(epoch)
        self.loader.reset_times()
        t = {"wait_s": 0.0, "forward_s": 0.0, "backward_s": 0.0, "admit_s": 0.0, "refresh_s": 0.0}
        loss_sum, hop_sum = 0.0, np.zeros(self.sampler.num_layers + 1)
        key = lambda b: batch_key(self.cfg.seed, epoch, b)  # noqa: E731
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}", disable=not self._bars, leave=False,
                   dynamic_ncols=True)
        with Prefetcher(self.mc.prefetch) as pf:
            # Ordered on the one worker: the look-ahead's first batches are drawn before batch 0 loads.
            pf.submit(self.loader.begin_epoch, [(s, key(b)) for b, s in enumerate(batches)], self.iteration)
            nxt = pf.submit(self.loader.load, batches[0], key(0), self.iteration)
            for b in range(len(batches)):
                t0 = time.perf_counter()
                batch = nxt.result()
                # Batch b+1 is loaded against the cache as it is now (after update b−1).
                nxt = pf.submit(self.loader.load, batches[b + 1], key(b + 1), self.iteration + 1) \
                    if b + 1 < len(batches) else None
                t1 = time.perf_counter()
                loss, prop = self._forward(batch)
                t2 = time.perf_counter()
                self.step(loss)
                sync()
                t3 = time.perf_counter()
                if nxt is not None:
                    nxt.result()  # the update must not change the cache while the next batch reads it
                t4 = time.perf_counter()
                if self.history:
                    self.history.update(batch.sample, prop.recorded, batch.served, self.iteration)
                t5 = time.perf_counter()
                # REST's forward-only refresh, when one is due (its reads count in this epoch's bytes)
                self.caches.after_step(self.model, self._input, self.iteration, mix_key(key(b), 0x5E), self.device)
                t6 = time.perf_counter()
                for k, dt in (("wait_s", t1 - t0 + t4 - t3), ("forward_s", t2 - t1), ("backward_s", t3 - t2),
                              ("admit_s", t5 - t4), ("refresh_s", t6 - t5)):
                    t[k] += dt
                self.iteration += 1
                loss_sum += float(loss.detach()) * len(batch.sample.seeds)
                hop_sum += np.asarray(batch.sample.nodes_per_hop(), dtype=np.float64)
                bar.update()
                if self.history and b % 10 == 0:
                    bar.set_postfix(self._postfix(), refresh=False)
        bar.close()
        sync()
        rec = self._epoch_record(before, time.perf_counter() - t_start, loss_sum, hop_sum, len(batches), t)
        # The epoch's one collective, here in the loop that every rank runs alike (no-op in one process).
        ranks = self.ctx.gather_objects((rec, dict(self.history.counts) if self.history else {}))
        rec = self.merge_ranks([r for r, _ in ranks], [c for _, c in ranks])
        self.epoch_log.append(rec)
        return rec

    def merge_ranks(self, recs: list[dict[str, Any]], counts: list[dict[str, int]]) -> dict[str, Any]:
        """One epoch record from every rank's record and history counts (one rank: its own)."""
        return recs[0]

    def _counters(self) -> dict[str, int]:
        served = self.feature_cache.rows_served if self.feature_cache else 0
        ahead = self.lookahead.counters() if self.lookahead is not None else {}
        return {**self.store.counters(), "served": served,
                **{f"lookahead_{k}": v for k, v in ahead.items() if k != "rows_requested"}}

    def _epoch_record(self, before: dict[str, int], elapsed: float, loss_sum: float, hop_sum: np.ndarray,
                      num_batches: int, t: dict[str, float]) -> dict[str, Any]:
        """This rank's figures of the epoch; it reads counters only and never communicates."""
        now = self._counters()
        rec: dict[str, Any] = {
            "loss": loss_sum / len(self.train_ids), "step_time_s": elapsed,
            "feature_bytes_read": now["bytes_read"] - before["bytes_read"],
            "feature_rows_read": now["rows_read"] - before["rows_read"],
            "feature_cache_rows_served": now["served"] - before["served"],
            "sampled_nodes_per_hop": (hop_sum / num_batches).round(1).tolist(),
            "batches": num_batches,
            "time": {**{k: round(v, 4) for k, v in t.items()},
                     **{k: round(v, 4) for k, v in self.loader.times.items()}},
        }
        if self.history:
            rec.update(self.history.stats())
        if self.feature_cache is not None:
            rec["feature_cache_rows"] = self.feature_cache.num_valid
        for k in ("disk_reads", "disk_bytes_read",  # what really left the disk (DiskFeatureStore)
                  "lookahead_rows_served", "lookahead_rows_prefetched"):  # rows the look-ahead cache served, read ahead
            if k in now:
                rec[k] = now[k] - before[k]
        return rec

    def _postfix(self) -> dict[str, str]:
        s = self.history.stats() if self.history else {}
        return {k: f"{s[k]:.3g}" for k in FIGURES if k in s}

    # ---- evaluation ----------------------------------------------------------------------
    def infer(self, nodes: np.ndarray | None = None, **shard: Any) -> torch.Tensor:
        """Logits ``[len(nodes), C]`` (all nodes by default); no history cache is read.

        Exact by default: layer-wise inference over full neighbourhoods, ``eval_batch_size``
        targets at a time, in bounded memory when :attr:`eval_plan` says so (features streamed
        through the store, hidden layers written under ``--out``, else the system's temporary
        directory, and removed). With ``eval_fanouts``: sampled neighbourhoods, ``batch_size``
        targets a batch (:func:`~approxgnn.minibatch.inference.sampled_inference`), the same
        neighbourhoods at every evaluation. ``shard``: ``part`` and ``gather`` (a sharded evaluation)."""
        nodes = np.arange(self.sampler.graph.num_nodes) if nodes is None else np.asarray(nodes, dtype=np.int64)
        first_hop = self._input if self.first_hop else None
        if self.mc.eval_fanouts is not None:
            if self._eval_sampler is None:
                self._eval_sampler = NeighborSampler(self.sampler.graph, list(self.mc.eval_fanouts), self.model.norm,
                                                     first_hop=self.first_hop)
            return sampled_inference(self.model, self._eval_sampler, self.features, nodes,
                                     batch_size=self.mc.batch_size, key=mix_key(self.cfg.seed, 0xE7A1),
                                     device=self.device, first_hop=first_hop, progress=self._bars,
                                     prefetch=self.mc.prefetch, **shard)
        sharded = shard.get("part", (0, 1))[1] > 1  # a sharded evaluation gathers every layer in memory
        spill = (self.cfg.out or tempfile.gettempdir()) if self.eval_plan["spill_layers"] and not sharded else None
        return layerwise_inference(self.model, self.sampler, self.store, nodes, features=self.features,
                                   chunk_size=self.mc.eval_batch_size, device=self.device, progress=self._bars,
                                   first_hop=first_hop, stream=self.eval_plan["stream_features"], spill_dir=spill,
                                   **shard)

    def evaluate(self) -> dict[str, float]:
        """The metric on train/val/test from :meth:`infer` (the history cache is unused)."""
        nodes = self.eval_nodes()
        return self.metrics(self.infer(nodes), nodes)

    def eval_nodes(self) -> np.ndarray:
        """The nodes evaluation needs logits of: every train, validation and test node, or with
        ``eval_nodes`` at most that many of each split, drawn once from the run's seed."""
        masks, cap = self.split_masks, self.mc.eval_nodes
        if not cap:
            return np.flatnonzero(masks["train"] | masks["val"] | masks["test"])
        rng = np.random.default_rng(mix_key(self.cfg.seed, 0xE7A2))
        picked = [rng.permutation(ids)[:cap] if len(ids) > cap else ids
                  for ids in (np.flatnonzero(masks[k]) for k in ("train", "val", "test"))]
        return np.unique(np.concatenate(picked))

    def metrics(self, logits: torch.Tensor, nodes: np.ndarray) -> dict[str, float]:
        """The metric per split from ``logits [len(nodes), C]`` of :meth:`eval_nodes`."""
        pos = np.full(self.sampler.graph.num_nodes, -1, np.int64)
        pos[nodes] = np.arange(len(nodes))
        res = {}
        for k, m in self.split_masks.items():
            ids = np.flatnonzero(m)
            ids = ids[pos[ids] >= 0]  # with eval_nodes, the sampled part of the split
            res[k] = evaluate_logits(logits[torch.from_numpy(pos[ids]).to(self.device)],
                                     self.y[torch.from_numpy(ids).to(self.device)], self.metric)
        return res

    # ---- figures and state ---------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The policy, MiB read from the store and the history figures, of the last epoch."""
        if not self.epoch_log:
            return {"policy": self.policy}
        last = self.epoch_log[-1]
        out: dict[str, Any] = {"policy": self.policy, "MB_read": last["feature_bytes_read"] / 2**20}
        out.update({k: float(last[k]) for k in FIGURES if k in last})
        return out

    def run_info(self) -> dict[str, Any]:
        info = dict(self._info)
        if self.epoch_log:
            per_epoch = [r["feature_bytes_read"] for r in self.epoch_log]
            hops = np.asarray([r["sampled_nodes_per_hop"] for r in self.epoch_log])
            info.update(feature_bytes_read=statistics.median(per_epoch), feature_bytes_read_per_epoch=per_epoch,
                        sampled_nodes_per_hop=np.median(hops, axis=0).round(1).tolist())
            info.update({k: statistics.median(r[k] for r in self.epoch_log) for k in FIGURES if k in self.epoch_log[-1]})
        if self.history:
            info["history_bytes_used"] = self.history.cache.bytes_used
        if self.feature_cache is not None:
            info["cache_metadata_bytes"] = self.caches.metadata_bytes()
        return info

    def extra_state(self) -> dict[str, Any]:
        state = {"iteration": self.iteration, "epoch_log": list(self.epoch_log), "store": self.store.state_dict(),
                 **self.caches.state_dict()}
        if self.lookahead is not None:
            state["lookahead"] = self.lookahead.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.epoch_log = list(state["epoch_log"])
        if self.lookahead is not None:
            if "lookahead" not in state:
                raise ValueError("the checkpoint holds no look-ahead cache; resume it with --lookahead 0")
            self.lookahead.load_state_dict(state["lookahead"])  # re-reads its rows: before the store's counters
        saved = joins_first_hop(state["store"])  # SAGE's first hop; GCN's reads its table alone
        if self.model.norm == "mean" and saved != joins_first_hop(self.store.state_dict()):  # the CLI's --resume picks the path
            raise ValueError("the checkpoint was written " + ("with" if saved else "without")
                             + " the precomputed first hop; resume it with precompute=" + ("'on'" if saved else "'off'"))
        self.store.load_state_dict(state["store"])
        self.caches.load_state_dict(state)
