"""Training on features that do not fit in memory, end to end: the cells of issue 22, each in its own
process under a memory cgroup cap, the page cache dropped before each.

    flock /work/coord/bench.lock python benchmarks/outofcore_e2e.py --layout /work/bigdata/hard2m \\
        --make-nodes 2000000 --batches 8 --batch-size 256 --json benchmarks/outofcore_e2e_2m.json

Cells (``--cells``; every one SAGE, ``--layers`` layers, ``--fanouts``, ``--batch-size`` seeds):

* ``memmap``: today's memory map (``--feature-store mmap``), no cache;
* ``disk``: the disk store (``DiskFeatureStore``), no cache;
* ``disk+feature``: + the feature cache (``--policy feature``) within ``--cache-mb``;
* ``disk+feature+lookahead``: + the look-ahead cache (``--lookahead K``, half of ``--cache-mb``);
* ``disk+lookahead+history``: ``--engine refresh`` with the look-ahead: feature cache, history
  cache and look-ahead buffer in one ``--cache-mb``;
* ``disk+lookahead``: the look-ahead cache alone, with the whole of ``--cache-mb`` (Ginex's choice:
  Belady over the window instead of a static cache; not one of the issue's cells);
* ``pyg``: PyG's ``NeighborLoader`` over a memory-mapped feature tensor (the anchors' "PyG+");
  needs ``torch_sparse`` (or ``pyg_lib``) for sampling, else recorded as skipped.

Each cell runs in a child process (``--cell``) that first joins a fresh memory cgroup capped at
``--cap-mb`` (default: half the feature file; v2 where its memory controller is enabled, else v1),
after ``sync; echo 3 > /proc/sys/vm/drop_caches`` (root). It checks the library's memory plan (a
refusal is recorded, not an OOM kill), trains ``--epochs`` epochs over a training set cut to
``--batches`` batches (``0``: the whole training set; a cold memory-mapped epoch of a 10M-node
graph takes about an hour), and reports per epoch: time, rows requested, rows read from the store
and bytes read from disk (the store's count; ``/proc/self/io`` for the kernel's, readahead
included), rows the caches served, and peak RSS (``ru_maxrss``) and the cgroup's peak (page cache
included). ``--evaluate`` adds test accuracy after every epoch (exact: a full layer-wise pass, far
slower than an epoch at millions of nodes under the cap; with ``--eval-fanouts`` and ``--eval-nodes``
sampled, as PyG evaluates large graphs). The JSON is rewritten after every cell and cells already in it are skipped, so
a killed run resumes.

``--precompute on`` gives every cell of ours the precomputed first hop (a float16 table of the
neighbour means beside ``x.npy``, read by the same store; the sampler stops one hop earlier). The
table is built once, before the cells and without the cap, and its cost recorded as
``precompute``; PyG's cell samples every hop. With the library's default ``--precompute-layout
auto`` that build also writes ``[X | mean]`` side by side into one packed file (one read a row);
the cell ``disk+split`` reads the two files instead, as before packing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common

import numpy as np

CELLS = ("memmap", "disk", "disk+feature", "disk+feature+lookahead", "disk+lookahead+history", "pyg", "disk+lookahead",
         "disk+split")
HERE = Path(__file__).resolve()


# ---- the parent: cells one by one ---------------------------------------------------------------
def make_cgroup(cap: int) -> tuple[Path, str] | None:
    """A fresh memory cgroup capped at ``cap`` bytes: v2 where the unified hierarchy has the memory
    controller, else v1. Returns its directory and version, or None when neither can be made."""
    name = f"approxgnn-ooc-{os.getpid()}-{time.time_ns()}"
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        ctl = root / "cgroup.controllers"
        if ctl.exists() and "memory" in ctl.read_text().split():
            try:
                (root / "cgroup.subtree_control").write_text("+memory")
                d = root / name
                d.mkdir()
                (d / "memory.max").write_text(str(cap))
                (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
                return d, "v2"
            except OSError:
                continue
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        d = v1 / name
        d.mkdir()
        (d / "memory.limit_in_bytes").write_text(str(cap))
        return d, "v1"
    return None


def cgroup_figures(group: tuple[Path, str]) -> dict[str, Any]:
    d, version = group
    read = lambda f: (d / f).read_text() if (d / f).exists() else ""  # noqa: E731
    if version == "v1":
        oom = dict(line.split() for line in read("memory.oom_control").splitlines() if line)
        return {"cgroup_peak_bytes": int(read("memory.max_usage_in_bytes") or 0),
                "oom_kills": int(oom.get("oom_kill", 0))}
    events = dict(line.split() for line in read("memory.events").splitlines() if line)
    return {"cgroup_peak_bytes": int(read("memory.peak") or 0) or None, "oom_kills": int(events.get("oom_kill", 0))}


def run_cell(a: argparse.Namespace, cell: str, cap: int | None) -> dict[str, Any]:
    group = make_cgroup(cap) if cap else None
    if cap and group is None:
        raise SystemExit("no memory cgroup could be made (needs root and cgroup v1 or v2 with the memory controller)")
    drop = _common.drop_caches()
    cmd = [sys.executable, str(HERE), "--cell", cell, *sys.argv[1:]]
    if group is not None:
        cmd += ["--join", str(group[0])]
    t0 = time.perf_counter()
    child_ = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child_.communicate(timeout=a.cell_timeout or None)
        timed_out = False
    except subprocess.TimeoutExpired:
        child_.kill()
        stdout, stderr = child_.communicate()
        timed_out = True
    res: dict[str, Any] = {"cell": cell, "wall_s": time.perf_counter() - t0, "returncode": child_.returncode,
                           "cap_bytes": cap, "cgroup": group[1] if group else None, "page_cache": drop}
    if group is not None:
        res.update(cgroup_figures(group))
        group[0].rmdir()
    out = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if out:
        res.update(json.loads(out[-1][len("RESULT "):]))
    elif timed_out:
        res["timed_out"] = f"killed after --cell-timeout {a.cell_timeout} s"
    else:
        res["error"] = (stderr or stdout)[-2000:]
        res["killed"] = child_.returncode < 0
    return res


def parent(a: argparse.Namespace) -> None:
    layout = Path(a.layout)
    if not (layout / "manifest.json").exists():
        if not a.make_nodes:
            raise SystemExit(f"{layout} is not a layout; pass --make-nodes N to generate one")
        from approxgnn.datasets.layout_write import write_synthetic_layout
        from approxgnn.datasets.registry import HARD_SYNTHETIC

        t0 = time.perf_counter()
        write_synthetic_layout(layout, name="synthetic-hard", num_nodes=a.make_nodes, avg_degree=20.0,
                               num_features=a.features, **{**HARD_SYNTHETIC, "train": a.train_fraction})
        print(f"wrote {layout} in {time.perf_counter() - t0:.0f} s", flush=True)
    feature_bytes = (layout / "x.npy").stat().st_size
    cap = None if a.no_cap else int(a.cap_mb * 2**20) if a.cap_mb else feature_bytes // 2
    payload: dict[str, Any] = {"command": " ".join(sys.argv), "layout": str(layout), "seed": a.seed,
                               "feature_bytes": feature_bytes,
                               "cap_bytes": cap, "cells": {}}
    if a.json and Path(a.json).exists():
        earlier = json.loads(Path(a.json).read_text())
        payload["cells"], payload["precompute"] = earlier.get("cells", {}), earlier.get("precompute")
    if a.precompute == "on" and not (payload.get("precompute") or {}).get("path"):
        # The table is built once, without the cap (a full-neighbourhood pass over X at random is
        # what the cap forbids); the cells then find it beside x.npy and report it reused.
        payload["precompute"] = run_cell(a, "precompute", None)
        print(json.dumps(payload["precompute"]), flush=True)
        _common.write_json(a.json, payload)
    for cell in a.cells:
        if cell in payload["cells"] and not {"error", "timed_out"} & payload["cells"][cell].keys():
            print(f"{cell}: in {a.json} already", flush=True)
            continue
        res = run_cell(a, cell, cap)
        payload["cells"][cell] = res
        print(json.dumps(summary(res)), flush=True)
        _common.write_json(a.json, payload)


def summary(res: dict[str, Any]) -> dict[str, Any]:
    keys = ("cell", "epoch_time_s", "rows_requested", "store_rows_read", "disk_bytes_read", "kernel_read_bytes",
            "peak_rss_bytes", "cgroup_peak_bytes", "test", "refused", "skipped", "timed_out", "error")
    return {k: res[k] for k in keys if k in res}


# ---- the child: one cell ---------------------------------------------------------------------
def child(a: argparse.Namespace) -> None:
    if a.join:
        (Path(a.join) / "cgroup.procs").write_text(str(os.getpid()))
    from approxgnn.datasets import load_dataset

    data = load_dataset(a.layout)
    if a.cell == "pyg":
        print("RESULT " + json.dumps(pyg_cell(a, data)), flush=True)
        return
    from approxgnn.train import TrainConfig, build_trainer
    from approxgnn.train.memory import check_memory

    cut_training_set(a, data)
    if a.cell == "precompute":
        t0 = time.perf_counter()
        info = build_trainer(cell_config(a, "disk"), data).run_info()["precompute"]
        print("RESULT " + json.dumps(info | {"build_s": time.perf_counter() - t0}, default=str), flush=True)
        return
    cfg = cell_config(a, a.cell)
    res: dict[str, Any] = {"config": cfg.to_dict()["minibatch"], "engine": cfg.engine, "policy": cfg.cache_policy()}
    try:
        check_memory(cfg, data)
    except MemoryError as e:
        res["refused"] = str(e)
        print("RESULT " + json.dumps(res), flush=True)
        return
    trainer = build_trainer(cfg, data)
    epochs = []
    for epoch in range(a.epochs):
        io0 = _common.kernel_read_bytes()
        rec = trainer.train_epoch(epoch)
        epochs.append({k: rec.get(k) for k in ("step_time_s", "feature_rows_read", "feature_bytes_read",
                                               "feature_cache_rows_served", "lookahead_rows_served",
                                               "lookahead_rows_prefetched", "disk_reads", "disk_bytes_read",
                                               "batches", "sampled_nodes_per_hop", "hit_rate", "time")}
                      | {"kernel_read_bytes": _common.kernel_read_bytes() - io0})
        if a.evaluate:  # after every epoch: a curve for time to accuracy (evaluation time not in step_time_s)
            t0 = time.perf_counter()
            ev = trainer.evaluate()
            epochs[-1].update(val=ev["val"], test=ev["test"], eval_s=time.perf_counter() - t0)
            print(json.dumps({"epoch": epoch, **{k: epochs[-1][k] for k in ("step_time_s", "val", "test", "eval_s")}}),
                  file=sys.stderr, flush=True)
    last = epochs[-1]
    res.update(epochs=epochs, epoch_time_s=float(np.median([e["step_time_s"] for e in epochs])),
               rows_requested=int(last["sampled_nodes_per_hop"][-1] * last["batches"]),
               store_rows_read=last["feature_rows_read"], disk_bytes_read=last["disk_bytes_read"],
               kernel_read_bytes=last["kernel_read_bytes"], cache_split=trainer.run_info().get("cache_split"),
               evaluation=trainer.run_info().get("evaluation"))
    if a.evaluate:
        res.update(test=last["test"], val=last["val"])
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(res, default=float), flush=True)


def cut_training_set(a: argparse.Namespace, data: Any) -> None:
    """Keep ``--batches`` batches' worth of training nodes (a seeded random subset)."""
    if not a.batches:
        return
    train = np.flatnonzero(np.asarray(data.train_mask))
    keep = np.random.default_rng(0).permutation(train)[: a.batches * a.batch_size]
    mask = np.zeros(data.num_nodes, bool)
    mask[keep] = True
    data.train_mask = mask


def cell_config(a: argparse.Namespace, cell: str) -> Any:
    from approxgnn.train import TrainConfig

    mb: dict[str, Any] = {"fanouts": a.fanouts, "batch_size": a.batch_size, "cache_mb": a.cache_mb,
                          "eval_batch_size": a.eval_batch_size, "lookahead": 0, "feature_store": "disk",
                          "eval_fanouts": a.eval_fanouts, "eval_nodes": a.eval_nodes}
    engine, policy = "sample", "none"
    if cell == "memmap":
        mb["feature_store"] = "mmap"
    elif cell == "disk+feature":
        policy = "feature"
    elif cell == "disk+lookahead":
        mb["lookahead"] = a.lookahead
    elif cell == "disk+feature+lookahead":
        policy, mb["lookahead"] = "feature", a.lookahead
    elif cell == "disk+lookahead+history":
        engine, policy, mb["lookahead"] = "refresh", "refresh", a.lookahead
    return TrainConfig.from_dict({"dataset": a.layout, "model": "sage", "engine": engine, "layers": a.layers,
                                  "precompute": a.precompute,
                                  "precompute_layout": "split" if cell == "disk+split" else a.precompute_layout,
                                  "hidden": a.hidden, "epochs": a.epochs, "dropout": 0.1, "batch_norm": True,
                                  "lr": 1e-3, "seed": a.seed, "progress": False, "minibatch": mb,
                                  "history": {"policy": policy}})


def pyg_cell(a: argparse.Namespace, data: Any) -> dict[str, Any]:
    """PyG's NeighborLoader over a memory-mapped feature tensor, GraphSAGE, Adam (the anchors' PyG+)."""
    try:
        import torch_sparse  # noqa: F401
    except ImportError:
        try:
            import pyg_lib  # noqa: F401
        except ImportError:
            return {"skipped": "neither torch_sparse nor pyg_lib is importable: NeighborLoader cannot sample"}
    import torch
    import torch.nn.functional as F
    from torch_geometric.data import Data
    from torch_geometric.loader import NeighborLoader
    from torch_geometric.nn import GraphSAGE

    cut_training_set(a, data)
    torch.manual_seed(a.seed)
    rowptr, col = data.csr
    x = torch.from_numpy(np.load(Path(a.layout) / "x.npy", mmap_mode="r"))  # the memory map, never copied
    n = data.num_nodes
    rowptr, col = (torch.from_numpy(np.asarray(v, np.int64)) for v in (rowptr, col))
    try:  # a CSR SparseTensor is sampled as it is; an edge_index would be copied to CSC (3 copies of E at peak)
        from torch_sparse import SparseTensor

        g = Data(x=x, adj_t=SparseTensor(rowptr=rowptr, col=col, sparse_sizes=(n, n), is_sorted=True, trust_data=True))
    except ImportError:
        adj = torch.sparse_csr_tensor(rowptr, col, torch.ones(len(col)), (n, n))
        g = Data(x=x, edge_index=adj.to_sparse_coo().indices())
    del rowptr, col
    g.y = torch.as_tensor(np.asarray(data.y))
    train = torch.from_numpy(np.flatnonzero(np.asarray(data.train_mask)))
    loader = NeighborLoader(g, num_neighbors=a.fanouts, batch_size=a.batch_size, input_nodes=train, shuffle=True)
    model = GraphSAGE(data.num_features, a.hidden, a.layers, data.num_classes, dropout=0.1, norm="batch_norm")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    epochs = []

    def accuracy(mask: np.ndarray) -> float:
        """Sampled evaluation, PyG's way: a seeded sample of at most --eval-nodes nodes of the split."""
        ids = np.flatnonzero(mask)
        if a.eval_nodes and len(ids) > a.eval_nodes:
            ids = np.sort(np.random.default_rng(0).permutation(ids)[: a.eval_nodes])
        model.eval()
        right = 0
        with torch.no_grad():
            for batch in NeighborLoader(g, num_neighbors=a.eval_fanouts or a.fanouts, batch_size=a.batch_size,
                                        input_nodes=torch.from_numpy(ids)):
                out = model(batch.x, batch.adj_t if "adj_t" in batch else batch.edge_index)[: batch.batch_size]
                right += int((out.argmax(1) == batch.y[: batch.batch_size]).sum())
        return right / len(ids)

    for _ in range(a.epochs):
        io0, t0, rows = _common.kernel_read_bytes(), time.perf_counter(), 0
        model.train()
        for batch in loader:
            rows += batch.num_nodes
            opt.zero_grad()
            out = model(batch.x, batch.adj_t if "adj_t" in batch else batch.edge_index)[: batch.batch_size]
            F.cross_entropy(out, batch.y[: batch.batch_size]).backward()
            opt.step()
        epochs.append({"step_time_s": time.perf_counter() - t0, "rows_requested": rows,
                       "kernel_read_bytes": _common.kernel_read_bytes() - io0})
        if a.evaluate:
            t0 = time.perf_counter()
            epochs[-1].update(val=accuracy(np.asarray(data.val_mask)), test=accuracy(np.asarray(data.test_mask)),
                              eval_s=time.perf_counter() - t0)
            print(json.dumps({"epoch": len(epochs) - 1, **{k: epochs[-1][k] for k in ("step_time_s", "val", "test")}}),
                  file=sys.stderr, flush=True)
    res = {"epochs": epochs, "epoch_time_s": float(np.median([e["step_time_s"] for e in epochs])),
           "rows_requested": epochs[-1]["rows_requested"], "kernel_read_bytes": epochs[-1]["kernel_read_bytes"],
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if a.evaluate:
        res.update(val=epochs[-1]["val"], test=epochs[-1]["test"])
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", required=True, help="an on-disk layout (generated there with --make-nodes)")
    p.add_argument("--make-nodes", type=int, default=0, help="generate a synthetic-hard layout of N nodes if absent")
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--train-fraction", type=float, default=0.01)
    p.add_argument("--cells", type=lambda s: s.split(","), default=list(CELLS))
    p.add_argument("--cap-mb", type=float, default=0.0, help="memory cgroup cap (default: half the feature file)")
    p.add_argument("--no-cap", action="store_true")
    p.add_argument("--cache-mb", type=float, default=256.0)
    p.add_argument("--lookahead", type=int, default=4)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--fanouts", type=lambda s: [int(v) for v in s.split(",")], default=[15, 10, 5])
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=0, help="train on this many batches per epoch (0: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="the training seed (model, sampling, dropout); the graph, "
                   "the --batches subset and the evaluation nodes stay fixed")
    p.add_argument("--eval-batch-size", type=int, default=65536)
    p.add_argument("--evaluate", action="store_true", help="test accuracy after every epoch (exact: slow at scale; "
                                                           "see --eval-fanouts)")
    p.add_argument("--eval-fanouts", type=lambda s: [int(v) for v in s.split(",")],
                   help="evaluate on sampled neighbourhoods (the library's --eval-fanouts)")
    p.add_argument("--eval-nodes", type=int, default=0, help="evaluate at most this many nodes a split (0: all)")
    p.add_argument("--precompute", default="off", choices=("off", "on"),
                   help="the precomputed first hop (float16 table beside x.npy, built once before the cells, "
                        "uncapped) for every cell of ours; PyG's cell never has it")
    p.add_argument("--precompute-layout", default="auto", choices=("auto", "packed", "split"),
                   help="[X | mean] in one packed file or two (the library's --precompute-layout; the cell "
                        "disk+split always reads two files)")
    p.add_argument("--cell-timeout", type=float, default=0.0, help="kill a cell after this many seconds (0: never)")
    p.add_argument("--json")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell here
    p.add_argument("--join", help=argparse.SUPPRESS)  # internal: the cgroup to join first
    a = p.parse_args()
    unknown = set(a.cells) - set(CELLS)
    if unknown:
        p.error(f"unknown cells {sorted(unknown)}; choose from {','.join(CELLS)}")
    child(a) if a.cell else parent(a)


if __name__ == "__main__":
    main()
