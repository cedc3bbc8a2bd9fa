"""Full-batch training: the exact engine and RSC share this trainer; only the propagation differs.

Exact training runs the model on :class:`ExactPropagation` with the do-nothing :class:`Engine`; RSC's
:class:`~approxgnn.rsc.SampledPropagation` is both the model's operator and the trainer's engine.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import Dataset
from ..graph import normalize
from ..nn import Engine, ExactPropagation, FirstHop, Propagation, build_model
from ..ops import SparseOperator
from ..precompute import precompute_first_hop
from .base import Trainer, dataset_graph, resolve_device, synchronizer
from .config import TrainConfig
from .schedule import build_scheduler
from .metrics import evaluate_logits


def build_propagation(cfg: TrainConfig, op: SparseOperator, model: torch.nn.Module,
                      adj_row_norm: torch.Tensor, first_hop: bool = False) -> Propagation:
    """The training-time operator of the configured engine (evaluation always uses the exact one).
    ``first_hop``: layer 0's aggregation is precomputed, so RSC budgets the other layers only."""
    if cfg.engine == "exact":
        return ExactPropagation(op)
    if cfg.engine == "rsc":
        from ..rsc import SampledPropagation

        return SampledPropagation(op, adj_row_norm, model.spmm_widths(first_hop), cfg.rsc, epochs=cfg.epochs)
    raise ValueError(f"engine {cfg.engine!r} is not a full-batch engine")


class FullBatchTrainer(Trainer):
    """Adam on the whole graph each step; exact evaluation every epoch.

    With the precomputed first hop (:meth:`TrainConfig.first_hop_path`), the model's input is a
    :class:`FirstHop` over the whole graph: layer 0 is a dense product, no SpMM either way.
    """

    def __init__(self, cfg: TrainConfig, data: Dataset) -> None:
        self.cfg, self.metric = cfg, data.metric
        self.device = resolve_device(cfg.device)
        graph = dataset_graph(data, in_memory=True)
        self.model = build_model(cfg.model, data.num_features, cfg.hidden, data.num_classes, cfg.layers,
                                 cfg.dropout, cfg.batch_norm, cfg.resolved_input_dropout()).to(self.device)
        adj = normalize(graph, self.model.norm)
        self.op = SparseOperator.from_adjacency(adj).to(self.device)
        self.eval_prop = ExactPropagation(self.op)
        use_first_hop, why = cfg.first_hop_path()
        self.prop = build_propagation(cfg, self.op, self.model, adj.row_norm().to(self.device), use_first_hop)
        # RSC's operator is its own engine; the exact operator has none (the no-op Engine).
        self.engine = self.prop if isinstance(self.prop, Engine) else Engine()
        x = torch.as_tensor(data.x, dtype=torch.float32).to(self.device)
        precompute: dict[str, Any] = {"path": "precomputed" if use_first_hop else "plain", "reason": why}
        self.x: torch.Tensor | FirstHop = x
        if use_first_hop:
            table = precompute_first_hop(graph, data.x, self.model.norm, directory=cfg.precompute_dir,
                                         dtype=cfg.precompute_dtype)
            # Full batch holds the table in memory as float32 (an on-disk one found from an earlier
            # run is read in; a float16 one is widened once).
            arr = np.array(table.table) if isinstance(table.table, np.memmap) else table.table
            # GCN's [ÂX | Â1] holds the raw features inside ÂX (X is not kept); SAGE's self term needs X.
            rows = torch.from_numpy(arr).float().to(self.device)
            self.x = FirstHop(rows) if self.model.norm == "gcn" else FirstHop(rows, x)
            precompute.update(table.info())
        self.y = torch.as_tensor(data.y).to(self.device)
        self.masks = {k: torch.as_tensor(getattr(data, f"{k}_mask")).to(self.device) for k in ("train", "val", "test")}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(cfg.lr_schedule, self.optimizer, cfg.epochs)
        self._info = {"num_nodes": data.num_nodes, "nnz": graph.nnz, "num_features": data.num_features,
                      "device": str(self.device), "input_dropout": cfg.resolved_input_dropout(),
                      "precompute": precompute}

    def train_epoch(self, epoch: int, *, compare_exact: bool = False) -> dict[str, float]:
        """One full-batch step. ``compare_exact`` (a diagnostic, for an approximate engine): first
        compute the exact gradient ``∇_exact`` under the same dropout masks (the RNG state replayed),
        then take the real step, and report how the gradient it used, ``∇``, agrees:
        ``grad_rel_err = ‖∇ − ∇_exact‖ / ‖∇_exact‖`` and ``grad_cos = cos(∇, ∇_exact)`` over all
        parameters. The extra pass is left out of ``step_time_s``; with batch norm its running
        statistics see that pass too."""
        sync = synchronizer(self.device)
        t0 = time.perf_counter()
        self.engine.on_epoch_start(epoch, self.cfg.epochs)
        self.model.train()
        probe_s, exact = 0.0, None
        if compare_exact and self.prop is not self.eval_prop:
            t1 = time.perf_counter()
            rng = torch.random.get_rng_state(), (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                                                 else None)
            self.optimizer.zero_grad(set_to_none=True)
            self._loss(self.eval_prop).backward()
            exact = self._flat_grad()
            torch.random.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], self.device)
            probe_s = time.perf_counter() - t1
        loss = self._loss(self.prop)
        grad_norm = self.step(loss)
        sync()
        rec = {"loss": float(loss.detach()), "grad_norm": grad_norm, "step_time_s": time.perf_counter() - t0 - probe_s}
        if exact is not None:
            got = self._flat_grad()
            rec["grad_rel_err"] = float((got - exact).norm() / exact.norm().clamp_min(1e-30))
            rec["grad_cos"] = float(F.cosine_similarity(got, exact, dim=0))
        return rec

    def _loss(self, prop: Propagation) -> torch.Tensor:
        """Cross-entropy of the training nodes, the model run on ``prop``."""
        m = self.masks["train"]
        return F.cross_entropy(self.model(self.x, prop)[m], self.y[m])

    def _flat_grad(self) -> torch.Tensor:
        """The parameters' gradients, one flat vector (zeros where a parameter got none)."""
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                          for p in self.model.parameters() if p.requires_grad])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        out = self.model(self.x, self.eval_prop)
        return {k: evaluate_logits(out[m], self.y[m], self.metric) for k, m in self.masks.items()}

    def run_info(self) -> dict[str, Any]:
        return self._info

