"""ReFresh benchmark: four cache policies in one mini-batch harness, on a 2M-node graph and real data.

    python benchmarks/refresh_policies.py --datasets synthetic-2m --seeds 0,1,2 \\
        --lock /tmp/approxgnn-bench.lock --json refresh_2m.json --plot benchmarks/refresh_curves_2m.png
    python benchmarks/refresh_policies.py --quick          # smoke test: small graph, 2 epochs
    python benchmarks/refresh_policies.py --quick --runs-dir /tmp/rp   # + run dirs and `approxgnn report`

Policies (same sampler, model, budget and seeds): ``none`` (every row from the feature store),
``feature`` (the budget caches raw features of the highest-degree nodes), ``gas`` (history cache,
every computed embedding pushed, never stale) and ``refresh`` (gradient admission + staleness).
Each run is :func:`approxgnn.train.fit` on :class:`MiniBatchTrainer`: epoch time is the median
over epochs of the training wall time (sampling, gathering, forward, backward, step and
admission; evaluation excluded), bytes are those the feature store read, per epoch (median).
``--runs-dir DIR`` keeps each run's ``result.json`` in ``DIR/<dataset>-<policy>-s<seed>`` and writes
the per-run report of :mod:`approxgnn.report` (``approxgnn report``: Δ against the ``none`` run of
the same seed, time-to-accuracy speed-up, bytes read, curves) into ``DIR/report``; the tables here
add the medians over seeds. ``--lock`` takes an exclusive ``flock`` on that file around each timed run, so timed runs of
other benchmarks never overlap ours while the whole sweep does not hold the machine for hours.
"""
from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np

from approxgnn.datasets import load_dataset, synthetic
from approxgnn.history import HistoryConfig
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.report import markdown_table, write_report
from approxgnn.train import TrainConfig, build_trainer, fit
from approxgnn.train.results import format_table

POLICIES = ("none", "feature", "gas", "refresh")

# Per dataset: data, model and cache settings. The model is the paper's (SAGE, 3 layers, batch
# norm, ReLU, dropout 0.1) with hidden 128 instead of 256 (2 CPU cores); fanouts and batch size
# are the issue's. The budget is a fixed share of the feature bytes, so that a feature cache is a
# real alternative but cannot hold everything.
#
# * synthetic-2m: 0.5% of the nodes are labelled for training (ogbn-papers100M: 1.1%, MAG240M: 0.45%),
#   the budget is 64 MiB = 6.25% of the 1 GiB of features, the default staleness of 200 iterations.
# * the real graphs are small: the budget is 10% of max(feature bytes, all nodes' embeddings), and
#   since an epoch is only 1-6 batches, the staleness is about 5 epochs (the default 200
#   iterations would outlast the whole run, so an entry would never be refreshed).
PRESETS: dict[str, dict[str, Any]] = {
    "synthetic-2m": {"nodes": 2_000_000, "avg_degree": 20.0, "features": 128, "train": 0.005, "val": 0.0025,
                     "test": 0.01, "epochs": 12, "lr": 3e-3, "cache_mb": 64.0, "staleness": 200},
    "tolokers": {"epochs": 40, "lr": 3e-3, "budget_share": 0.1, "staleness": 30},
    "twitch-de": {"epochs": 40, "lr": 1e-3, "budget_share": 0.1, "staleness": 25},
    "cora": {"epochs": 100, "lr": 3e-3, "budget_share": 0.1, "staleness": 5},
    "citeseer": {"epochs": 100, "lr": 3e-3, "budget_share": 0.1, "staleness": 5},
    "synthetic-quick": {"nodes": 50_000, "avg_degree": 20.0, "features": 64, "train": 0.05, "val": 0.02,
                        "test": 0.05, "epochs": 3, "lr": 3e-3, "cache_mb": 2.0, "staleness": 200},
}
COMMON = {"model": "sage", "layers": 3, "hidden": 128, "dropout": 0.1, "batch_norm": True, "weight_decay": 0.0,
          "fanouts": [15, 10, 5], "batch_size": 1024, "eval_batch_size": 65536}


@contextmanager
def locked(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(name: str, data_dir: Path, data_root: str | None):
    p = PRESETS[name]
    if name.startswith("synthetic"):
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / f"{name}-x.npy"  # features on disk, memory-mapped
        return synthetic(num_nodes=p["nodes"], avg_degree=p["avg_degree"], num_features=p["features"], seed=0,
                         features_path=path, train=p["train"], val=p["val"], test=p["test"], name=name)
    return load_dataset(name, root=data_root, split=0, seed=0)


def config(name: str, policy: str, seed: int, data, args) -> TrainConfig:
    p = {**COMMON, **PRESETS[name]}
    if args.epochs:
        p["epochs"] = args.epochs
    cache_mb = p.get("cache_mb") or p["budget_share"] * data.num_nodes * max(data.num_features, p["hidden"]) * 4 / 2**20
    mb = MiniBatchConfig(fanouts=p["fanouts"], batch_size=p["batch_size"], cache_mb=args.cache_mb or cache_mb,
                         eval_batch_size=p["eval_batch_size"])
    hc = HistoryConfig(policy=policy, rate=args.rate, staleness=args.staleness or p["staleness"])
    return TrainConfig(dataset=name, model=p["model"], engine="refresh", layers=p["layers"], hidden=p["hidden"],
                       dropout=p["dropout"], batch_norm=p["batch_norm"], lr=args.lr or p["lr"],
                       weight_decay=p["weight_decay"], epochs=p["epochs"], seed=seed, device="cpu",
                       progress=args.progress, minibatch=mb, history=hc)


def run_dir(args: argparse.Namespace, name: str, policy: str, seed: int) -> str | None:
    return str(Path(args.runs_dir) / f"{name}-{policy}-s{seed}") if args.runs_dir else None


def one_run(name: str, policy: str, seed: int, data, args) -> dict[str, Any]:
    cfg = config(name, policy, seed, data, args)
    cfg.out = run_dir(args, name, policy, seed)  # result.json for `approxgnn report`
    with locked(args.lock):
        t0 = time.perf_counter()
        trainer = build_trainer(cfg, data)
        result = fit(trainer)
        wall = time.perf_counter() - t0
    result.pop("best_model", None)
    times = [c["time"] for c in result["curve"]]
    prof = {k: statistics.median(t[k] for t in times) for k in times[0]}
    row = {"dataset": name, "policy": policy, "seed": seed, "metric": result["metric"], "test": result["test"],
           "val": result["val"], "epoch_time_s": result["epoch_time_median_s"], "train_time_s": result["train_time_s"],
           "eval_time_s": result["eval_time_s"], "wall_s": wall, "feature_bytes_read": result["feature_bytes_read"],
           "sampled_nodes_per_hop": result["sampled_nodes_per_hop"], "hit_rate": result.get("hit_rate"),
           "mean_age": result.get("mean_age"), "occupancy": result.get("occupancy"),
           "cache_mb": cfg.minibatch.cache_mb, "profile": prof,
           "curve": [{"time_s": c["time_s"], "val": c["val"], "epoch": c["epoch"]} for c in result["curve"]]}
    del trainer
    gc.collect()
    print(f"  {name} {policy:8s} seed {seed}: test {row['test']:.4f}  epoch {row['epoch_time_s']:.2f}s  "
          f"read {row['feature_bytes_read'] / 2**20:.1f} MB/epoch  hops {row['sampled_nodes_per_hop']}  "
          f"hit {row['hit_rate']}", flush=True)
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (dataset, policy): medians over seeds, test as mean ± sd, ratios to ``none``."""
    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        base = [r for r in rows if r["dataset"] == name and r["policy"] == "none"]
        b_time = statistics.median(r["epoch_time_s"] for r in base) if base else float("nan")
        b_bytes = statistics.median(r["feature_bytes_read"] for r in base) if base else float("nan")
        b_test = statistics.mean(r["test"] for r in base) if base else float("nan")
        feat = [r for r in rows if r["dataset"] == name and r["policy"] == "feature"]
        f_saved = b_bytes - statistics.median(r["feature_bytes_read"] for r in feat) if feat else float("nan")
        for pol in POLICIES:
            rs = [r for r in rows if r["dataset"] == name and r["policy"] == pol]
            if not rs:
                continue
            t = statistics.median(r["epoch_time_s"] for r in rs)
            by = statistics.median(r["feature_bytes_read"] for r in rs)
            tests = [100 * r["test"] for r in rs]
            hops = np.median([r["sampled_nodes_per_hop"] for r in rs], axis=0)
            line = {"dataset": name, "policy": pol, "epoch_s": t, "speedup": b_time / t,
                    "nodes_per_hop": "/".join(f"{h:.0f}" for h in hops), "MB_read_per_epoch": by / 2**20,
                    "bytes_saved_%": 100 * (1 - by / b_bytes) if b_bytes else 0.0,
                    "saved_vs_feature_cache": (b_bytes - by) / f_saved if f_saved and f_saved > 0 else None,
                    "hit_rate": _med(rs, "hit_rate"), "mean_age": _med(rs, "mean_age"),
                    "test_%": f"{statistics.mean(tests):.2f} ± {statistics.pstdev(tests):.2f}",
                    # rounded: a policy that reproduces the baseline exactly differs only by float noise
                    "Δtest_pp": f"{statistics.mean(tests) - 100 * b_test:+.2f}", "seeds": len(rs)}
            out.append(line)
    return out


def _med(rs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def profile_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median seconds per epoch in each phase (``wait_s``: the trainer waiting for the loader)."""
    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for pol in POLICIES:
            rs = [r for r in rows if r["dataset"] == name and r["policy"] == pol]
            if rs:
                keys = rs[0]["profile"]
                out.append({"dataset": name, "policy": pol, "epoch_s": statistics.median(r["epoch_time_s"] for r in rs),
                             **{k: statistics.median(r["profile"][k] for r in rs) for k in keys}})
    return out


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    colors = dict(zip(POLICIES, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
    for ax, name in zip(axes[0], names):
        for pol in POLICIES:
            for i, r in enumerate(r for r in rows if r["dataset"] == name and r["policy"] == pol):
                ax.plot([c["time_s"] for c in r["curve"]], [100 * c["val"] for c in r["curve"]], color=colors[pol],
                        alpha=0.9 if i == 0 else 0.35, lw=1.6 if i == 0 else 0.8, label=pol if i == 0 else None)
        metric = next(r["metric"] for r in rows if r["dataset"] == name)
        ax.set_title(name)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel(f"validation {metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The summary and profile tables as Markdown (what RESULTS.md shows)."""

    return (markdown_table(summarise(rows)) + "\n\nTime per epoch by phase (s, medians):\n\n"
            + markdown_table(profile_table(rows)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="synthetic-2m,tolokers,twitch-de,cora,citeseer")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, help="override the preset")
    p.add_argument("--lr", type=float, help="override the preset")
    p.add_argument("--cache-mb", type=float, help="override the preset budget")
    p.add_argument("--rate", type=float, default=0.9)
    p.add_argument("--staleness", type=int, help="override the preset")
    p.add_argument("--data-dir", default="/tmp/approxgnn-bench", help="where generated features are written")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    p.add_argument("--data-root", default=os.environ.get("APPROXGNN_DATA") or (str(shared) if shared.exists() else None),
                   help="real datasets (default: $APPROXGNN_DATA, else ../shared/data)")
    p.add_argument("--lock", help="flock this file around each timed run (e.g. /tmp/approxgnn-bench.lock)")
    p.add_argument("--quick", action="store_true", help="smoke test: a 50k-node graph, one seed")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", help="written after every run")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --json and skip them")
    p.add_argument("--plot")
    p.add_argument("--markdown", help="write the tables as Markdown to this file")
    p.add_argument("--runs-dir", help="keep each run's result.json under this directory and write "
                                      "`approxgnn report`'s per-run table and curves into DIR/report")
    p.add_argument("--from-json", nargs="+", help="re-render tables/plot from earlier --json files; no training")
    a = p.parse_args()
    if a.from_json:
        rows = [r for f in a.from_json for r in json.loads(Path(f).read_text())["runs"]]
        report(rows, a)
        return
    if a.quick:
        a.datasets, a.seeds = "synthetic-quick", "0"
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: list[dict[str, Any]] = []
    if a.resume and a.json and Path(a.json).exists():
        rows = json.loads(Path(a.json).read_text())["runs"]
        print(f"resuming: {len(rows)} runs already in {a.json}")
    done = {(r["dataset"], r["policy"], r["seed"]) for r in rows}
    policies = a.policies.split(",")
    for name in a.datasets.split(","):
        if all((name, pol, seed) in done for seed in seeds for pol in policies):
            continue
        t0 = time.perf_counter()
        data = load(name, Path(a.data_dir), a.data_root)
        print(f"{name}: {data.num_nodes} nodes, {data.num_edges} edges, {data.num_features} features, "
              f"train {int(data.train_mask.sum())} (loaded in {time.perf_counter() - t0:.0f}s)", flush=True)
        for seed in seeds:
            for pol in policies:
                if (name, pol, seed) not in done:
                    rows.append(one_run(name, pol, seed, data, a))
                    save(rows, a)  # after every run, so a cut-off sweep keeps what it measured
        del data
        gc.collect()
    report(rows, a)
    save(rows, a)


def save(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    if a.json:
        _common.write_json(a.json, {"args": vars(a), "presets": PRESETS, "common": COMMON,
                                    "summary": summarise(rows), "profile": profile_table(rows), "runs": rows})


def report(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    summary = summarise(rows)
    print(format_table(summary, list(summary[0])))
    prof = profile_table(rows)
    print(format_table(prof, list(prof[0])))
    if a.plot:
        plot(rows, a.plot)
    if a.markdown:
        Path(a.markdown).write_text(markdown(rows) + "\n")
        print(f"wrote {a.markdown}")
    dirs = [d for r in rows if (d := run_dir(a, r["dataset"], r["policy"], r["seed"])) and Path(d, "result.json").exists()]
    if dirs:
        print(f"wrote {write_report(dirs, Path(a.runs_dir) / 'report')}")


if __name__ == "__main__":
    main()
