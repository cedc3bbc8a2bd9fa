"""A PyG user's mini-batch loop (README, "ReFresh in a PyG training loop") with and without the cache.

    python benchmarks/pyg_refresh_loop.py --datasets cora,tolokers --seeds 0,1,2 --json pyg_refresh_loop.json
    python benchmarks/pyg_refresh_loop.py --quick          # smoke test: Cora, one seed, 3 epochs

Per dataset and seed, the same PyG ``GraphSAGE`` (same initialisation, batches and samples) is
trained by the loop of the README through :class:`approxgnn.pyg.HistoryGNN` with policy ``none``
(no cache: the baseline) and ``refresh``. Reported: the test metric after the last epoch (exact
layer-wise inference), the median training time per epoch (loading, forward, backward, step, push;
evaluation excluded), the feature MiB read from the store per epoch (median) and the hit rate.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.nn.models import GraphSAGE

from approxgnn.datasets import load_dataset
from approxgnn.pyg import HistoryGNN, NeighborBatchLoader
from approxgnn.report import markdown_table
from approxgnn.train.metrics import evaluate_logits

# Per dataset: sampling, model and cache settings. Staleness is about two epochs' worth of batches,
# so that entries really expire; the budget holds every node's hidden row and the features.
PRESETS: dict[str, dict[str, Any]] = {
    "cora": {"fanouts": [10, 10], "batch_size": 35, "hidden": 64, "epochs": 20, "lr": 0.01, "staleness": 8},
    "citeseer": {"fanouts": [10, 10], "batch_size": 30, "hidden": 64, "epochs": 20, "lr": 0.01, "staleness": 8},
    "tolokers": {"fanouts": [15, 10], "batch_size": 512, "hidden": 64, "epochs": 10, "lr": 0.003, "staleness": 24},
}


def one_run(data, name: str, policy: str, seed: int, epochs: int) -> dict[str, Any]:
    p = PRESETS[name]
    torch.manual_seed(seed)
    loader = NeighborBatchLoader(data, p["fanouts"], batch_size=p["batch_size"], input_nodes=data.train_mask,
                                 seed=seed)
    model = GraphSAGE(data.x.shape[1], p["hidden"], 2, data.num_classes, dropout=0.5)
    cache_mb = 2 * data.num_nodes * max(data.x.shape[1], p["hidden"]) * 4 / 2**20
    wrapped = HistoryGNN(model, loader, cache_mb=cache_mb, policy=policy, staleness=p["staleness"])
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
    times, reads, hits = [], [], []
    for _ in range(epochs):
        read0, t0 = loader.store.bytes_read, time.perf_counter()
        wrapped.train()
        for batch in loader:
            opt.zero_grad()
            out = wrapped(batch)[: batch.batch_size]
            F.cross_entropy(out, batch.y[: batch.batch_size]).backward()
            opt.step()
            wrapped.push(batch)
        times.append(time.perf_counter() - t0)
        reads.append(loader.store.bytes_read - read0)
        hits.append(wrapped.stats().get("hit_rate"))
    test = np.flatnonzero(data.test_mask)
    metric = evaluate_logits(wrapped.inference(test), torch.as_tensor(data.y[test]), data.metric)
    row = {"dataset": name, "policy": policy, "seed": seed, "metric": data.metric, "test": metric,
           "epoch_s": statistics.median(times), "MB_read": statistics.median(reads) / 2**20,
           "hit_rate": hits[-1]}
    print(f"  {name} {policy:8s} seed {seed}: test {metric:.4f}  epoch {row['epoch_s']:.3f}s  "
          f"read {row['MB_read']:.2f} MB/epoch  hit {row['hit_rate']}", flush=True)
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and policy: test mean ± sd over seeds, Δ against ``none``, medians of the rest."""
    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        base = [r for r in rows if r["dataset"] == name and r["policy"] == "none"]
        b_test = 100 * statistics.mean(r["test"] for r in base)
        b_time = statistics.median(r["epoch_s"] for r in base)
        for policy in dict.fromkeys(r["policy"] for r in rows):
            rs = [r for r in rows if r["dataset"] == name and r["policy"] == policy]
            tests = [100 * r["test"] for r in rs]
            t = statistics.median(r["epoch_s"] for r in rs)
            hit = [r["hit_rate"] for r in rs if r["hit_rate"] is not None]
            out.append({"dataset": name, "policy": policy, "metric": rs[0]["metric"],
                        "test_%": f"{statistics.mean(tests):.2f} ± {statistics.pstdev(tests):.2f}",
                        "Δtest_pp": f"{statistics.mean(tests) - b_test:+.2f}", "epoch_s": t, "speedup": b_time / t,
                        "MB_read_per_epoch": statistics.median(r["MB_read"] for r in rs),
                        "hit_rate": statistics.median(hit) if hit else None, "seeds": len(rs)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="cora,tolokers")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, help="override the preset")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    p.add_argument("--data-root", default=os.environ.get("APPROXGNN_DATA") or (str(shared) if shared.exists() else None))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the graphs are small)")
    p.add_argument("--quick", action="store_true", help="smoke test: Cora, one seed, 3 epochs")
    p.add_argument("--json")
    a = p.parse_args()
    if a.quick:
        a.datasets, a.seeds, a.epochs = "cora", "0", 3
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.datasets.split(","):
        data = load_dataset(name, root=a.data_root, split=0, seed=0)
        for seed in (int(s) for s in a.seeds.split(",")):
            for policy in ("none", "refresh"):
                rows.append(one_run(data, name, policy, seed, a.epochs or PRESETS[name]["epochs"]))
    summary = summarise(rows)
    print(markdown_table(summary))
    _common.write_json(a.json, {"args": vars(a), "presets": PRESETS, "summary": summary, "runs": rows})


if __name__ == "__main__":
    main()
