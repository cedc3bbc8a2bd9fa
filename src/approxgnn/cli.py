"""``approxgnn`` command line: train, demo, datasets, bench.

Exit codes: 0 success, 2 usage error (bad flag values, unknown names, an occupied ``--out``),
1 run failure (unreadable data, diverged training, ...). Flag values are checked before any work.
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from .datasets import DatasetError, list_datasets
from .history.config import POLICIES, RefreshConfig
from .nn.models import MODELS
from .rsc.config import ALLOCATIONS, SELECTIONS, RSCConfig
from .train import ENGINES, TrainConfig, TrainingDiverged, check_out_dir, read_checkpoint, run
from .train.results import format_table

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
RESULT_COLUMNS = ["dataset", "model", "engine", "metric", "val", "test", "best_epoch", "train_time_s",
                  "epoch_time_median_s"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# (flag, dest in TrainConfig / sub-config, argparse kwargs). Defaults live in the dataclasses only.
_TRAIN_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--dataset", "dataset", {"help": "name (see `approxgnn datasets`) or path to a .npz / OGB directory"}),
    ("--data-root", "data_root", {"help": "data directory (default: $APPROXGNN_DATA or ~/.approxgnn/data)"}),
    ("--split", "split", {"type": int, "help": "split index for datasets with several"}),
    ("--model", "model", {"choices": sorted(MODELS)}),
    ("--engine", "engine", {"choices": list(ENGINES)}),
    ("--layers", "layers", {"type": int}),
    ("--hidden", "hidden", {"type": int}),
    ("--dropout", "dropout", {"type": float}),
    ("--batch-norm", "batch_norm", {"action": "store_true"}),
    ("--lr", "lr", {"type": float}),
    ("--weight-decay", "weight_decay", {"type": float}),
    ("--epochs", "epochs", {"type": int}),
    ("--seed", "seed", {"type": int}),
    ("--device", "device", {"help": "auto, cpu, cuda, cuda:1, ..."}),
    ("--out", "out", {"help": "run directory: result.json and checkpoints"}),
    ("--checkpoint-every", "checkpoint_every", {"type": int, "help": "epochs between checkpoints (0: none)"}),
    ("--no-progress", "progress", {"action": "store_false"}),
    # RSC
    ("--budget", "rsc.budget", {"type": float, "help": "RSC: fraction of backward SpMM FLOPs kept, in (0, 1]"}),
    ("--cache-interval", "rsc.cache_interval", {"type": int, "help": "RSC: iterations a sample is reused"}),
    ("--tune-interval", "rsc.tune_interval", {"type": int, "help": "RSC: epochs between budget re-allocations"}),
    ("--switch-time", "rsc.switch_time", {"type": float, "help": "RSC: fraction of epochs before going exact"}),
    ("--allocation", "rsc.allocation", {"choices": ALLOCATIONS}),
    ("--selection", "rsc.selection", {"choices": SELECTIONS}),
    ("--step", "rsc.step", {"type": float, "help": "RSC: greedy step"}),
    ("--warmup", "rsc.warmup", {"type": int, "help": "RSC: exact epochs before the first allocation"}),
    ("--val-guard", "rsc.val_guard", {"action": "store_true", "help": "RSC: go exact early when validation stalls"}),
    # mini-batch / ReFresh
    ("--fanouts", "refresh.fanouts", {"type": _int_list, "help": "neighbours per hop, e.g. 15,10,5 (-1: all)"}),
    ("--batch-size", "refresh.batch_size", {"type": int}),
    ("--cache-mb", "refresh.cache_mb", {"type": float, "help": "byte budget shared by feature and history caches"}),
    ("--policy", "refresh.policy", {"choices": POLICIES, "help": "cache policy of --engine refresh"}),
    ("--rate", "refresh.rate", {"type": float, "help": "gradient-norm quantile admitted, in (0, 1]"}),
    ("--evict", "refresh.evict", {"action": "store_true"}),
    ("--staleness", "refresh.staleness", {"type": int, "help": "iterations after which a cached embedding is stale"}),
    ("--cached-layers", "refresh.cached_layers", {"type": _int_list}),
    ("--eval-batch-size", "refresh.eval_batch_size", {"type": int}),
    ("--features-on-disk", "refresh.features_on_disk", {"action": "store_true"}),
    ("--features-path", "refresh.features_path", {"help": "memory-map features from this .npy (see `approxgnn prepare`)"}),
    ("--no-prefetch", "refresh.prefetch", {"action": "store_false"}),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="approxgnn", description="Train GNNs faster by computing less.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model", argument_default=argparse.SUPPRESS)
    for flag, dest, kw in _TRAIN_FLAGS:
        t.add_argument(flag, dest=dest, **kw)
    t.add_argument("--config", dest="config_file", help="JSON file of TrainConfig fields (flags override it)")
    t.add_argument("--resume", dest="resume", help="continue the run in this directory from its checkpoint")
    t.add_argument("--overwrite", dest="overwrite", action="store_true", help="replace a finished run in --out")

    d = sub.add_parser("demo", help="exact vs approximate engines on a generated graph")
    d.add_argument("--epochs", type=int, default=60)
    d.add_argument("--nodes", type=int, default=50_000)

    ds = sub.add_parser("datasets", help="list the datasets found under the data root")
    ds.add_argument("--data-root")

    pr = sub.add_parser("prepare", help="write a dataset's features to a .npy for --features-path")
    pr.add_argument("--dataset", required=True, help="name or path, as for `train`")
    pr.add_argument("--data-root")
    pr.add_argument("--out", required=True, help="the .npy file to write")

    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout)")
    b.add_argument("name", help="e.g. spmm → benchmarks/exact_spmm.py, or a script name")
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """Dataclass defaults, then ``--config`` file, then the flags actually given."""
    base: dict[str, Any] = {}
    if getattr(ns, "config_file", None):
        try:
            base = json.loads(Path(ns.config_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {ns.config_file}: {e}") from None
        base = base.get("config", base)  # also accept a result.json
    top = {f.name for f in fields(TrainConfig)}
    for _, dest, _ in _TRAIN_FLAGS:
        if not hasattr(ns, dest):
            continue
        value = getattr(ns, dest)
        if "." in dest:
            group, key = dest.split(".")
            base.setdefault(group, {})[key] = value
        elif dest in top:
            base[dest] = value
    rsc = RSCConfig(**base.pop("rsc", {}))
    refresh = RefreshConfig(**base.pop("refresh", {}))
    return TrainConfig(**base, rsc=rsc, refresh=refresh)


def cmd_train(ns: argparse.Namespace) -> int:
    resume_state = None
    if getattr(ns, "resume", None):
        resume_state = read_checkpoint(ns.resume)
        cfg = TrainConfig.from_dict(resume_state["config"])
        cfg.out = ns.resume
        if hasattr(ns, "progress"):
            cfg.progress = ns.progress
    else:
        cfg = config_from_args(ns)
        check_out_dir(cfg.out, resume=False, overwrite=getattr(ns, "overwrite", False))
    result = run(cfg, resume_state=resume_state)
    print(format_table([result], RESULT_COLUMNS))
    if cfg.out:
        print(f"result: {Path(cfg.out) / 'result.json'}")
    return EXIT_OK


def cmd_demo(ns: argparse.Namespace) -> int:
    from .datasets import synthetic

    data = synthetic(num_nodes=ns.nodes, seed=0)
    print(f"demo graph: synthetic power-law, {data.num_nodes} nodes, {data.num_edges} edges, "
          f"{data.num_features} features, {data.num_classes} classes")
    rows = []
    for engine in ("exact", "rsc"):
        cfg = TrainConfig(dataset="synthetic", model="gcn", engine=engine, layers=3, hidden=128, epochs=ns.epochs,
                          dropout=0.3, rsc=RSCConfig(budget=0.1))
        r = run(cfg, data)
        rows.append(r)
    base = rows[0]["train_time_s"]
    for r in rows:
        r["speedup"] = base / r["train_time_s"]
    print(format_table(rows, RESULT_COLUMNS + ["speedup"]))
    return EXIT_OK


def cmd_datasets(ns: argparse.Namespace) -> int:
    rows = list_datasets(ns.data_root)
    if not rows:
        print("no datasets found; set --data-root or APPROXGNN_DATA")
        return EXIT_FAILURE
    cols = ["name", "nodes", "edges", "features", "classes", "metric", "train/val/test", "error"]
    print(format_table(rows, [c for c in cols if any(c in r for r in rows)]))
    return EXIT_OK


BENCH_ALIASES = {"spmm": "exact_spmm"}


def cmd_prepare(ns: argparse.Namespace) -> int:
    """Features of any dataset → a float32 ``.npy`` that mini-batch training memory-maps."""
    from .datasets import load_dataset
    from .history.features import write_features

    if not ns.out.endswith(".npy"):
        raise ValueError(f"--out must name a .npy file, got {ns.out!r}")
    data = load_dataset(ns.dataset, root=ns.data_root)
    x = write_features(ns.out, data.x)
    print(f"wrote {ns.out}: {x.shape[0]} x {x.shape[1]} float32 ({x.nbytes / 2**20:.1f} MiB); "
          f"train with --features-path {ns.out}")
    return EXIT_OK


def cmd_bench(ns: argparse.Namespace) -> int:
    bench_dir = Path(__file__).resolve().parents[2] / "benchmarks"
    script = bench_dir / f"{BENCH_ALIASES.get(ns.name, ns.name)}.py"
    if not script.exists():
        have = sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_")) if bench_dir.exists() else []
        raise ValueError(f"no benchmark {ns.name!r} at {script}; available: {have or 'none (benchmarks ship with the source checkout)'}")
    sys.argv = [str(script), *ns.args]
    runpy.run_path(str(script), run_name="__main__")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    handler = {"train": cmd_train, "demo": cmd_demo, "datasets": cmd_datasets, "bench": cmd_bench,
               "prepare": cmd_prepare}[ns.command]
    try:
        return handler(ns)
    except ValueError as e:
        if isinstance(e, DatasetError):
            print(f"approxgnn: data error: {e}", file=sys.stderr)
            return EXIT_FAILURE
        parser.exit(EXIT_USAGE, f"approxgnn: error: {e}\n")
    except (FileNotFoundError, RuntimeError, MemoryError, TrainingDiverged) as e:
        print(f"approxgnn: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("approxgnn: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
