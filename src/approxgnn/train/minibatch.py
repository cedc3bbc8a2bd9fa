"""Mini-batch training with neighbour sampling (``--engine sample``) and historical caches
(``--engine refresh``), with exact layer-wise evaluation.

Policies (``cfg.refresh.policy``; ``--engine sample`` runs ``none``, or ``feature`` if asked):

* ``none``: every input row read from the feature store;
* ``feature``: the whole byte budget caches raw features of the highest-degree nodes;
* ``gas``: history cache at the cached layers, every computed embedding pushed, never stale;
* ``refresh``: history cache with gradient admission and the staleness limit (ReFresh).

The history cache shares its budget with the feature cache (``history/cache.py``). Per batch:
load (sample with pruning, gather, serve hits; one batch ahead in a worker thread), forward,
``backward()``, ``optimizer.step()``, then admission. Batch ``b``'s seeds come from a permutation
of the training nodes drawn from ``(seed, epoch)`` and its sample from ``(seed, epoch, b)``, so
a resumed run redraws every batch exactly.

Evaluation never reads the history cache: layer ``l``'s output is computed, in chunks of
``eval_batch_size`` targets, for every node of the evaluated nodes' receptive field, from layer
``l−1``'s outputs over full neighbourhoods (exact layer-wise inference, as PyG/DGL/GAS do it).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets import Dataset
from ..graph import CSRGraph
from ..history.arena import arena_floats
from ..history.cache import HistoryCache
from ..history.engine import HistoryEngine
from ..history.features import FeatureCache, FeatureStore, degree_order, write_features
from ..history.loader import BatchLoader, Prefetcher
from ..history.propagation import BlockPropagation, LayerOutput, LayerwisePropagation
from ..history.sampler import NeighborSampler, batch_key
from ..nn import build_model
from .config import TrainConfig
from .full_batch import _synchronizer, resolve_device
from .loop import Trainer
from .metrics import evaluate_logits
from .schedule import build_scheduler

MINIBATCH_MODELS = ("sage", "gcn")


def effective_policy(cfg: TrainConfig) -> str:
    """The cache policy a run uses: ``--engine sample`` never has a history cache."""
    if cfg.engine == "sample":
        return "feature" if cfg.refresh.policy == "feature" else "none"
    return cfg.refresh.policy


class MiniBatchTrainer(Trainer):
    """Sampled mini-batches on SAGE/GCN with an optional feature cache and history cache."""

    def __init__(self, cfg: TrainConfig, data: Dataset) -> None:
        if cfg.model not in MINIBATCH_MODELS:
            raise ValueError(f"mini-batch engines run {list(MINIBATCH_MODELS)}, not {cfg.model!r} "
                             "(GCNII's initial residual needs the input rows of every layer's targets)")
        rc = self.rc = cfg.refresh
        self.cfg, self.metric, self.policy = cfg, data.metric, effective_policy(cfg)
        self.device = resolve_device(cfg.device)
        graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
        self.model = build_model(cfg.model, data.num_features, cfg.hidden, data.num_classes, cfg.layers,
                                 cfg.dropout, cfg.batch_norm, cfg.resolved_input_dropout()).to(self.device)
        self.sampler = NeighborSampler(graph, list(rc.fanouts), self.model.norm)
        self.store = self._feature_store(data)
        self.features: FeatureStore | FeatureCache = self.store
        self.feature_cache: FeatureCache | None = None
        self.engine: HistoryEngine | None = None
        self.budget_bytes = int(rc.cache_mb * 2**20) if self.policy != "none" else 0
        self._build_caches(data.num_nodes)
        self.loader = BatchLoader(self.sampler, self.features, self.engine, self.device)
        self.y = torch.as_tensor(data.y).to(self.device)
        self.train_ids = np.flatnonzero(data.train_mask).astype(np.int64)
        self.split_masks = {k: np.asarray(getattr(data, f"{k}_mask")) for k in ("train", "val", "test")}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(cfg.lr_schedule, self.optimizer, cfg.epochs)
        self.iteration = 0
        self.epoch_log: list[dict[str, Any]] = []
        self._info = {"num_nodes": data.num_nodes, "nnz": graph.nnz, "num_features": data.num_features,
                      "device": str(self.device), "input_dropout": cfg.resolved_input_dropout(),
                      "policy": self.policy, "cache_budget_bytes": self.budget_bytes,
                      "cached_layers": list(self.engine.layers) if self.engine else [],
                      "feature_store": "memmap" if self.store.on_disk else "ram"}

    # ---- construction --------------------------------------------------------------------
    def _feature_store(self, data: Dataset) -> FeatureStore:
        rc = self.rc
        if rc.features_path:
            store = FeatureStore.open(rc.features_path)
            if store.x.shape != data.x.shape:
                raise ValueError(f"features_path {rc.features_path} holds shape {store.x.shape}, "
                                 f"the dataset has {data.x.shape}")
            return store
        if isinstance(data.x, np.memmap) or not rc.features_on_disk:
            return FeatureStore(data.x)
        if self.cfg.out:
            path = Path(self.cfg.out) / "features.npy"
        else:  # kept alive with the trainer, removed with it
            self._tmp = tempfile.TemporaryDirectory(prefix="approxgnn-")
            path = Path(self._tmp.name) / "features.npy"
        return FeatureStore(write_features(path, data.x))

    def _build_caches(self, num_nodes: int) -> None:
        if self.policy == "none":
            return
        layers = self.rc.cached_layers if self.rc.cached_layers is not None else [self.cfg.layers - 2]
        history = self.policy != "feature"
        if history and (self.cfg.layers < 2 or not layers):
            raise ValueError(f"policy {self.policy!r} caches hidden layers; a {self.cfg.layers}-layer model has none")
        layers = sorted(set(layers))
        staleness = self.rc.staleness if self.policy == "refresh" else None
        # The budget holds the caches' metadata too: the arena is what is left of it.
        floats = arena_floats(self.budget_bytes, num_nodes, self.store.dim, self.cfg.hidden if history else None,
                              len(layers), staleness)
        arena = torch.empty(floats, dtype=torch.float32, device=self.device)
        self.feature_cache = FeatureCache(self.store, degree_order(self.sampler.rowptr), arena)
        self.features = self.feature_cache
        if not history:
            return
        # Capacity guard by degree: a uniform sampler reaches a node about in proportion to it.
        # The sampler's float64 degrees are shared, not copied.
        cache = HistoryCache(num_nodes, layers, self.cfg.hidden, arena, self.feature_cache, staleness,
                             weight=self.sampler.deg)
        self.engine = HistoryEngine(cache, self.policy, self.rc.rate, self.rc.evict)

    # ---- training ------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(self.train_ids)
        bs = self.rc.batch_size
        return [perm[i : i + bs] for i in range(0, len(perm), bs)]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        sync = _synchronizer(self.device)
        t_start = time.perf_counter()
        self.model.train()
        batches = self._epoch_batches(epoch)
        counters0 = self.store.counters()
        served0 = self.feature_cache.rows_served if self.feature_cache else 0
        if self.engine:
            self.engine.reset_stats()
        self.loader.reset_times()
        t = {"wait_s": 0.0, "forward_s": 0.0, "backward_s": 0.0, "admit_s": 0.0}
        loss_sum, hop_sum = 0.0, None
        key = lambda b: batch_key(self.cfg.seed, epoch, b)  # noqa: E731
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}", disable=not self.cfg.progress, leave=False,
                   dynamic_ncols=True)
        with Prefetcher(self.rc.prefetch) as pf:
            nxt = pf.submit(self.loader.load, batches[0], key(0), self.iteration)
            for b in range(len(batches)):
                t0 = time.perf_counter()
                batch = nxt.result()
                # Batch b+1 is loaded against the cache as it is now (after admission b−1).
                nxt = pf.submit(self.loader.load, batches[b + 1], key(b + 1), self.iteration + 1) \
                    if b + 1 < len(batches) else None
                t1 = time.perf_counter()
                prop = BlockPropagation(batch.ops, batch.hits, self.engine.layers if self.engine else ())
                out = self.model(batch.x, prop)
                loss = F.cross_entropy(out, self.y[torch.from_numpy(batch.sample.seeds).to(self.device)])
                t2 = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                sync()
                t3 = time.perf_counter()
                if nxt is not None:
                    nxt.result()  # admission must not change the cache while the next batch reads it
                t4 = time.perf_counter()
                if self.engine:
                    self.engine.update(batch.sample, prop.recorded, batch.hits, self.iteration)
                t5 = time.perf_counter()
                for k, dt in (("wait_s", t1 - t0 + t4 - t3), ("forward_s", t2 - t1), ("backward_s", t3 - t2),
                              ("admit_s", t5 - t4)):
                    t[k] += dt
                self.iteration += 1
                loss_sum += float(loss.detach()) * len(batch.sample.seeds)
                hops = np.asarray(batch.sample.nodes_per_hop(), dtype=np.float64)
                hop_sum = hops if hop_sum is None else hop_sum + hops
                bar.update()
                if self.engine and b % 10 == 0:
                    bar.set_postfix(self._postfix(), refresh=False)
        bar.close()
        sync()
        elapsed = time.perf_counter() - t_start
        counters = self.store.counters()
        rec: dict[str, Any] = {
            "loss": loss_sum / len(self.train_ids), "step_time_s": elapsed,
            "feature_bytes_read": counters["bytes_read"] - counters0["bytes_read"],
            "feature_rows_read": counters["rows_read"] - counters0["rows_read"],
            "feature_cache_rows_served": (self.feature_cache.rows_served - served0) if self.feature_cache else 0,
            "sampled_nodes_per_hop": (hop_sum / len(batches)).round(1).tolist(),
            "batches": len(batches),
            "time": {**{k: round(v, 4) for k, v in t.items()},
                     **{k: round(v, 4) for k, v in self.loader.times.items()}},
        }
        if self.engine:
            rec.update(self.engine.summary())
        if self.feature_cache is not None:
            rec["feature_cache_rows"] = self.feature_cache.num_valid
        self.epoch_log.append(rec)
        return rec

    def _postfix(self) -> dict[str, str]:
        s = self.engine.summary() if self.engine else {}
        return {k: f"{s[k]:.3g}" for k in ("hit_rate", "mean_age", "occupancy") if k in s}

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, nodes: np.ndarray | None = None) -> torch.Tensor:
        """Exact logits ``[len(nodes), C]`` (all nodes by default) by layer-wise inference over
        full neighbourhoods, ``eval_batch_size`` targets at a time; no history cache is read.

        Layer ``l`` is computed only for the nodes the layers above read (the receptive field of
        ``nodes``: ``R_{L-1} = nodes``, ``R_{l-1} = R_l ∪ N(R_l)``), each node once. A model that
        aggregates before its linear maps (SAGE, ``norm == "mean"``) reads the whole input matrix
        through blocks with mapped columns; one that transforms first (GCN) gets each chunk's
        sources copied out, so that it transforms only those.
        """
        self.model.eval()
        n, num_layers, ebs = self.sampler.graph.num_nodes, self.cfg.layers, self.rc.eval_batch_size
        nodes = np.arange(n) if nodes is None else np.asarray(nodes, dtype=np.int64)
        needed = [nodes]
        for _ in range(num_layers - 1):
            needed.insert(0, self.sampler.closed_neighbourhood(needed[0]))
        mapped = self.model.norm == "mean"
        dummy = torch.zeros(1, self.store.dim, device=self.device)
        bar = tqdm(total=sum(-(-len(r) // ebs) for r in needed), desc="eval", disable=not self.cfg.progress,
                   leave=False, dynamic_ncols=True)
        h: torch.Tensor | None = None  # outputs of the layer below; row pos[v] holds node v
        pos = np.arange(n)  # layer 0 reads the features: row v is node v
        for layer, targets in enumerate(needed):
            # Layer 0 reads the feature store in place on the CPU; on an accelerator it gathers
            # each chunk's rows instead of copying every feature over.
            by_rows = mapped and (layer > 0 or self.device.type == "cpu")
            if by_rows and layer == 0:
                h = self.store.full()
            out: torch.Tensor | None = None
            for s in range(0, len(targets), ebs):
                chunk = targets[s : s + ebs]
                if by_rows:
                    x_in = h
                    op = self.sampler.rows_block(chunk, pos, len(h)).operator(self.device)
                    prop = LayerwisePropagation(layer, op, x_in, torch.from_numpy(pos[chunk]).to(self.device))
                else:
                    block, src = self.sampler.full_block(chunk)
                    x_in = self.features.gather(src).to(self.device) if layer == 0 else \
                        h[torch.from_numpy(pos[src]).to(self.device)]
                    prop = LayerwisePropagation(layer, block.operator(self.device), x_in)
                try:
                    o = self.model(x_in if layer == 0 else dummy, prop)
                except LayerOutput as stop:
                    o = stop.h
                if out is None:
                    out = torch.empty(len(targets), o.size(1), device=self.device)
                out[s : s + o.size(0)] = o
                bar.update()
            h = out
            pos = np.full(n, -1, np.int64)
            pos[targets] = np.arange(len(targets))
        bar.close()
        return h

    def evaluate(self) -> dict[str, float]:
        """The metric on train/val/test from :meth:`infer` (exact; the history cache is unused)."""
        masks = self.split_masks
        nodes = np.flatnonzero(masks["train"] | masks["val"] | masks["test"])
        logits = self.infer(nodes)
        pos = np.full(self.sampler.graph.num_nodes, -1, np.int64)
        pos[nodes] = np.arange(len(nodes))
        res = {}
        for k, m in masks.items():
            ids = np.flatnonzero(m)
            res[k] = evaluate_logits(logits[torch.from_numpy(pos[ids]).to(self.device)],
                                     self.y[torch.from_numpy(ids).to(self.device)], self.metric)
        return res

    # ---- figures and state ---------------------------------------------------------------
    def engine_stats(self) -> dict[str, Any]:
        if not self.epoch_log:
            return {"policy": self.policy}
        last = self.epoch_log[-1]
        out: dict[str, Any] = {"policy": self.policy, "MB_read": last["feature_bytes_read"] / 2**20}
        for k in ("hit_rate", "mean_age", "occupancy"):
            if k in last:
                out[k] = float(last[k])
        return out

    def run_info(self) -> dict[str, Any]:
        info = dict(self._info)
        if self.epoch_log:
            per_epoch = [r["feature_bytes_read"] for r in self.epoch_log]
            hops = np.asarray([r["sampled_nodes_per_hop"] for r in self.epoch_log])
            info.update(feature_bytes_read=statistics.median(per_epoch), feature_bytes_read_per_epoch=per_epoch,
                        sampled_nodes_per_hop=np.median(hops, axis=0).round(1).tolist())
            for k in ("hit_rate", "mean_age", "occupancy"):
                if k in self.epoch_log[-1]:
                    info[k] = statistics.median(r[k] for r in self.epoch_log)
        if self.engine:
            info["history_bytes_used"] = self.engine.cache.bytes_used
        if self.feature_cache is not None:
            info["cache_metadata_bytes"] = self.cache_metadata_bytes()
        return info

    def cache_metadata_bytes(self) -> int:
        """Bytes of the caches' metadata (slot maps, write iterations, replacement order): part of
        the ``--cache-mb`` budget, next to the arena's rows."""
        meta = self.feature_cache.metadata_bytes if self.feature_cache is not None else 0
        return meta + (self.engine.cache.metadata_bytes if self.engine is not None else 0)

    def engine_state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"iteration": self.iteration, "epoch_log": list(self.epoch_log),
                                 "store": self.store.state_dict()}
        if self.feature_cache is not None:
            state["feature_cache"] = self.feature_cache.state_dict()
        if self.engine is not None:
            state["engine"] = self.engine.state_dict()
        return state

    def load_engine_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.epoch_log = list(state["epoch_log"])
        self.store.load_state_dict(state["store"])
        if self.engine is not None:
            self.engine.load_state_dict(state["engine"])
        if self.feature_cache is not None:
            self.feature_cache.load_state_dict(state["feature_cache"])
