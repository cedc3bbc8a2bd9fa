"""RSC end to end: exact vs RSC training time and test metric, plus the ablation table and plot.

    python benchmarks/rsc_e2e.py --suite main --json rsc_e2e.json
    python benchmarks/rsc_e2e.py --suite ablation --grad-error --json rsc_ablation.json
    python benchmarks/rsc_e2e.py --quick                      # smoke run, a few minutes

The suites run for hours, so instead of being wrapped in ``flock`` they take the shared lock
``/tmp/approxgnn-bench.lock`` around each timed run (``--lock``) and release it in between.

Every run is ``approxgnn.train.run`` (the real trainer: exact evaluation every epoch, best-val
model selection). ``train_time_s`` is the sum of training-step times (forward, backward,
optimiser, RSC sampling), excluding evaluation. Each (dataset, model, variant) is repeated over
``--seeds`` (model initialisation and dropout; the graph and split stay fixed) and reported as
mean ± std. Before each run the script waits until other processes leave the CPUs nearly idle,
and records the cores they used during the run (``others_cpu``, see ``rsc_common``). ``--json`` is rewritten after every run; ``--resume`` skips runs already in it.

Variants: ``exact``; ``rsc`` (defaults: C=0.1, R=10, tune every 10, switch 0.8, warm-up 2,
top-k, greedy Δ/FLOP); ablations change one knob each (see ``VARIANTS``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import rsc_common

from approxgnn.datasets import load_dataset
from approxgnn.rsc import RSCConfig
from approxgnn.rsc.config import PRESETS
from approxgnn.report import tta_speedup, write_report
from approxgnn.train import TrainConfig, run
from approxgnn.train.results import format_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LAYERS = {"gcn": 3, "sage": 3, "gcn2": 4}
VARIANTS: dict[str, dict[str, Any] | None] = {
    "exact": None,
    "rsc": {},  # the library's defaults
    "paper": dict(PRESETS["paper"]),  # --rsc-preset paper
    "topk": {"selection": "topk"},
    "poisson": {"selection": "poisson"},
    "topk C=0.1": {"selection": "topk", "budget": 0.1},
    "topk C=0.3": {"selection": "topk", "budget": 0.3},
    "poisson C=0.1": {"selection": "poisson", "budget": 0.1},
    "poisson C=0.3": {"selection": "poisson", "budget": 0.3},
    "importance": {"selection": "importance"},
    "greedy-delta": {"allocation": "delta"},
    "greedy-delta/flop": {"allocation": "delta_per_flop"},
    "uniform": {"allocation": "uniform"},
    "R=1": {"cache_interval": 1},
    "R=50": {"cache_interval": 50},
    "switch=0.6": {"switch_time": 0.6},
    "switch=1.0": {"switch_time": 1.0},
    "guard": {"val_guard": True},
    "guard+switch=1.0": {"val_guard": True, "switch_time": 1.0},
    "C=0.3": {"budget": 0.3},
}
MAIN = ["exact", "rsc"]
# "rsc" is the default: top-k, greedy Δ/FLOP, R=10, switch 0.8 (so no separate rows for those).
ABLATION = ["exact", "rsc", "importance", "greedy-delta", "uniform", "R=1", "R=50", "switch=0.6", "switch=1.0",
            "guard", "guard+switch=1.0", "C=0.3"]


# Planetoid graphs with 3-4 layers of width 256 at lr 0.01 reach their best validation accuracy
# around epoch 4 (then overfit), so a 200-epoch comparison would only measure the first two
# approximate steps; at 1e-3 the best epoch is ~30-90 and the exact baseline is as good (~81 %).
LR = {"cora": 1e-3, "citeseer": 1e-3}


def lr_for(dataset: str, a: argparse.Namespace) -> float:
    return a.lr if a.lr is not None else LR.get(dataset, 0.01)


def epochs_for(dataset: str, a: argparse.Namespace) -> int:
    if dataset.startswith("synthetic-hard-"):
        return a.epochs_hard
    return a.epochs_large if dataset.startswith("synthetic-") else a.epochs_small


def run_dir(a: argparse.Namespace, dataset: str, model: str, variant: str, seed: int) -> str | None:
    """Where ``--runs-dir`` keeps this run's ``result.json`` (for ``approxgnn report``), or None."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in variant)
    return str(Path(a.runs_dir) / f"{dataset}-{model}-{slug}-s{seed}") if a.runs_dir else None


def run_one(data, dataset: str, model: str, variant: str, seed: int, epochs: int, a: argparse.Namespace) -> dict:
    over = VARIANTS[variant]
    rsc = RSCConfig(**{**({} if a.budget is None else {"budget": a.budget}), **(over or {})})
    cfg = TrainConfig(dataset=dataset, model=model, engine="exact" if over is None else "rsc", layers=LAYERS[model],
                      hidden=a.hidden, dropout=a.dropout, lr=lr_for(dataset, a), weight_decay=a.weight_decay,
                      epochs=epochs, seed=seed, device="cpu", progress=False, rsc=rsc,
                      out=run_dir(a, dataset, model, variant, seed))
    with rsc_common.quiet_lock(a.lock, a.max_busy):
        t0 = time.perf_counter()
        with rsc_common.others_meter() as meter:
            r = run(cfg, data)
        wall = time.perf_counter() - t0
    st = r.get("engine_stats") or {}
    det = st.get("detail", {})
    layers = det.get("layers", {})
    width = sum(v["width"] for v in layers.values()) or 1
    kept = sum((v["nnz_kept_frac_mean"] or 0.0) * v["width"] for v in layers.values()) / width if layers else None
    return {"dataset": dataset, "model": model, "variant": variant, "seed": seed, "epochs": epochs,
            "lr": cfg.lr,
            "metric": r["metric"], "test": r["test"], "val": r["val"], "best_epoch": r["best_epoch"],
            "train_time_s": r["train_time_s"], "eval_time_s": r["eval_time_s"], "wall_s": wall,
            "epoch_time_median_s": r["epoch_time_median_s"],
            "flops_kept_approx": kept, "sample_s": st.get("sample_s"), "backward_spmm_s": det.get("backward_spmm_s"),
            "guard_epoch": det.get("guard_epoch"), "switch_epoch": det.get("switch_epoch"),
            "ratios": st.get("ratios"), "others_cpu": meter.cores,
            "curve": [{"epoch": c["epoch"], "time_s": c["time_s"], "val": c["val"]} for c in r["curve"]]}


def gradient_error(data, dataset: str, model: str, variant: str, seed: int, epochs: int,
                   a: argparse.Namespace) -> tuple[float, float] | None:
    """Mean ‖∇θ_RSC − ∇θ_exact‖ / ‖∇θ_exact‖ and mean cosine(∇θ_RSC, ∇θ_exact) over the
    approximate steps of one training run.

    Each step is the trainer's own guarded step, ``train_epoch(epoch, compare_exact=True)``, which
    first computes the exact gradient under the same dropout masks and then steps with the RSC
    gradient, as in real training; a step counts when the engine's profile says every budgeted
    layer sampled (``SampledPropagation.profile().approximating``). Untimed: a diagnostic of the
    approximation quality.
    """
    over = VARIANTS[variant]
    if over is None:
        return None
    from approxgnn.train import build_trainer

    cfg = TrainConfig(dataset=dataset, model=model, engine="rsc", layers=LAYERS[model], hidden=a.hidden,
                      dropout=a.dropout, lr=lr_for(dataset, a), weight_decay=a.weight_decay, epochs=epochs, seed=seed,
                      device="cpu", progress=False,
                      rsc=RSCConfig(**{**({} if a.budget is None else {"budget": a.budget}), **over}))
    tr = build_trainer(cfg, data)
    errs, coss = [], []
    for epoch in range(epochs):
        rec = tr.train_epoch(epoch, compare_exact=True)
        if tr.engine.profile().approximating:
            errs.append(rec["grad_rel_err"])
            coss.append(rec["grad_cos"])
        tr.engine.on_epoch_end(epoch, float("nan"))  # no evaluation here: the schedule alone moves on
    return (statistics.fmean(errs), statistics.fmean(coss)) if errs else None


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(runs: list[dict], variants: list[str]) -> list[dict]:
    rows = []
    keys = sorted({(r["dataset"], r["model"]) for r in runs}, key=lambda k: (k[0], k[1]))
    for ds, model in keys:
        by = {v: [r for r in runs if r["dataset"] == ds and r["model"] == model and r["variant"] == v]
              for v in variants}
        if not by.get("exact"):
            continue
        ex_t, _ = _ms([r["train_time_s"] for r in by["exact"]])
        ex_m, _ = _ms([r["test"] for r in by["exact"]])
        exact_by_seed = {r["seed"]: r for r in by["exact"]}
        for v in variants:
            rs = by.get(v)
            if not rs:
                continue
            t, ts = _ms([r["train_time_s"] for r in rs])
            m, msd = _ms([100 * r["test"] for r in rs])
            kept = [r["flops_kept_approx"] for r in rs if r["flops_kept_approx"] is not None]
            ge = [r["grad_err"] for r in rs if r.get("grad_err") is not None]
            gc = [r["grad_cos"] for r in rs if r.get("grad_cos") is not None]
            tta = [tta_speedup(exact_by_seed[r["seed"]], r) for r in rs if r["seed"] in exact_by_seed]
            reached = [x for x in tta if isinstance(x, float)]  # else "not reached" (or exact's own curve cut short)
            rows.append({"dataset": ds, "model": model, "variant": v, "metric": rs[0]["metric"], "seeds": len(rs),
                         "epochs": rs[0]["epochs"], "train_s": f"{t:.2f} ± {ts:.2f}", "speedup": ex_t / t,
                         "test": f"{m:.2f} ± {msd:.2f}", "delta_pp": m - 100 * ex_m,
                         "tta_speedup": statistics.median(reached) if reached else None,
                         "reached": f"{len(reached)}/{len(tta)}",
                         "flops_kept": statistics.fmean(kept) if kept else None,
                         "sample_s": statistics.fmean([r["sample_s"] or 0.0 for r in rs]) if v != "exact" else None,
                         "grad_err": statistics.fmean(ge) if ge else None,
                         "grad_cos": statistics.fmean(gc) if gc else None,
                         "others_cpu_max": max(r.get("others_cpu", float("nan")) for r in rs)})
    return rows


def plot(runs: list[dict], datasets: list[str], model: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4))
    axes = [axes] if len(datasets) == 1 else axes
    for ax, ds in zip(axes, datasets):
        for v, style in (("exact", "-"), ("rsc", "-")):
            rs = [r for r in runs if r["dataset"] == ds and r["model"] == model and r["variant"] == v]
            if not rs:
                continue
            r = min(rs, key=lambda r: r["seed"])
            ax.plot([c["time_s"] for c in r["curve"]], [c["val"] for c in r["curve"]], style,
                    label=f"{v} ({r['train_time_s']:.1f}s, test {100 * r['test']:.1f})")
            if v == "rsc" and r.get("switch_epoch") is not None and r["switch_epoch"] < len(r["curve"]):
                sw = r["curve"][r["switch_epoch"]]
                ax.axvline(sw["time_s"], color="grey", ls=":", lw=1)
        ax.set_title(f"{ds} / {model} (seed 0)")
        ax.set_xlabel("training time (s, evaluation excluded)")
        ax.set_ylabel(f"validation {rs[0]['metric'] if rs else ''}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["main", "ablation"], default="main")
    p.add_argument("--quick", action="store_true", help="smoke run: cora + a 20k-node synthetic graph, 1 seed")
    p.add_argument("--datasets", default=None, help="default: cora,citeseer,tolokers,twitch-de,synthetic-1m "
                                                      "(main) / cora,tolokers (ablation)")
    p.add_argument("--models", default=None, help="default: gcn,sage,gcn2 (main) / gcn (ablation)")
    p.add_argument("--variants", default=None, help=f"subset of {list(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs-small", type=int, default=200, help="epochs on the real datasets")
    p.add_argument("--epochs-large", type=int, default=20, help="epochs on synthetic-<size> graphs (speed only)")
    p.add_argument("--epochs-hard", type=int, default=150, help="epochs on synthetic-hard-<size> graphs")
    p.add_argument("--budget", type=float, default=None, help="default: each variant's (the library default for rsc)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 on cora/citeseer, else 1e-2 (see LR)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--data-root", default=str(SHARED) if SHARED.is_dir() else None)
    p.add_argument("--plot", default=None, help="PNG: validation metric vs training time, exact vs RSC")
    p.add_argument("--plot-datasets", default="tolokers,synthetic-1m")
    p.add_argument("--grad-error", action="store_true",
                   help="also measure the mean relative gradient error of each RSC variant (seed 0, untimed)")
    p.add_argument("--max-busy", type=float, default=0.25,
                   help="wait until other processes use fewer cores than this before each run")
    p.add_argument("--lock", default=rsc_common.LOCK,
                   help="benchmark lock taken around each timed run ('' for none); do not also wrap in flock")
    p.add_argument("--json")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --json")
    p.add_argument("--runs-dir", help="keep each run's result.json under DIR/<dataset>-<model>-<variant>-s<seed> "
                                      "and write `approxgnn report`'s per-run table and curves into DIR/report")
    a = p.parse_args()
    ablation = a.suite == "ablation"
    if a.quick:
        datasets, models, seeds = ["cora", "synthetic-20k"], ["gcn"], [0]
        a.epochs_small, a.epochs_large = 30, 10
    else:
        datasets = (a.datasets or ("cora,tolokers" if ablation else
                                   "cora,citeseer,tolokers,twitch-de,synthetic-1m")).split(",")
        models = (a.models or ("gcn" if ablation else "gcn,sage,gcn2")).split(",")
        seeds = [int(s) for s in a.seeds.split(",")]
    variants = a.variants.split(",") if a.variants else (ABLATION if ablation else MAIN)
    runs: list[dict] = []
    if a.resume and a.json and Path(a.json).exists():
        runs = json.loads(Path(a.json).read_text())["runs"]
        print(f"resuming: {len(runs)} runs already in {a.json}")
    done = {(r["dataset"], r["model"], r["variant"], r["seed"]) for r in runs}
    for ds in datasets:
        if all((ds, m, v, sd) in done for m in models for sd in seeds for v in variants):
            continue  # everything for this dataset is already in --json
        t0 = time.perf_counter()
        data = load_dataset(ds, root=a.data_root, seed=0)
        print(f"[{ds}] {data.num_nodes} nodes, {data.num_edges} edges, {data.num_features} features, "
              f"{data.num_classes} classes, metric {data.metric} (loaded in {time.perf_counter() - t0:.1f}s)",
              flush=True)
        for model in models:
            for seed in seeds:
                for v in variants:
                    if (ds, model, v, seed) in done:
                        continue
                    r = run_one(data, ds, model, v, seed, epochs_for(ds, a), a)
                    if a.grad_error and seed == seeds[0]:
                        with rsc_common.bench_lock(a.lock):  # untimed, but it would slow others' timed runs
                            ge = gradient_error(data, ds, model, v, seed, epochs_for(ds, a), a)
                            r["grad_err"], r["grad_cos"] = (None, None) if ge is None else ge
                    runs.append(r)
                    print(f"  {model:5s} {v:18s} seed {seed}: train {r['train_time_s']:7.2f}s "
                          f"(eval {r['eval_time_s']:.1f}s) test {100 * r['test']:.2f} "
                          f"kept {r['flops_kept_approx'] if r['flops_kept_approx'] is None else round(r['flops_kept_approx'], 3)} "
                          f"ratios {r['ratios']} others_cpu {r['others_cpu']:.2f}", flush=True)
                    if a.json:
                        _common.write_json(a.json, {"suite": a.suite, "args": vars(a), "runs": runs})
        del data
    rows = summarise(runs, variants)
    print(format_table(rows, ["dataset", "model", "variant", "metric", "seeds", "epochs", "train_s", "speedup",
                              "tta_speedup", "reached", "test", "delta_pp", "flops_kept", "sample_s", "grad_err",
                              "grad_cos", "others_cpu_max"]))
    if a.plot:
        plot(runs, [d for d in a.plot_datasets.split(",") if any(r["dataset"] == d for r in runs)],
             models[0], a.plot)
    if a.json:
        _common.write_json(a.json, {"suite": a.suite, "args": vars(a), "runs": runs, "summary": rows})
    dirs = [d for r in runs if (d := run_dir(a, r["dataset"], r["model"], r["variant"], r["seed"]))
            and Path(d, "result.json").exists()]
    if dirs:
        print(f"wrote {write_report(dirs, Path(a.runs_dir) / 'report')}")


if __name__ == "__main__":
    main()
