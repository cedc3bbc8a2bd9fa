"""Full-batch GCN training step: approxgnn exact and RSC against PyG's ``GCN`` (``GCNConv``) in one run.

    python benchmarks/fullbatch_vs_pyg.py --dataset synthetic-hard-100k --epochs 20 --json fullbatch_vs_pyg.json
    python benchmarks/fullbatch_vs_pyg.py --precompute on,off --engines exact  # each engine with and without

What a PyG user runs instead: ``torch_geometric.nn.models.GCN`` (``GCNConv(cached=True)``, so the
normalisation is computed once) on a CSR ``adj_t`` (a torch sparse CSR tensor), Adam, dropout, the
same width and depth, one full-graph step per epoch. Ours: the library's ``FullBatchTrainer`` for
``--engine exact`` and ``--engine rsc`` (defaults), each once per ``--precompute`` mode (``on``: the
first aggregation precomputed, its one-off cost printed; ``off``: the plain path). The engines take turns epoch by epoch, so load
from other processes on the shared machine hits all of them alike; each row is the median step
time (forward, backward, optimiser; evaluation excluded). Needs ``torch_geometric`` (``make peer``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import _common  # noqa: F401  (puts src/ on the path)
import torch
import torch.nn.functional as F

from approxgnn.datasets import load_dataset
from approxgnn.train import TrainConfig, build_trainer
from approxgnn.train.results import format_table


def pyg_step(data, hidden: int, layers: int, dropout: float, lr: float):
    """A PyG user's full-batch GCN step as a closure returning its wall-clock seconds."""
    from torch_geometric.nn.models import GCN
    from torch_geometric.utils import to_torch_csr_tensor

    n = data.num_nodes
    ei = torch.as_tensor(data.edge_index)
    ei = torch.cat([ei, ei.flip(0)], 1)  # undirected, as our graph layer symmetrises
    adj_t = to_torch_csr_tensor(ei, size=(n, n))
    x = torch.as_tensor(data.x, dtype=torch.float32)
    y = torch.as_tensor(data.y)
    mask = torch.as_tensor(data.train_mask)
    model = GCN(data.num_features, hidden, layers, data.num_classes, dropout=dropout, cached=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)

    def step() -> float:
        t0 = time.perf_counter()
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x, adj_t)
        F.cross_entropy(out[mask], y[mask]).backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic-hard-100k")
    p.add_argument("--data-root")
    p.add_argument("--epochs", type=int, default=20, help="timed steps per engine (after 2 untimed)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--engines", default="exact,rsc", help="comma-separated: exact, rsc")
    p.add_argument("--precompute", default="on", help="comma-separated --precompute modes to run each engine with")
    p.add_argument("--json")
    a = p.parse_args()

    data = load_dataset(a.dataset, root=a.data_root)
    print(f"[{a.dataset}] {data.num_nodes} nodes, {data.num_edges} edges, {data.num_features} features; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    steps = {"pyg GCNConv": pyg_step(data, a.hidden, a.layers, a.dropout, a.lr)}
    precompute: dict[str, object] = {}
    for engine in a.engines.split(","):
        for mode in a.precompute.split(","):
            cfg = TrainConfig(dataset=a.dataset, model="gcn", engine=engine, layers=a.layers, hidden=a.hidden,
                              dropout=a.dropout, lr=a.lr, epochs=a.epochs + 2, device="cpu", progress=False,
                              precompute=mode)
            tr = build_trainer(cfg, data)
            name = f"approxgnn {engine}" + (f" precompute {mode}" if "," in a.precompute else "")
            precompute[name] = tr.run_info().get("precompute")
            print(f"{name}: first hop {precompute[name]}", flush=True)
            steps[name] = (lambda tr=tr: lambda e: tr.train_epoch(e)["step_time_s"])()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for epoch in range(a.epochs + 2):
        for name, step in steps.items():
            t = step(epoch) if name.startswith("approxgnn") else step()
            if epoch >= 2:  # first steps: JIT, caches, RSC warm-up
                times[name].append(t)
    base = statistics.median(times["pyg GCNConv"])
    rows = [{"engine": k, "step_median_s": statistics.median(v), "vs_pyg": base / statistics.median(v),
             "steps": len(v)} for k, v in times.items()]
    print(format_table(rows, ["engine", "step_median_s", "vs_pyg", "steps"]))
    _common.write_json(a.json, {"args": vars(a), "rows": rows, "times": times, "precompute": precompute})


if __name__ == "__main__":
    main()
