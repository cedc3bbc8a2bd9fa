"""Where an end-to-end training step spends its time, exact vs RSC (torch.profiler, CPU).

    python benchmarks/rsc_profile.py --dataset synthetic-1m --model gcn --json rsc_profile_gcn.json

(takes the shared benchmark lock itself around each profiled section; do not wrap it in ``flock``)

Builds the real trainer, runs the exact warm-up until RSC approximates with a warm cache, then
profiles ``--epochs`` training steps (default 10 = one resample period, so sampling cost is
amortised as in training) and splits their time into:

* ``spmm_fwd``: forward SpMMs (exact in both engines);
* ``spmm_bwd``: backward SpMMs (exact, or sampled incl. resampling for RSC);
* ``linear``: dense matmuls, forward and backward (``aten::linear``, ``Addmm/MmBackward0``);
* ``dropout``: mask generation and application, forward and backward;
* ``other``: activations, loss, optimiser, autograd bookkeeping (the rest of the step; for GCNII
  also its ``h @ W`` forward, and its scalar products land in ``dropout``'s ``MulBackward0``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import _common  # noqa: F401  (puts src/ on the path)
import rsc_common
from torch.profiler import ProfilerActivity, profile

from approxgnn.datasets import load_dataset
from approxgnn.rsc import RSCConfig
from approxgnn.train import TrainConfig, build_trainer
from approxgnn.train.results import format_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


EVAL = "autograd::engine::evaluate_function: "


def categorise(prof, step_s: float) -> dict[str, float]:
    """Sum profiler totals into the categories of the module docstring (each event counted once:
    backward nodes through their ``evaluate_function`` record, forward ops through the outermost op)."""
    cat = {"spmm_fwd": 0.0, "spmm_bwd": 0.0, "linear": 0.0, "dropout": 0.0}
    for e in prof.key_averages():
        name, total = e.key, e.cpu_time_total / 1e6
        if name in ("ExactSpMM", "SampledSpMM"):
            cat["spmm_fwd"] += total
        elif name in (EVAL + "ExactSpMMBackward", EVAL + "SampledSpMMBackward"):
            cat["spmm_bwd"] += total
        elif name in ("aten::linear", EVAL + "AddmmBackward0", EVAL + "MmBackward0"):
            cat["linear"] += total
        elif name in ("aten::dropout", "_HashDropout", EVAL + "_HashDropoutBackward", EVAL + "MulBackward0"):
            cat["dropout"] += total
    cat["other"] = max(step_s - sum(cat.values()), 0.0)
    return cat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic-1m")
    p.add_argument("--model", default="gcn")
    p.add_argument("--layers", type=int, default=None, help="default: 3 (gcn, sage), 4 (gcn2)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=10, help="profiled steps")
    p.add_argument("--data-root", default=str(SHARED) if SHARED.is_dir() else None)
    p.add_argument("--quick", action="store_true", help="synthetic-50k, 3 profiled steps")
    p.add_argument("--max-busy", type=float, default=0.25,
                   help="wait until other processes use fewer cores than this before profiling")
    p.add_argument("--lock", default=rsc_common.LOCK, help="benchmark lock ('' for none); do not also wrap in flock")
    p.add_argument("--json")
    a = p.parse_args()
    if a.quick:
        a.dataset, a.epochs = "synthetic-50k", 3
    layers = a.layers or (4 if a.model == "gcn2" else 3)
    data = load_dataset(a.dataset, root=a.data_root, seed=0)
    print(f"[{a.dataset}] {data.num_nodes} nodes, {data.num_edges} edges; {a.model} {layers}x{a.hidden}")
    rows, raw = [], {}
    for engine in ("exact", "rsc"):
        warm = 2
        cfg = TrainConfig(dataset=a.dataset, model=a.model, engine=engine, layers=layers, hidden=a.hidden,
                          dropout=a.dropout, epochs=1000, device="cpu", progress=False,
                          rsc=RSCConfig(budget=a.budget, warmup=warm))
        tr = build_trainer(cfg, data)
        for e in range(warm + 1):  # exact warm-up, then the first approximate step (a resample)
            tr.train_epoch(e)
        with rsc_common.quiet_lock(a.lock, a.max_busy):
            t0 = time.perf_counter()
            with rsc_common.others_meter() as meter, profile(activities=[ProfilerActivity.CPU]) as prof:
                steps = [tr.train_epoch(e)["step_time_s"] for e in range(warm + 1, warm + 1 + a.epochs)]
        wall = time.perf_counter() - t0
        step_s = sum(steps)
        cat = {k: v / a.epochs for k, v in categorise(prof, step_s).items()}
        st = tr.stats()
        row = {"engine": engine, "step_s": step_s / a.epochs, **cat, "others_cpu": meter.cores}
        rows.append(row)
        raw[engine] = {"steps_s": steps, "wall_s": wall, "categories_s": cat, "engine_stats": st,
                       "top_ops": [{"name": e.key, "self_s": e.self_cpu_time_total / 1e6 / a.epochs,
                                    "total_s": e.cpu_time_total / 1e6 / a.epochs, "calls": e.count}
                                   for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]}
        print(f"{engine}: {step_s / a.epochs:.3f} s/step")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        del tr
    for r in rows:
        r["speedup"] = rows[0]["step_s"] / r["step_s"]
    print(format_table(rows, ["engine", "step_s", "spmm_fwd", "spmm_bwd", "linear", "dropout", "other", "speedup", "others_cpu"]))
    _common.write_json(a.json, {"dataset": a.dataset, "model": a.model, "layers": layers, "hidden": a.hidden,
                                "budget": a.budget, "profiled_steps": a.epochs, "rows": rows, "raw": raw})


if __name__ == "__main__":
    main()
