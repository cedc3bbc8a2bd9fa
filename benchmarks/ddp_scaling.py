"""Multi-process scaling: 1 process x 2 threads against 2 processes x 1 thread, sample and refresh.

    python benchmarks/ddp_scaling.py --dataset synthetic-hard-1m --json benchmarks/ddp_scaling.json
    python benchmarks/ddp_scaling.py --quick          # smoke test: synthetic-hard-20k, 2 epochs

The graph is generated once, its features written to a ``.npy`` that every run memory-maps (the
features are on disk). Both set-ups train the same global batch (``--batch-size`` seeds per
optimiser step: one process takes all of it, each of two takes half), so they take the same
number of steps per epoch. Each run is a fresh ``launch`` (1 or 2 spawned ranks; the 1-process
run is the plain single-process trainer, not DDP). Reported per run: epoch time (median over
epochs, evaluation excluded), seeds/s, efficiency (2x1 throughput over 1x2: the same two cores
as processes instead of threads), bytes the feature store read per rank and epoch, and the
gradient all-reduce time per step (DDP's comm hook, launch to completion).

To keep evaluation cheap on a shared machine, the validation and test sets are cut to
``--eval-fraction`` of the nodes each (the training set is the preset's 2 %). After the
2-process ``sample`` run, both ranks time one exact evaluation sharded (``--dist-eval sharded``)
and on rank 0 alone (``rank0``), alternating, three times each.

Projection to P processes, one core each, per-rank batch fixed (``B = batch/2`` as measured):
``epoch(P) = ceil(n_train / (P·B)) · (t_step + t_ar(P))`` with ``t_step`` the measured per-step
time without the all-reduce and ``t_ar(P) = 2(P-1)·α + 2(P-1)/P · M/β`` (ring all-reduce of the
``M`` gradient bytes, the model size). ``α`` and ``β`` are fitted to all-reduces of several sizes
on the measured loopback; a second projection uses an assumed 25 Gbit/s, 20 µs network, as 64
processes would span machines. The model ignores that feature reads from one disk do not scale
and that each rank's history cache sees 1/P of the batches; it is a bound on what the
communication costs, not a prediction of speed-ups the 2 measured cores cannot show.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np

from approxgnn.datasets import Dataset, load_dataset
from approxgnn.history import HistoryConfig
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.train import TrainConfig, build_trainer, fit
from approxgnn.train.config import DistConfig
from approxgnn import set_threads
from approxgnn.train.distributed import launch
from approxgnn.train.results import format_table

NETWORK = {"alpha_s": 20e-6, "beta_Bps": 25e9 / 8}  # an assumed 25 Gbit/s link with 20 µs latency


def prepare(name: str, work: Path, eval_fraction: float) -> dict[str, str]:
    """Generate ``name`` once: features to ``x.npy`` (memmapped by every run), the rest to an npz."""
    data = load_dataset(name, features_path=work / "x.npy")
    rng = np.random.default_rng(0)
    keep = lambda m: m & (rng.random(m.shape[0]) < eval_fraction / max(m.mean(), 1e-12))  # noqa: E731
    np.savez(work / "graph.npz", y=data.y, edge_index=data.edge_index, train=data.train_mask,
             val=keep(data.val_mask), test=keep(data.test_mask), num_classes=data.num_classes)
    return {"x": str(work / "x.npy"), "graph": str(work / "graph.npz"), "name": name}


def _dataset(files: dict[str, str]) -> Dataset:
    g = np.load(files["graph"])
    return Dataset(files["name"], np.load(files["x"], mmap_mode="r"), g["y"], g["edge_index"], g["train"], g["val"],
                   g["test"], num_classes=int(g["num_classes"]))


def _allreduce_sizes(model_bytes: int) -> list[int]:
    return sorted({1 << 10, 1 << 14, 1 << 17, 1 << 20, max(1 << 10, model_bytes)})


def _allreduce_probe(sizes: list[int], repeats: int = 20) -> dict[int, float]:
    """Median seconds of an all-reduce of ``s`` float32 bytes, per size."""
    import torch
    import torch.distributed as dist

    out = {}
    for s in sizes:
        t = torch.zeros(s // 4)
        times = []
        for _ in range(repeats + 2):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        out[s] = statistics.median(times[2:])
    return out


def _eval_probe(cfg: TrainConfig, data: Dataset, ctx: Any, repeats: int = 3) -> dict[str, list[float]]:
    """Seconds of one exact evaluation, sharded and on rank 0, alternating (same load for both)."""
    from approxgnn.train.ddp import DistributedMiniBatchTrainer

    trainer = DistributedMiniBatchTrainer(cfg, data, ctx)
    out: dict[str, list[float]] = {"sharded": [], "rank0": []}
    for _ in range(repeats):
        for mode in out:
            ctx.barrier()
            t0 = time.perf_counter()
            trainer.evaluate(mode)
            ctx.barrier()
            out[mode].append(time.perf_counter() - t0)
    return out


def _worker(cfg: TrainConfig, files: dict[str, str], report: str) -> int:
    """One rank: the plain trainer alone (1 process) or DDP (2); rank 0 writes the report."""
    world = int(os.environ["WORLD_SIZE"])
    data = _dataset(files)
    if world == 1:
        set_threads(cfg.dist.threads or 1)
        result = fit(build_trainer(cfg, data))
        probe = {}
        model_bytes = 4 * sum(p.numel() for p in build_model_params(cfg, data))
    else:
        import torch

        from approxgnn.train.ddp import run_rank
        from approxgnn.train.distributed import DistContext

        ctx = DistContext.from_env(cfg.dist, torch.device("cpu"))
        result = run_rank(cfg, data, ctx=ctx)
        model_bytes = 4 * sum(p.numel() for p in build_model_params(cfg, data))
        probe = _allreduce_probe(_allreduce_sizes(model_bytes))
        if cfg.engine == "sample":
            result["eval_probe"] = _eval_probe(cfg, data, ctx)
        ctx.close()
    if int(os.environ["RANK"]) == 0:
        result.pop("best_model", None)
        result["allreduce_probe"] = {str(k): v for k, v in probe.items()}
        result["model_bytes"] = model_bytes
        Path(report).write_text(json.dumps(result, default=float))
    return 0


def build_model_params(cfg: TrainConfig, data: Dataset) -> list:
    from approxgnn.nn import build_model

    return list(build_model(cfg.model, data.num_features, cfg.hidden, data.num_classes, cfg.layers, cfg.dropout,
                            cfg.batch_norm, 0.0).parameters())


def run_one(cfg: TrainConfig, files: dict[str, str], nproc: int, work: Path) -> dict[str, Any]:
    report = work / f"result-{cfg.engine}-{nproc}-{cfg.dist.eval}.json"
    code = launch(_worker, nproc, (cfg, files, str(report)), deadline_s=3600)
    if code != 0:
        raise RuntimeError(f"{cfg.engine} with {nproc} process(es) exited {code}")
    return json.loads(report.read_text())


def summarise(r: dict[str, Any], nproc: int, threads: int, n_train: int) -> dict[str, Any]:
    """The figures of one run (epoch medians over the run's epochs after the first)."""
    curve = r["curve"][1:] or r["curve"]
    epoch = statistics.median(c["step_time_s"] for c in curve)
    steps = curve[0]["batches"]
    per_rank = r.get("per_rank") or [{"feature_bytes_read": r.get("feature_bytes_read", 0)}]
    ar = statistics.median(c["time"].get("allreduce_s", 0.0) for c in curve)
    return {"engine": r["engine"], "setup": f"{nproc}x{threads}", "epoch_s": epoch, "seeds_per_s": n_train / epoch,
            "steps": steps, "step_s": epoch / steps, "allreduce_ms_per_step": 1e3 * ar / steps,
            "MB_read_per_rank": statistics.median(p["feature_bytes_read"] for p in per_rank) / 2**20,
            "hit_rate": r.get("hit_rate"), "eval_s_per_epoch": r["eval_time_s"] / len(r["curve"]),
            "test": r["test"]}


def fit_alpha_beta(probe: dict[str, float]) -> tuple[float, float]:
    """``t = 2α + s/β`` for a 2-rank all-reduce of ``s`` bytes (ring: 2(P-1)=2 latencies,
    2(P-1)/P = 1 times the bytes), least squares."""
    s = np.array([float(k) for k in probe])
    t = np.array(list(probe.values()))
    A = np.stack([2 * np.ones_like(s), s], 1)
    (alpha, inv_beta), *_ = np.linalg.lstsq(A, t, rcond=None)
    return max(float(alpha), 1e-7), 1.0 / max(float(inv_beta), 1e-13)


def project(row: dict[str, Any], n_train: int, per_rank_batch: int, model_bytes: int, alpha: float,
            beta: float) -> dict[str, float]:
    step = row["step_s"] - row["allreduce_ms_per_step"] / 1e3  # the step without its all-reduce
    out = {}
    for p in (2, 8, 64):
        t_ar = 2 * (p - 1) * alpha + 2 * (p - 1) / p * model_bytes / beta
        out[f"epoch_s_P{p}"] = math.ceil(n_train / (p * per_rank_batch)) * (step + t_ar)
        out[f"allreduce_ms_P{p}"] = 1e3 * t_ar
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic-hard-1m")
    ap.add_argument("--engines", default="sample,refresh")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2048, help="global batch (per rank: half of it with 2)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--cache-mb", type=float, default=64.0, help="refresh: per rank")
    ap.add_argument("--eval-fraction", type=float, default=0.01)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.dataset, args.epochs, args.batch_size, args.hidden = "synthetic-hard-20k", 2, 128, 32
    work = Path(tempfile.mkdtemp(prefix="approxgnn-ddp-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the generated features (hundreds of MB)


def measure(args: argparse.Namespace, work: Path) -> None:
    """Generate the data set into ``work``, run every set-up, print and write the figures."""
    files = prepare(args.dataset, work, args.eval_fraction)
    g = np.load(files["graph"])
    n_train = int(g["train"].sum())
    rows, raw, probe, evals = [], {}, {}, {}
    for engine in args.engines.split(","):
        for nproc, threads, ev in ((1, 2, "sharded"), (2, 1, "sharded")):
            cfg = TrainConfig(dataset=args.dataset, engine=engine, model="sage", layers=2, hidden=args.hidden,
                              epochs=args.epochs, dropout=0.1, progress=False, seed=0,
                              minibatch=MiniBatchConfig(fanouts=[10, 10], batch_size=args.batch_size // nproc,
                                                        cache_mb=args.cache_mb),
                              history=HistoryConfig(policy="refresh" if engine == "refresh" else "none"),
                              dist=DistConfig(nproc=nproc, threads=threads, eval=ev, timeout_s=1800))
            t0 = time.perf_counter()
            r = run_one(cfg, files, nproc, work)
            print(f"{engine} {nproc}x{threads} eval={ev}: {time.perf_counter() - t0:.0f} s wall", flush=True)
            raw[f"{engine}-{nproc}x{threads}-{ev}"] = r
            row = summarise(r, nproc, threads, n_train)
            row["eval"] = ev
            rows.append(row)
            if r.get("eval_probe"):
                evals = {k: statistics.median(v) for k, v in r["eval_probe"].items()}
            if r.get("allreduce_probe"):
                probe = {k: float(v) for k, v in r["allreduce_probe"].items()}
            model_bytes = int(r["model_bytes"])
    for engine in args.engines.split(","):
        one = next(r for r in rows if r["engine"] == engine and r["setup"] == "1x2")
        for r in rows:
            if r["engine"] == engine and r["setup"] == "2x1":
                r["efficiency"] = r["seeds_per_s"] / one["seeds_per_s"]
    cols = ["engine", "setup", "eval", "epoch_s", "seeds_per_s", "efficiency", "steps", "allreduce_ms_per_step",
            "MB_read_per_rank", "hit_rate", "eval_s_per_epoch", "test"]
    print(format_table(rows, cols))
    alpha, beta = fit_alpha_beta(probe) if probe else (NETWORK["alpha_s"], NETWORK["beta_Bps"])
    projections = []
    for r in rows:
        if r["setup"] == "2x1" and r["eval"] == "sharded":
            for where, (a, b) in (("loopback", (alpha, beta)), ("25Gbit", (NETWORK["alpha_s"], NETWORK["beta_Bps"]))):
                projections.append({"engine": r["engine"], "network": where,
                                    **project(r, n_train, args.batch_size // 2, model_bytes, a, b)})
    print(f"one exact evaluation with 2 processes (median of 3, alternating): {evals}")
    print(f"all-reduce fit on loopback: alpha {alpha * 1e6:.1f} us, beta {beta / 1e9:.2f} GB/s; "
          f"model {model_bytes / 2**20:.2f} MiB")
    print(format_table(projections, list(projections[0]) if projections else []))
    from _common import write_json

    write_json(args.json, {"args": vars(args), "n_train": n_train, "rows": rows, "projections": projections,
                           "eval_s_2proc": evals,
                           "allreduce_probe": probe, "alpha_s": alpha, "beta_Bps": beta, "model_bytes": model_bytes,
                           "runs": {k: {kk: v[kk] for kk in ("curve", "per_rank", "world_size", "train_time_s",
                                                            "eval_time_s") if kk in v} for k, v in raw.items()}})


if __name__ == "__main__":
    main()
