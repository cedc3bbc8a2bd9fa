"""A PyG user's mini-batch loop (README, "ReFresh in a PyG training loop") with and without the cache.

    OMP_NUM_THREADS=1 python benchmarks/pyg_refresh_loop.py --datasets cora,tolokers --seeds 0,1,2 \
        --json benchmarks/pyg_refresh_loop.json --report /tmp/pyg_loop_report
    python benchmarks/pyg_refresh_loop.py --quick          # smoke test: Cora, one seed, 3 epochs

Per dataset and seed, the same PyG ``GraphSAGE`` (same initialisation, batches and samples) is
trained by the loop of the README through :class:`approxgnn.pyg.HistoryGNN` with policy ``none``
(no cache: the baseline), ``feature`` (the same byte budget spent on a feature cache only) and
``refresh``. Each run is evaluated after every epoch by exact layer-wise inference (not timed) and
reported by :mod:`approxgnn.report`, as ``approxgnn report`` reports ``approxgnn train`` runs: the
test metric at the best validation epoch, Δ against the ``none`` run of the same seed, training
time (loading, forward, backward, step, push) and its speed-up, time-to-accuracy speed-up, feature
MiB read from the store per epoch (median); then a table over seeds that adds the hit rate.
``--report DIR`` writes the report's Markdown and validation-vs-time curves.
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

from approxgnn import set_threads
from approxgnn.datasets import load_dataset
from approxgnn.pyg import HistoryGNN, NeighborBatchLoader
from approxgnn.report import COLUMNS, build_report, markdown_table, render
from approxgnn.train.metrics import evaluate_logits

# Per dataset: sampling, model and cache settings. Staleness is about two epochs' worth of batches,
# so that entries really expire; the budget holds every node's hidden row and the features.
PRESETS: dict[str, dict[str, Any]] = {
    "cora": {"fanouts": [10, 10], "batch_size": 35, "hidden": 64, "epochs": 20, "lr": 0.01, "staleness": 8},
    "citeseer": {"fanouts": [10, 10], "batch_size": 30, "hidden": 64, "epochs": 20, "lr": 0.01, "staleness": 8},
    "tolokers": {"fanouts": [15, 10], "batch_size": 512, "hidden": 64, "epochs": 10, "lr": 0.003, "staleness": 24},
}


def one_run(data, name: str, policy: str, seed: int, epochs: int) -> dict[str, Any]:
    """One run of the README's loop, as a ``result.json``-shaped dict (what :mod:`approxgnn.report`
    reads): after every epoch, exact layer-wise inference gives the validation and test metrics
    (not timed); ``test`` is taken at the best validation epoch, ``test_last`` after the last."""
    p = PRESETS[name]
    torch.manual_seed(seed)
    loader = NeighborBatchLoader(data, p["fanouts"], batch_size=p["batch_size"], input_nodes=data.train_mask,
                                 seed=seed)
    model = GraphSAGE(data.x.shape[1], p["hidden"], 2, data.num_classes, dropout=0.5)
    cache_mb = 2 * data.num_nodes * max(data.x.shape[1], p["hidden"]) * 4 / 2**20
    wrapped = HistoryGNN(model, loader, cache_mb=cache_mb, policy=policy, staleness=p["staleness"])
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
    y = torch.as_tensor(data.y)
    split = {k: torch.from_numpy(np.flatnonzero(getattr(data, f"{k}_mask"))) for k in ("val", "test")}
    curve, times, reads, hits, spent = [], [], [], [], 0.0
    for epoch in range(epochs):
        read0, t0 = loader.store.bytes_read, time.perf_counter()
        wrapped.train()
        for batch in loader:
            opt.zero_grad()
            out = wrapped(batch)[: batch.batch_size]
            F.cross_entropy(out, batch.y[: batch.batch_size]).backward()
            opt.step()
            wrapped.push(batch)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        reads.append(loader.store.bytes_read - read0)
        hits.append(wrapped.stats().get("hit_rate"))
        logits = wrapped.inference()  # every node: val and test from one exact pass
        ev = {k: evaluate_logits(logits[ids], y[ids], data.metric) for k, ids in split.items()}
        curve.append({"epoch": epoch, "time_s": spent, **ev})
    best = max(curve, key=lambda c: c["val"])
    r = {"run": f"{name}-{policy}-s{seed}", "dataset": name, "model": "pyg-sage", "engine": "pyg", "policy": policy,
         "metric": data.metric, "val": best["val"], "test": best["test"], "test_last": curve[-1]["test"],
         "best_epoch": best["epoch"], "train_time_s": spent, "epoch_time_median_s": statistics.median(times),
         "feature_bytes_read": statistics.median(reads), "hit_rate": hits[-1], "curve": curve,
         "config": {"seed": seed, **p, "cache_mb": cache_mb}}
    print(f"  {name} {policy:8s} seed {seed}: test {r['test']:.4f} (last {r['test_last']:.4f})  "
          f"epoch {r['epoch_time_median_s']:.3f}s  read {r['feature_bytes_read'] / 2**20:.2f} MB/epoch  "
          f"hit {r['hit_rate']}", flush=True)
    return r


def summarise(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and policy, over seeds: the test metric (mean ± sd) and the medians of the
    report's per-run comparisons with the ``none`` run of the same seed (``rows``: build_report)."""
    out = []
    for name in dict.fromkeys(r["dataset"] for r in runs):
        for policy in dict.fromkeys(r["policy"] for r in runs):
            pick = [i for i, r in enumerate(runs) if r["dataset"] == name and r["policy"] == policy]
            if not pick:
                continue
            tests = [100 * runs[i]["test"] for i in pick]
            tta = [rows[i]["tta_speedup"] for i in pick]
            reached = [t for t in tta if isinstance(t, float)]
            out.append({"dataset": name, "policy": policy, "metric": runs[pick[0]]["metric"],
                        "test_%": f"{statistics.mean(tests):.2f} ± {statistics.pstdev(tests):.2f}",
                        "Δtest_pp": statistics.mean(rows[i]["Δtest_pp"] for i in pick),
                        "epoch_s": statistics.median(runs[i]["epoch_time_median_s"] for i in pick),
                        "speedup": statistics.median(rows[i]["speedup"] for i in pick),
                        "tta_speedup": statistics.median(reached) if reached else None,
                        "reached": f"{len(reached)}/{len(tta)}",
                        "MB_read_per_epoch": statistics.median(runs[i]["feature_bytes_read"] for i in pick) / 2**20,
                        "hit_rate": _median([runs[i]["hit_rate"] for i in pick]), "seeds": len(pick)})
    return out


def _median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="cora,tolokers")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--policies", default="none,feature,refresh",
                   help="HistoryGNN policies; `none` (the baseline) always runs")
    p.add_argument("--epochs", type=int, help="override the preset")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    p.add_argument("--data-root", default=os.environ.get("APPROXGNN_DATA") or (str(shared) if shared.exists() else None))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the graphs are small)")
    p.add_argument("--quick", action="store_true", help="smoke test: Cora, one seed, 3 epochs")
    p.add_argument("--json")
    p.add_argument("--report", metavar="DIR", help="also write `approxgnn report`'s report.md and curves into DIR")
    a = p.parse_args()
    if a.quick:
        a.datasets, a.seeds, a.epochs = "cora", "0", 3
    set_threads(a.threads, numba_threads=False)  # after numba's pool starts, or the first parallel kernel undoes it
    runs = []
    for name in a.datasets.split(","):
        data = load_dataset(name, root=a.data_root, split=0, seed=0)
        for seed in (int(s) for s in a.seeds.split(",")):
            for policy in dict.fromkeys(["none", *a.policies.split(",")]):
                runs.append(one_run(data, name, policy, seed, a.epochs or PRESETS[name]["epochs"]))
    rows = build_report(runs)  # per run, against the `none` run of the same dataset and seed
    summary = summarise(runs, rows)
    print(markdown_table(rows, COLUMNS), markdown_table(summary), sep="\n\n")
    if a.report:
        print(f"wrote {render(runs, a.report)[0]}")
    _common.write_json(a.json, {"args": vars(a), "presets": PRESETS, "summary": summary, "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()
