"""Time to accuracy, exact against RSC, with the two runs interleaved epoch by epoch.

    python benchmarks/rsc_tta.py --dataset synthetic-hard-1m --epochs 30 --json rsc_tta_1m.json

On a shared machine, two runs taken one after the other see different loads, and a 1.3x effect
drowns in that. Here both trainers live in one process and take turns: epoch ``e`` of exact, then
epoch ``e`` of RSC, so whatever else the machine is doing slows both alike. Each trainer is the
library's own (``approxgnn.train.build_trainer``) and steps exactly as ``approxgnn train`` would;
the curves record cumulative training-step time (evaluation excluded), as ``result.json`` does.

Reported, as ``approxgnn report`` reports runs (:mod:`approxgnn.report`; ``--report DIR`` also
writes its ``report.md`` and curves): the time-to-accuracy speed-up (exact's time to its best
validation metric minus 0.5 pp, over RSC's time to the same level), the run's speed-up and both
test metrics at the best validation epoch; plus the per-step speed-up of the approximate epochs.
``--json`` is rewritten after every epoch, and ``--resume`` is not offered: a half-run pair is not
comparable, so a rerun starts over.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import torch

from approxgnn.datasets import load_dataset
from approxgnn.report import COLUMNS, build_report, markdown_table, render
from approxgnn.train import TrainConfig, build_trainer


def as_result(engine: str, curve: list[dict[str, Any]], a: argparse.Namespace, metric: str) -> dict[str, Any]:
    """One trainer's curve in the shape of ``result.json`` (what :mod:`approxgnn.report` reads):
    the test metric at the best validation epoch, the training time, the curve."""
    best = max(curve, key=lambda r: r["val"])
    return {"run": engine, "dataset": a.dataset, "model": a.model, "engine": engine, "metric": metric,
            "val": best["val"], "test": best["test"], "best_epoch": best["epoch"],
            "train_time_s": curve[-1]["time_s"], "curve": curve, "config": {"seed": a.seed}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic-hard-1m")
    p.add_argument("--data-root")
    p.add_argument("--model", default="gcn")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precompute", default="auto", choices=("auto", "on", "off"),
                   help="--precompute of both runs (auto: the precomputed first hop where it applies)")
    p.add_argument("--json")
    p.add_argument("--report", metavar="DIR", help="also write `approxgnn report`'s report.md and curves into DIR")
    a = p.parse_args()

    data = load_dataset(a.dataset, root=a.data_root, seed=a.seed)
    print(f"[{a.dataset}] {data.num_nodes} nodes, {data.num_edges} edges, {int(data.train_mask.sum())} training "
          f"nodes; torch threads {torch.get_num_threads()}", flush=True)
    trainers = {e: build_trainer(TrainConfig(dataset=a.dataset, model=a.model, engine=e, layers=a.layers,
                                             hidden=a.hidden, epochs=a.epochs, lr=a.lr, seed=a.seed, progress=False,
                                             precompute=a.precompute), data)
                for e in ("exact", "rsc")}
    for e, tr in trainers.items():
        print(f"  {e}: first hop {tr.run_info().get('precompute')}", flush=True)
    curves: dict[str, list[dict]] = {e: [] for e in trainers}
    for epoch in range(a.epochs):
        for engine, tr in trainers.items():
            rec = tr.train_epoch(epoch)
            ev = tr.evaluate()
            tr.engine.on_epoch_end(epoch, ev["val"])
            spent = (curves[engine][-1]["time_s"] if curves[engine] else 0.0) + rec["step_time_s"]
            phase = tr.stats().get("rsc", "exact")
            curves[engine].append({"epoch": epoch, "time_s": spent, "step_time_s": rec["step_time_s"],
                                   "phase": phase, **ev})
            print(f"  {engine:5s} epoch {epoch:3d} ({phase:6s}) step {rec['step_time_s']:6.2f}s "
                  f"val {ev['val']:.4f} test {ev['test']:.4f}", flush=True)
        _common.write_json(a.json, {"args": vars(a), "curves": curves})

    results = [as_result(e, c, a, data.metric) for e, c in curves.items()]
    rows = build_report(results)  # against exact: Δtest, speed-up, time to accuracy
    print(markdown_table(rows, COLUMNS))
    approx = [i for i, r in enumerate(curves["rsc"]) if r["phase"] == "approx"]
    step_ratio = (statistics.median(curves["exact"][i]["step_time_s"] for i in approx)
                  / statistics.median(curves["rsc"][i]["step_time_s"] for i in approx)) if approx else None
    summary = {"tta_speedup": rows[1]["tta_speedup"], "approx_step_speedup": step_ratio,
               "run_speedup": rows[1]["speedup"], "delta_test_pp": rows[1]["Δtest_pp"]}
    print(summary)
    if a.report:
        print(f"wrote {render(results, a.report)[0]}")
    _common.write_json(a.json, {"args": vars(a), "curves": curves, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
