"""A PyG user's full-batch GCN, GraphSAGE and deep GCNII, plain against ``approximate(model)``, in one run.

    OMP_NUM_THREADS=1 python benchmarks/pyg_approximate.py --dataset synthetic-hard-100k tolokers \\
        --epochs 100 --seeds 0 --json benchmarks/pyg_approximate.json

The user's script: ``to_pyg(dataset)``, ``torch_geometric.nn.models.GCN`` / ``GraphSAGE`` on a
sparse ``adj_t`` (torch CSR: PyG's SpMM path, much faster on CPU than scatter over ``edge_index``,
which ``--adj edge_index`` selects), GCN with ``cached=True`` as PyG's examples do for a fixed graph, Adam, dropout,
one full-graph step per epoch, evaluation every epoch, test metric at the best validation epoch.
The only change for the approximate run is ``model = approximate(model, epochs=E)`` (the library's
default budget and schedule). Plain and approximate runs alternate epoch by epoch, so load from
other processes on a shared machine hits both alike. Per run: median step time (forward, backward,
optimiser; evaluation excluded), total training time, best validation and its test metric, and the
training time until validation first reached the plain run's best minus 0.5 pp (``tta``; a miss is
``None``). ``train_time_s`` is every training step end to end (the first, which builds caches,
and the re-allocation epochs included); ``train_ratio`` is approximate over plain. ``--archs gcn2`` is
a GCNII of ``--gcn2-layers`` (64) ``GCN2Conv`` layers as in the GCNII paper's Cora setting
(α = 0.1, θ = 0.5, shared weights, dropout 0.6, weight decay 0.01 on the convolutions). ``--budget-one`` adds ``approximate(model, budget=1.0)``: the library's exact operator
and no sampling, which separates the kernel swap from RSC's sampled backward. Needs ``torch_geometric``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import torch
import torch.nn.functional as F

from approxgnn.datasets import load_dataset
from approxgnn.pyg import approximate, engine_of, to_pyg
from approxgnn.rsc import RSCConfig
from approxgnn.train import time_to_reach
from approxgnn.train.metrics import evaluate_logits
from approxgnn.train.results import format_table

ARCHS = ("gcn", "sage", "gcn2", "dirsage")
TTA_MARGIN = 0.005


class UserRun:
    """One PyG user's training loop, advanced one epoch at a time."""

    def __init__(self, data: Any, metric: str, arch: str, budget: float | None, seed: int,
                 args: argparse.Namespace) -> None:
        from torch_geometric.nn.models import GCN, GraphSAGE

        torch.manual_seed(seed)
        params: Any = None
        self.data, self.metric, self.approx = data, metric, budget is not None
        # DirGNNConv flips its input, so it takes edge_index (PyG's scatter path for the plain model).
        self.adj = data.adj_t if args.adj == "adj_t" and arch != "dirsage" else data.edge_index
        kw = dict(dropout=args.dropout)
        if arch == "gcn":
            model = GCN(data.num_features, args.hidden, args.layers, data.num_classes, cached=True, **kw)
        elif arch == "sage":
            model = GraphSAGE(data.num_features, args.hidden, args.layers, data.num_classes, **kw)
        elif arch == "dirsage":
            model = DirSAGE(data.num_features, args.hidden, args.layers, data.num_classes, args.dropout)
        else:
            model = GCNII(data.num_features, args.hidden, args.gcn2_layers, data.num_classes)
            params = [{"params": model.convs.parameters(), "weight_decay": 0.01},
                      {"params": model.lins.parameters(), "weight_decay": 5e-4}]
        opts = {} if args.min_layer_flops is None else {"min_layer_flops": args.min_layer_flops}
        self.model = model if budget is None else approximate(model, budget=budget, epochs=args.epochs, **opts)
        self.opt = torch.optim.Adam(params or self.model.parameters(), lr=args.lr, weight_decay=5e-4)
        self.curve: list[dict[str, float]] = []
        self.train_time = self.wall_time = 0.0
        self.best = (-1.0, float("nan"), -1)  # (val, test, epoch)

    def epoch(self, e: int) -> None:
        w0 = time.perf_counter()
        d, m = self.data, self.model
        t0 = time.perf_counter()
        m.train()
        self.opt.zero_grad()
        out = m(d.x, self.adj)
        F.cross_entropy(out[d.train_mask], d.y[d.train_mask]).backward()
        self.opt.step()
        step = time.perf_counter() - t0
        self.train_time += step
        m.eval()
        with torch.no_grad():
            logits = m(d.x, self.adj)
        val = evaluate_logits(logits[d.val_mask], d.y[d.val_mask], self.metric)
        test = evaluate_logits(logits[d.test_mask], d.y[d.test_mask], self.metric)
        self.wall_time += time.perf_counter() - w0
        self.curve.append({"epoch": e, "time_s": self.train_time, "step_s": step, "val": val, "test": test})
        if val > self.best[0]:
            self.best = (val, test, e)

    def summary(self) -> dict[str, Any]:
        steps = [p["step_s"] for p in self.curve[1:]] or [p["step_s"] for p in self.curve]  # epoch 0 builds caches
        out = {"step_median_s": statistics.median(steps), "train_time_s": self.train_time, "wall_time_s": self.wall_time, "val": self.best[0],
               "test": self.best[1], "best_epoch": self.best[2]}
        if self.approx:
            out["rsc"] = engine_of(self.model).stats()
        return out


class GCNII(torch.nn.Module):
    """Linear in, ``layers`` GCN2Conv with initial residual and identity mapping, linear out."""

    def __init__(self, f_in: int, hidden: int, layers: int, classes: int, dropout: float = 0.6) -> None:
        from torch_geometric.nn import GCN2Conv

        super().__init__()
        self.lins = torch.nn.ModuleList([torch.nn.Linear(f_in, hidden), torch.nn.Linear(hidden, classes)])
        self.convs = torch.nn.ModuleList(GCN2Conv(hidden, alpha=0.1, theta=0.5, layer=i + 1, cached=True)
                                         for i in range(layers))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, adj: Any) -> torch.Tensor:
        x = x0 = self.lins[0](F.dropout(x, self.dropout, self.training)).relu()
        for conv in self.convs:
            x = conv(F.dropout(x, self.dropout, self.training), x0, adj).relu()
        return self.lins[1](F.dropout(x, self.dropout, self.training))


class DirSAGE(torch.nn.Module):
    """Directed GraphSAGE: each layer a ``DirGNNConv`` (in- and out-neighbour means; the reversed
    graph is built inside its forward on every call)."""

    def __init__(self, f_in: int, hidden: int, layers: int, classes: int, dropout: float) -> None:
        from torch_geometric.nn import DirGNNConv, SAGEConv

        super().__init__()
        dims = [f_in] + [hidden] * (layers - 1) + [classes]
        self.convs = torch.nn.ModuleList(DirGNNConv(SAGEConv(a, b)) for a, b in zip(dims, dims[1:]))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(F.dropout(x, self.dropout, self.training), edge_index)
            if i < len(self.convs) - 1:
                x = x.relu()
        return x


def bench(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    ds = load_dataset(name, root=args.data_root)
    data = to_pyg(ds)
    if args.adj == "adj_t":  # PyG's sparse-matrix input: a torch CSR with rows = targets
        from torch_geometric.utils import to_torch_csr_tensor

        data.adj_t = to_torch_csr_tensor(data.edge_index.flip(0), size=(data.num_nodes, data.num_nodes))
    rows = []
    for seed in args.seeds:
        for arch in args.archs:
            budgets = {"plain": None, "approx": RSCConfig.budget, **({"approx_c1": 1.0} if args.budget_one else {})}
            runs = {k: UserRun(data, ds.metric, arch, b, seed, args) for k, b in budgets.items()}
            for e in range(args.epochs):
                for r in runs.values():
                    r.epoch(e)
            res = {k: r.summary() for k, r in runs.items()}
            plain, approx = res["plain"], res["approx"]
            level = plain["val"] - TTA_MARGIN
            tta = {k: time_to_reach(r.curve, level) for k, r in runs.items()}
            row = {"dataset": name, "arch": arch, "seed": seed, "metric": ds.metric, "epochs": args.epochs,
                   **res, "tta_level": level, "tta_plain_s": tta["plain"], "tta_approx_s": tta["approx"],
                   "step_speedup": plain["step_median_s"] / approx["step_median_s"],
                   "train_ratio": approx["train_time_s"] / plain["train_time_s"],
                   "wall_ratio": approx["wall_time_s"] / plain["wall_time_s"],
                   "tta_speedup": None if tta["approx"] is None or tta["plain"] is None else tta["plain"] / tta["approx"],
                   "test_delta_pp": 100 * (approx["test"] - plain["test"])}
            if args.budget_one:  # our operator with the exact backward: what the kernel swap alone gives
                row.update(tta_approx_c1_s=tta["approx_c1"],
                           step_speedup_c1=plain["step_median_s"] / res["approx_c1"]["step_median_s"])
            rows.append(row)
            print(format_table([_flat(row)], COLUMNS), flush=True)
    return rows


COLUMNS = ["dataset", "arch", "seed", "plain_step_ms", "approx_step_ms", "step_speedup", "plain_train_s",
           "approx_train_s", "train_ratio", "tta_plain_s",
           "tta_approx_s", "tta_speedup", "plain_test", "approx_test", "test_delta_pp", "c1_step_ms", "c1_test"]


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    return {**{k: r[k] for k in ("dataset", "arch", "seed", "step_speedup", "train_ratio", "tta_plain_s",
                                 "tta_approx_s", "tta_speedup", "test_delta_pp")},
            "plain_train_s": r["plain"]["train_time_s"], "approx_train_s": r["approx"]["train_time_s"],
            "plain_step_ms": 1e3 * r["plain"]["step_median_s"], "approx_step_ms": 1e3 * r["approx"]["step_median_s"],
            "plain_test": r["plain"]["test"], "approx_test": r["approx"]["test"],
            "c1_step_ms": 1e3 * r["approx_c1"]["step_median_s"] if "approx_c1" in r else None,
            "c1_test": r["approx_c1"]["test"] if "approx_c1" in r else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", nargs="+", default=["synthetic-hard-100k", "tolokers"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=["gcn", "sage"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--gcn2-layers", type=int, default=64, help="GCN2Conv layers of --archs gcn2")
    p.add_argument("--min-layer-flops", type=int, default=None,
                   help="approximate()'s min_layer_flops (default: its own; 0 samples every layer)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--adj", choices=["adj_t", "edge_index"], default="adj_t",
                   help="the graph as the model gets it: a torch sparse CSR adj_t (PyG's fast path) or edge_index")
    p.add_argument("--budget-one", action="store_true",
                   help="also run approximate(model, budget=1.0): the library's exact operator, no sampling")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = [r for name in args.dataset for r in bench(name, args)]
    print(format_table([_flat(r) for r in rows], COLUMNS))
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    _common.write_json(args.json, {"command": vars(args), "env": env, "tta_margin": TTA_MARGIN, "rows": rows})


if __name__ == "__main__":
    main()
