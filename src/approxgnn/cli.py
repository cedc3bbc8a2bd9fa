"""``approxgnn`` command line: train, demo, datasets, bench, prepare, report.

Exit codes: 0 success; 2 usage error (an invalid flag value, an unknown model/engine/dataset, an
``--out`` that holds another run, ``--resume`` of a directory without a checkpoint); 1 run failure
(unreadable or malformed data, diverged training, not enough memory, ...); 130 interrupted.

Every usage error is found before any data is read, in two steps: argparse checks each flag value
as it parses it (``_checked``: the value alone must pass its config dataclass's validation, so the
ranges live in one place and the message names the flag), then the command's ``prepare_*``
function builds the whole configuration and checks ``--out``, ``--resume`` and the dataset name,
returning the job to run. Only then does the job run; an error raised while it runs -- a
ValueError included -- is a run failure (exit 1), never a usage error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Sequence

from . import report
from .datasets import DatasetError, UnknownDatasetError, check_dataset_name, list_datasets
from .datasets.registry import parse_synthetic_name
from .history.config import CACHED_VALUES, ENTRY_DTYPES, POLICIES, HistoryConfig
from .minibatch.config import FEATURE_STORES, MiniBatchConfig
from .minibatch.stores import joins_first_hop
from .nn.models import MODELS
from .precompute import FIRST_HOP_LAYOUTS
from .rsc.config import ALLOCATIONS, PRESETS as RSC_PRESETS, SELECTIONS, RSCConfig
from .train import ENGINES, TrainConfig, read_checkpoint, run
from .train.base import resolve_device
from .train.loop import check_out_dir
from .train.config import BACKENDS, DIST_EVAL_MODES, PRECOMPUTE_DTYPES, PRECOMPUTE_MODES, DistConfig
from .train.distributed import check_devices, env_world_size, under_launcher
from .train.results import format_table
from .train.presets import PRESET_HELP, PRESETS
from .train.schedule import LR_SCHEDULES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RESULT_COLUMNS = ["dataset", "model", "engine", "metric", "val", "test", "best_epoch", "train_time_s",
                  "epoch_time_median_s"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _real(text: str) -> float:
    """A finite float (``nan`` would slip through every ``x < bound`` check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


# (flag, dest in TrainConfig / sub-config, argparse kwargs). Defaults live in the dataclasses only.
_TRAIN_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--preset", "preset",
     {"choices": sorted(PRESETS), "help": "start from a named setup; flags and --config override its values. "
                                          + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items())}),
    ("--dataset", "dataset", {"help": "name (see `approxgnn datasets`) or path to a .npz / OGB directory"}),
    ("--data-root", "data_root", {"help": "data directory (default: $APPROXGNN_DATA or ~/.approxgnn/data)"}),
    ("--split", "split", {"type": int, "help": "split index for datasets with several"}),
    ("--model", "model", {"choices": sorted(MODELS)}),
    ("--engine", "engine", {"choices": list(ENGINES)}),
    ("--layers", "layers", {"type": int}),
    ("--hidden", "hidden", {"type": int}),
    ("--dropout", "dropout", {"type": _real, "help": "dropout on hidden representations"}),
    ("--input-dropout", "input_dropout",
     {"type": _real, "help": "dropout on the input features (default: per engine family, see README)"}),
    ("--batch-norm", "batch_norm", {"action": "store_true"}),
    ("--lr", "lr", {"type": _real}),
    ("--lr-schedule", "lr_schedule",
     {"choices": LR_SCHEDULES, "help": "cosine: annealed to 0 over --epochs, stepped once per epoch"}),
    ("--weight-decay", "weight_decay", {"type": _real}),
    ("--epochs", "epochs", {"type": int}),
    ("--seed", "seed", {"type": int}),
    ("--device", "device", {"type": str, "help": "auto, cpu, cuda, cuda:1, ..."}),
    ("--out", "out", {"help": "run directory: result.json and checkpoints"}),
    ("--checkpoint-every", "checkpoint_every", {"type": int, "help": "epochs between checkpoints (0: none)"}),
    ("--no-progress", "progress", {"action": "store_false"}),
    ("--precompute", "precompute",
     {"choices": PRECOMPUTE_MODES, "help": "compute the first aggregation once before training (GCN's ÂX, SAGE's "
                                           "neighbour mean; needs input dropout 0). auto: where it is the default "
                                           "(see README); on: required; off: the plain path"}),
    ("--no-precompute", "precompute", {"action": "store_const", "const": "off", "help": "same as --precompute off"}),
    ("--precompute-dir", "precompute_dir",
     {"help": "keep precomputed tables here and reuse them in later runs (keyed by graph and features)"}),
    ("--precompute-dtype", "precompute_dtype",
     {"choices": PRECOMPUTE_DTYPES, "help": "how the precomputed table is stored; float16 halves the bytes a "
                                            "mini-batch reads from it; auto: float16 for the mini-batch engines, "
                                            "float32 for the full-batch ones"}),
    ("--precompute-layout", "precompute_layout",
     {"choices": FIRST_HOP_LAYOUTS, "help": "SAGE's [X | mean] rows on disk: packed writes them side by side in one "
                                            "file (one read a row), split reads X and the table from two; auto: "
                                            "packed for the disk store when the disk has room"}),
    # RSC
    ("--budget", "rsc.budget", {"type": _real, "help": "RSC: fraction of backward SpMM FLOPs kept, in (0, 1]"}),
    ("--cache-interval", "rsc.cache_interval", {"type": int, "help": "RSC: iterations a sample is reused"}),
    ("--tune-interval", "rsc.tune_interval", {"type": int, "help": "RSC: epochs between budget re-allocations"}),
    ("--switch-time", "rsc.switch_time", {"type": _real, "help": "RSC: fraction of epochs before going exact"}),
    ("--allocation", "rsc.allocation", {"choices": ALLOCATIONS}),
    ("--selection", "rsc.selection", {"choices": SELECTIONS}),
    ("--step", "rsc.step", {"type": _real, "help": "RSC: greedy step"}),
    ("--warmup", "rsc.warmup", {"type": int, "help": "RSC: exact epochs before the first allocation"}),
    ("--val-guard", "rsc.val_guard", {"action": "store_true", "help": "RSC: go exact early when validation stalls"}),
    # mini-batch / ReFresh
    ("--fanouts", "minibatch.fanouts",
     {"type": _int_list, "help": "neighbours per hop, seeds' hop first, one per layer (-1: all); "
                                 "default: 15,10,5 cut to --layers, extended with 5s"}),
    ("--batch-size", "minibatch.batch_size", {"type": int}),
    ("--eval-fanouts", "minibatch.eval_fanouts",
     {"type": _int_list, "help": "evaluate on sampled neighbourhoods with these fanouts (one per layer, -1: all), "
                                 "--batch-size targets a batch, as PyG's NeighborLoader does; default: exact "
                                 "layer-wise evaluation over full neighbourhoods"}),
    ("--eval-nodes", "minibatch.eval_nodes",
     {"type": int, "help": "evaluate at most this many nodes of each split (a seeded sample; default 0: all)"}),
    ("--cache-mb", "minibatch.cache_mb", {"type": _real, "help": "byte budget shared by feature and history caches"}),
    ("--policy", "history.policy", {"choices": POLICIES, "help": "cache policy of --engine refresh"}),
    ("--rate", "history.rate", {"type": _real, "help": "gradient-norm quantile admitted, in (0, 1]"}),
    ("--evict", "history.evict", {"action": "store_true"}),
    ("--staleness", "history.staleness", {"type": int, "help": "iterations after which a cached embedding is stale"}),
    ("--cached-layers", "history.cached_layers", {"type": _int_list}),
    ("--embedding-share", "history.embedding_share",
     {"type": _real, "help": "most of --cache-mb embeddings may take from feature rows, in [0, 1] "
                             "(default: 0.5 for refresh, 1 for refresh-paper and gas)"}),
    ("--history-switch-time", "history.switch_time",
     {"type": _real, "help": "refresh: fraction of epochs trained with the history cache before going exact "
                             "(the whole budget back to feature rows; default 1: never)"}),
    ("--history-start-time", "history.start_time",
     {"type": _real, "help": "refresh: fraction of epochs trained before the history cache is used (a warm "
                             "start; default 0)"}),
    ("--cached-value", "history.cached_value",
     {"choices": CACHED_VALUES, "help": "refresh: what a cached layer keeps: its output, or its input neighbour "
                                        "mean (SAGE; weights, batch norm and activation applied fresh); auto "
                                        "(default): the mean where it applies"}),
    ("--hit-fanout", "history.hit_fanout",
     {"type": int, "help": "refresh: recompute each output hit from this many neighbours and mix it with its "
                           "cached row (LMC-style partial refresh; default: prune hits)"}),
    ("--hit-mix", "history.hit_mix",
     {"type": _real, "help": "refresh: weight of the recomputed part in a partially refreshed hit, in [0, 1]"}),
    ("--control-variate", "history.control_variate",
     {"type": _real, "help": "refresh: recompute each output hit with this probability and serve hist + (fresh - "
                             "hist) / p (a VR-GCN-style control variate; default: off)"}),
    ("--staleness-decay", "history.staleness_decay",
     {"type": _real, "help": "refresh: the layer above a cached layer weighs served rows exp(-decay * age / "
                             "staleness), renormalised (VISAGNN-style; default 0: off)"}),
    ("--refresh-every", "history.refresh_every",
     {"type": int, "help": "refresh: after every this many steps, recompute the oldest history entries in a "
                           "forward pass without gradient (REST-style; default: off)"}),
    ("--refresh-rows", "history.refresh_rows",
     {"type": int, "help": "refresh: entries per cached layer that one --refresh-every pass rewrites (default 1024)"}),
    ("--history-dtype", "history.entry_dtype",
     {"choices": ENTRY_DTYPES, "help": "refresh: how a history entry is stored; float16 holds twice the entries in "
                                       "the same bytes (default float32)"}),
    ("--eval-batch-size", "minibatch.eval_batch_size", {"type": int}),
    ("--features-on-disk", "minibatch.features_on_disk", {"action": "store_true"}),
    ("--features-path", "minibatch.features_path",
     {"type": str, "help": "memory-map features from this .npy (see `approxgnn prepare`)"}),
    ("--feature-store", "minibatch.feature_store",
     {"choices": FEATURE_STORES, "help": "how features on disk are read: disk (pread from a thread pool, O_DIRECT), "
                                         "mmap (a memory map), auto (default: the memory map for a file within half "
                                         "the memory the run may use, else disk)"}),
    ("--no-prefetch", "minibatch.prefetch", {"action": "store_false"}),
    ("--lookahead", "minibatch.lookahead",
     {"type": int, "help": "batches sampled ahead for the look-ahead cache (Belady over the window, the next "
                           "batch's misses prefetched); 0: off (the default)"}),
    ("--lookahead-share", "minibatch.lookahead_share",
     {"type": _real, "help": "part of --cache-mb the look-ahead buffer takes, in (0, 1] (default 0.5; all of "
                             "it without another cache)"}),
    # multi-process (data-parallel) mini-batch training
    ("--nproc", "dist.nproc",
     {"type": int, "help": "train in N local processes (torch.distributed; --engine sample/refresh; "
                           "--batch-size is per process); under torchrun the world size is torchrun's"}),
    ("--backend", "dist.backend", {"choices": BACKENDS, "help": "process-group backend (default: nccl on CUDA, else gloo)"}),
    ("--dist-timeout", "dist.timeout_s",
     {"type": _real, "help": "seconds any collective may wait before the run stops with an error"}),
    ("--dist-eval", "dist.eval",
     {"choices": DIST_EVAL_MODES, "help": "exact evaluation sharded over the processes, or on rank 0 alone"}),
    ("--threads", "dist.threads", {"type": int, "help": "torch threads per process (default: cores / processes)"}),
]


# Flags whose valid values depend on another flag: checked when the whole config is built.
_CROSS_FIELD = {"history.cached_layers"}


def _checked(parse: Callable[[str], Any], dest: str) -> Callable[[str], Any]:
    """argparse ``type`` for the flag stored at ``dest``: parse the text, then validate the value
    alone through the config dataclass that owns it (every other field at its default). argparse
    reports a failure as ``argument --flag: <the dataclass's message, with the valid range>``."""
    group, _, key = dest.rpartition(".")
    owner = {"": TrainConfig, "rsc": RSCConfig, "minibatch": MiniBatchConfig, "history": HistoryConfig,
             "dist": DistConfig}[group]

    def convert(text: str) -> Any:
        value = parse(text)
        try:
            owner(**{key: value})
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse: "invalid int value: 'x'"
    return convert


class _Parser(argparse.ArgumentParser):
    """argparse, pointing to ``--help`` on an error instead of printing the (long) usage."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)


def _usage_error(prog: str, message: str) -> NoReturn:
    """Print a usage error and exit 2 (as argparse does, by SystemExit)."""
    print(f"{prog}: error: {message}\n(see '{prog} --help')", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="approxgnn", description="Train GNNs faster by computing less.",
                epilog="exit status: 0 success, 1 run failure (bad data, diverged training, ...), "
                       "2 usage error (checked before any data is read), 130 interrupted")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model", argument_default=argparse.SUPPRESS)
    for flag, dest, kw in _TRAIN_FLAGS:
        if "type" in kw and dest not in _CROSS_FIELD:
            kw = {**kw, "type": _checked(kw["type"], dest)}
        t.add_argument(flag, dest=dest, **kw)
    t.add_argument("--rsc-preset", dest="rsc_preset", choices=sorted(RSC_PRESETS),
                   help="RSC settings by name (paper: the published top-k C=0.1 configuration); flags override it")
    t.add_argument("--config", dest="config_file", help="JSON file of TrainConfig fields (flags override it)")
    t.add_argument("--resume", dest="resume", help="continue the run in this directory from its checkpoint "
                                                   "(with its recorded configuration; only --no-progress may be added)")
    t.add_argument("--overwrite", dest="overwrite", action="store_true", help="replace a finished run in --out")

    d = sub.add_parser("demo", help="exact vs approximate engines on a generated graph")
    d.add_argument("--epochs", type=_at_least(1), default=60)
    d.add_argument("--minibatch-epochs", type=_at_least(1), default=20)
    d.add_argument("--nodes", type=_at_least(100), default=50_000)

    ds = sub.add_parser("datasets", help="list the datasets found under the data root")
    ds.add_argument("--data-root")

    pr = sub.add_parser("prepare", help="write a dataset as an on-disk layout (a directory) or its features as a .npy")
    pr.add_argument("--dataset", required=True, help="name or path, as for `train`")
    pr.add_argument("--data-root")
    pr.add_argument("--out", required=True,
                    help="a directory: the on-disk layout (memory-mapped CSR, features, labels, splits; train with "
                         "--dataset DIR); a .npy file: the features alone (train with --features-path)")
    pr.add_argument("--num-features", type=_at_least(1),
                    help="synthetic names only: feature width (the graph is generated straight into the layout)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing layout in --out")

    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout)")
    b.add_argument("name", help="e.g. spmm → benchmarks/exact_spmm.py, or a script name")
    b.add_argument("args", nargs=argparse.REMAINDER)

    r = sub.add_parser("report", help="a Markdown table and validation curves of finished runs")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by `approxgnn train --out`")
    r.add_argument("--out", default="report", help="where report.md and the PNG plots go (default: report)")
    return p


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """Dataclass defaults, then ``--preset``, then the ``--config`` file, then the flags actually given
    (ValueError if invalid). Builds plain values only: :meth:`TrainConfig.from_dict` migrates
    and checks them, as it does a checkpoint's for ``--resume``."""
    base: dict[str, Any] = {}
    where = None
    if getattr(ns, "config_file", None):
        where = f"--config {ns.config_file} (with the flags)"
        try:
            base = json.loads(Path(ns.config_file).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {ns.config_file}: {e}") from None
        if isinstance(base, dict):
            base = base.get("config", base)  # also accept a result.json
        if not isinstance(base, dict):
            raise ValueError(f"--config {ns.config_file}: expected a JSON object of TrainConfig fields")
    if getattr(ns, "rsc_preset", None):  # under the --config file's and the flags' values
        if not isinstance(base.get("rsc", {}), dict):
            raise ValueError(f"{where}: 'rsc' must be a JSON object")
        base["rsc"] = {**RSC_PRESETS[ns.rsc_preset], **base.get("rsc", {})}
    for _, dest, _ in _TRAIN_FLAGS:
        if not hasattr(ns, dest):
            continue
        group, _, key = dest.rpartition(".")
        target = base
        if group:  # a pre-split file's "refresh" group goes under these (TrainConfig.from_dict)
            if not isinstance(base.setdefault(group, {}), dict):
                raise ValueError(f"{where}: '{group}' must be a JSON object")
            target = base[group]
        target[key] = getattr(ns, dest)
    return TrainConfig.from_dict(base, where=where)


Job = Callable[[], int]


def _given_flags(ns: argparse.Namespace) -> list[str]:
    """The ``train`` flags present on the command line (its parser's defaults are suppressed)."""
    flag_of = {dest: flag for flag, dest, _ in _TRAIN_FLAGS}
    flag_of.update(config_file="--config", resume="--resume", overwrite="--overwrite", rsc_preset="--rsc-preset")
    return [flag_of[k] for k in vars(ns) if k in flag_of]


def prepare_train(ns: argparse.Namespace) -> Job:
    resume_state = None
    if getattr(ns, "resume", None):
        extra = [f for f in _given_flags(ns) if f not in ("--resume", "--no-progress", "--nproc")]
        if extra:
            raise ValueError(f"--resume continues a run with its recorded configuration; drop {', '.join(extra)} "
                             "(only --no-progress and --nproc may be added)")
        try:
            resume_state = read_checkpoint(ns.resume)
        except FileNotFoundError as e:
            raise ValueError(f"--resume {ns.resume}: {e}") from None
        try:
            cfg = TrainConfig.from_dict(resume_state["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise RuntimeError(f"the checkpoint in {ns.resume} holds no valid configuration: {e}") from None
        store = (resume_state.get("trainer") or {}).get("store")
        if (cfg.precompute == "auto" and cfg.engine == "refresh" and cfg.model == "sage" and isinstance(store, dict)
                and joins_first_hop(store) != cfg.first_hop_path()[0]):
            # ``auto`` took the first hop for refresh only later: keep the path the run started on (a
            # SAGE first hop always joins [X | mean], so the saved store says which path that was)
            cfg.precompute = "on" if joins_first_hop(store) else "off"
        cfg.out = ns.resume
        if hasattr(ns, "progress"):
            cfg.progress = ns.progress
        cfg.dist.nproc = getattr(ns, "dist.nproc", cfg.dist.nproc)
    else:
        cfg = config_from_args(ns)
        check_out_dir(cfg.out, resume=False, overwrite=getattr(ns, "overwrite", False))
    check_dataset_name(cfg.dataset)
    world = cfg.dist.nproc = _world_size(ns, cfg)
    cfg.validate()  # the world it will run in (e.g. a full-batch engine runs in one process)
    if resume_state is not None:
        from .train.ddp import check_world_size

        check_world_size(resume_state, world, ns.resume)

    def job() -> int:
        if under_launcher():  # torchrun (or any launcher that set RANK, WORLD_SIZE, MASTER_*)
            return _train_rank(cfg, resume_state is not None)
        if world > 1:
            from .train.distributed import launch

            return launch(_train_rank, world, (cfg, resume_state is not None), grace_s=cfg.dist.timeout_s + 10)
        result = run(cfg, resume_state=resume_state)
        _print_result(result, cfg)
        return EXIT_OK

    return job


def _world_size(ns: argparse.Namespace, cfg: TrainConfig) -> int:
    """The processes this run will have: torchrun's world, else ``--nproc`` (or the recorded one);
    checked against the GPUs when it trains on CUDA."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env_world_size())) if under_launcher() else cfg.dist.nproc
    check_devices(resolve_device(cfg.device), local, cfg.dist.backend)
    if not under_launcher():
        return cfg.dist.nproc
    world = env_world_size()
    given = getattr(ns, "dist.nproc", None)
    if given is not None and given != world:
        raise ValueError(f"--nproc {given} under a launcher whose WORLD_SIZE is {world}: drop --nproc "
                         "(torchrun sets the number of processes)")
    return world


def _train_rank(cfg: TrainConfig, resume: bool) -> int:
    """One rank of a multi-process run (spawned by ``--nproc`` or by torchrun); rank 0 reports."""
    from .train.ddp import run_rank

    result = run_rank(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_result(result, cfg)
    return EXIT_OK


def _print_result(result: dict[str, Any], cfg: TrainConfig) -> None:
    print(format_table([result], RESULT_COLUMNS))
    if cfg.out:
        print(f"result: {Path(cfg.out) / 'result.json'}")


def prepare_demo(ns: argparse.Namespace) -> Job:
    def job() -> int:
        from .datasets import load_dataset

        # A hard graph (weak features, homophily 0.3): exact accuracy is far from 100 % and still
        # improving, so the table shows whether an engine keeps it, not only its speed. 10 % training
        # nodes rather than the preset's 2 %, so that a 50k-node graph has several mini-batches.
        data = load_dataset(f"synthetic-hard-{ns.nodes}", train=0.1)
        print(f"demo graph: synthetic-hard power-law, {data.num_nodes} nodes, {data.num_edges} edges, "
              f"{data.num_features} features, {data.num_classes} classes, "
              f"{int(data.train_mask.sum())} training nodes")
        # Each engine against its family's plain exact baseline (no precomputed first hop, no
        # approximation), trained from the same seed. The staleness limit is two epochs' worth of
        # mini-batches, so entries really expire.
        batches = -(-int(data.train_mask.sum()) // 1024)
        mini = dict(model="sage", layers=2, hidden=128, epochs=ns.minibatch_epochs, dropout=0.1, batch_norm=True,
                    minibatch=MiniBatchConfig(fanouts=[10, 10], batch_size=1024, cache_mb=4.0),
                    history=HistoryConfig(staleness=2 * batches))
        groups = [  # (margin, baseline and engines as (label, engine, precompute), config)
            (0.005, [("exact", "exact", "off"), ("exact+first-hop", "exact", "on"), ("rsc+first-hop", "rsc", "on")],
             dict(model="gcn", layers=3, hidden=128, epochs=ns.epochs)),
            (0.01, [("sample", "sample", "off"), ("sample+first-hop", "sample", "on"), ("refresh", "refresh", "auto")],
             mini),
        ]
        # Compile every engine's numba kernels first, on a small graph: the first run after an
        # install would otherwise carry seconds of compilation that the runs after it do not.
        warm = load_dataset("synthetic-hard-2000", train=0.1)
        for _, runs, kw in groups:
            for _, engine, pc in runs:
                run(TrainConfig(dataset=warm.name, engine=engine, precompute=pc, **{**kw, "epochs": 2,
                                                                                   "progress": False}), warm)
        rows = []
        for margin, runs, kw in groups:
            group = []
            for label, engine, pc in runs:
                r = run(TrainConfig(dataset=data.name, engine=engine, precompute=pc, **kw), data)
                r["run"] = label
                group.append(r)
            for r in group:
                r["speedup"] = group[0]["train_time_s"] / r["train_time_s"]
                r["tta_speedup"] = report.tta_speedup(group[0], r, margin)
                r["verdict"] = _demo_verdict(r, r is group[0])
                r["first_hop_s"] = r["precompute"].get("seconds")  # once, before training: not in train_time_s
            rows += group
        print(format_table(rows, ["run", "model"] + RESULT_COLUMNS[3:] + ["first_hop_s", "speedup", "tta_speedup",
                                                                          "verdict"]))
        print("tta_speedup: time for the baseline (first row of its group: exact, or sample, on the plain path) to "
              "reach its best validation metric minus 0.5 pp (full batch) or 1 pp (mini-batch), over this run's "
              "time to the same level. +first-hop: the first aggregation computed once before training (first_hop_s).")
        return EXIT_OK

    return job


# Why an engine may not pay on the demo's small graph, in one line (shown when it does not).
_DEMO_WHY = {
    "rsc": "RSC only shortens the backward SpMM, a small share of a CPU step on a graph this small (README: When RSC "
           "pays)",
    "refresh": "every feature row of a graph this small is in RAM already: the cache's bookkeeping costs more than "
               "the reads it saves (it pays when features are read from disk or over a slow bus)",
    "exact": "the first hop's one-off cost is not repaid in this many epochs",
    "sample": "the first hop's one-off cost is not repaid in this many epochs",
}


def _demo_verdict(r: dict[str, Any], baseline: bool) -> str:
    """``baseline``, ``pays`` (reached the baseline's level sooner) or a one-line reason why not."""
    if baseline:
        return "baseline"
    tta = r["tta_speedup"]
    if isinstance(tta, float) and tta > 1.0:
        return "pays"
    how = "not reached" if tta == "not reached" else "slower"
    return f"does not pay here ({how}): {_DEMO_WHY[r['engine']]}"


def prepare_datasets(ns: argparse.Namespace) -> Job:
    def job() -> int:
        rows = list_datasets(ns.data_root)
        if not rows:
            print("no datasets found; set --data-root or APPROXGNN_DATA")
            return EXIT_FAILURE
        cols = ["name", "nodes", "edges", "features", "classes", "metric", "train/val/test", "error"]
        print(format_table(rows, [c for c in cols if any(c in r for r in rows)]))
        return EXIT_OK

    return job


BENCH_ALIASES = {"spmm": "exact_spmm"}


def prepare_disk_files(ns: argparse.Namespace) -> Job:
    """A dataset → an on-disk layout directory, or its features → a float32 ``.npy``."""
    check_dataset_name(ns.dataset)
    synthetic_sizes = parse_synthetic_name(ns.dataset.strip().lower())
    if ns.num_features is not None and synthetic_sizes is None:
        raise ValueError(f"--num-features applies to synthetic names only, not {ns.dataset!r}")
    if ns.out.endswith(".npy"):
        return _prepare_features(ns)
    if Path(ns.out).is_file() or Path(ns.out).suffix in (".txt", ".npz", ".pt", ".json", ".csv", ".gz", ".bin"):
        raise ValueError(f"--out must name a directory (the on-disk layout) or a .npy file (the features), "
                         f"got {ns.out!r}")

    def job() -> int:
        from .datasets import load_dataset, write_layout, write_synthetic_layout

        if synthetic_sizes is not None:  # generated into the layout, never whole in memory
            width = {"num_features": ns.num_features} if ns.num_features else {}
            data = write_synthetic_layout(ns.out, name=ns.dataset, overwrite=ns.overwrite, **{**synthetic_sizes, **width})
        else:
            data = write_layout(load_dataset(ns.dataset, root=ns.data_root), ns.out, overwrite=ns.overwrite)
        print(f"wrote {ns.out}: {data.num_nodes} nodes, {data.csr[1].shape[0]} CSR entries, {data.num_features} "
              f"features ({data.x.nbytes / 2**20:.1f} MiB); train with --dataset {ns.out}")
        return EXIT_OK

    return job


def _prepare_features(ns: argparse.Namespace) -> Job:
    """``prepare --out X.npy``: the features alone, for ``--features-path``."""
    def job() -> int:
        from .datasets import load_dataset
        from .minibatch import write_features

        width = {"num_features": ns.num_features} if ns.num_features else {}
        data = load_dataset(ns.dataset, root=ns.data_root, **width)
        x = write_features(ns.out, data.x)
        print(f"wrote {ns.out}: {x.shape[0]} x {x.shape[1]} float32 ({x.nbytes / 2**20:.1f} MiB); "
              f"train with --features-path {ns.out}")
        return EXIT_OK

    return job


def prepare_bench(ns: argparse.Namespace) -> Job:
    bench_dir = Path(__file__).resolve().parents[2] / "benchmarks"
    script = bench_dir / f"{BENCH_ALIASES.get(ns.name, ns.name)}.py"
    if not script.exists():
        have = sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_")) if bench_dir.exists() else []
        raise ValueError(f"no benchmark {ns.name!r} at {script}; available: "
                         f"{', '.join(have) or 'none (benchmarks ship with the source checkout)'}")

    def job() -> int:
        sys.argv = [str(script), *ns.args]
        # As `python benchmarks/<name>.py` would: the scripts import their shared `_common` module.
        sys.path.insert(0, str(bench_dir))
        runpy.run_path(str(script), run_name="__main__")
        return EXIT_OK

    return job


COMMANDS: dict[str, Callable[[argparse.Namespace], Job]] = {
    "train": prepare_train, "demo": prepare_demo, "datasets": prepare_datasets, "prepare": prepare_disk_files,
    "bench": prepare_bench, "report": report.prepare,
}


def _failure(e: BaseException) -> int:
    kind = "data error" if isinstance(e, DatasetError) else type(e).__name__
    print(f"approxgnn: {kind}: {e}", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status (0 success, 1 run failure, 130 interrupted).

    A usage error exits through ``SystemExit(2)``, as argparse itself does (and ``--help`` through
    ``SystemExit(0)``), before any data is read. The ``approxgnn`` script passes both on as the
    process exit status.
    """
    ns = build_parser().parse_args(argv)  # each flag value is validated here
    prog = f"approxgnn {ns.command}"
    # Phase 1 -- usage: the whole configuration, --out, --resume, the dataset name. Reads no data.
    try:
        job = COMMANDS[ns.command](ns)
    except UnknownDatasetError as e:
        _usage_error(prog, str(e))
    except DatasetError as e:  # a file exists but is unreadable
        return _failure(e)
    except ValueError as e:
        _usage_error(prog, str(e))
    except (RuntimeError, OSError) as e:  # e.g. a checkpoint that exists but is torn
        return _failure(e)
    except KeyboardInterrupt:
        print("approxgnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # Phase 2 -- the run: whatever fails now is a run failure, a ValueError included.
    try:
        return job()
    except (ValueError, RuntimeError, MemoryError, OSError) as e:  # DatasetError, TrainingDiverged among them
        return _failure(e)
    except KeyboardInterrupt:
        print("approxgnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
