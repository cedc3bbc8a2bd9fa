"""Ours against PyG's standard mini-batch loop, in one run, on the hard 1M-node graph (issue 10).

    python benchmarks/minibatch_vs_pyg.py --json benchmarks/minibatch_vs_pyg.json --epochs 5 --seeds 0,1
    python benchmarks/minibatch_vs_pyg.py --json new.json --our-epochs 8 --resume benchmarks/minibatch_vs_pyg.json
    python benchmarks/minibatch_vs_pyg.py --quick        # smoke test: synthetic-hard-50k, 2 epochs
    python benchmarks/minibatch_vs_pyg.py --runs pyg,sample,sample+pc --seeds 0,1,2 --our-epochs 8 --json pc.json

``--our-epochs`` lets our runs go on past PyG's epochs (the lr is constant, so their first epochs
are the same run) until they can reach PyG's final test; ``--resume`` keeps the runs of an earlier
JSON that would be repeated (e.g. PyG's, the slow ones).

Needs PyG with a sampler backend (``make peer``: torch_geometric, and torch-scatter/torch-sparse
from ``../shared/wheels``); without them it prints ``skipped`` and exits 0.

Graph: ``synthetic-hard-1m`` (1M nodes, 10M edges, 128-d features written to a ``.npy`` and
memory-mapped by both sides, 2 % training nodes). Both sides train on the same cleaned graph
(undirected, duplicates and self-loops removed: what our trainer builds; PyG's side gets it
through ``to_undirected``/``remove_self_loops``) with the same settings: SAGE 3 x 128 with mean
aggregation, no batch norm, dropout 0.5 after the hidden layers and none on the raw inputs (PyG's
``BasicGNN``; our mini-batch engines' default input dropout is 0 too), fanouts [15, 10, 5],
batch 1024, Adam (``--lr``, ``--weight-decay``), the same epochs.

* PyG: ``NeighborLoader`` (torch-sparse backend, ``--pyg-workers`` loader workers, default 0)
  and ``torch_geometric.nn.models.GraphSAGE``, the loop of PyG's examples. Evaluated exactly after
  every epoch: full-batch on CPU, its own ``SAGEConv`` over a torch-sparse ``SparseTensor`` of the
  whole graph (full neighbourhoods, no sampling).
* Ours: ``--engine sample`` and ``--engine refresh`` through :func:`approxgnn.train.build_trainer`
  and :func:`~approxgnn.train.fit` (evaluation: the trainer's exact layer-wise inference).
  ``refresh`` gets a 25 % budget of the feature bytes and a staleness of two epochs of batches, so
  entries do expire (``benchmarks/refresh_budget.py``'s setting on this graph).

Per run and epoch: cumulative training wall-clock time (loading, forward, backward, step;
evaluation and loader construction excluded) and the validation and test accuracy. Reported: s per
epoch (median), PyG's final test accuracy, and for each of ours the training time until its test
accuracy first reached PyG's final test minus 0.5 pp, as a ratio to the time PyG itself took to
get there (:func:`approxgnn.report.tta_speedup` on the test curves); also the usual validation
time-to-accuracy against PyG (its best validation minus 0.5 pp). Torch threads are the default on
both sides (recorded), ``OMP_WAIT_POLICY=PASSIVE``; the load average is recorded per run. The
JSON is rewritten after every run.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch's OpenMP runtime starts

import argparse
import importlib.util
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch
import torch.nn.functional as F

from approxgnn.datasets import load_dataset
from approxgnn.history import HistoryConfig
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.minibatch.config import FEATURE_STORES
from approxgnn.report import markdown_table, tta_speedup
from approxgnn.train import TrainConfig, build_trainer, fit, time_to_within
from approxgnn.train.metrics import evaluate_logits

MARGIN = 0.005  # "within 0.5 pp" of PyG's final test accuracy


def peer_missing() -> str | None:
    """The first of PyG's packages this benchmark needs that is not installed, else None."""
    for name in ("torch_geometric", "torch_sparse", "torch_scatter"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def load(name: str, data_dir: Path):
    """``name`` from the registry, its features written to ``data_dir`` and memory-mapped."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_dataset(name, features_path=data_dir / f"{name}-x.npy")


def _record(kind: str, seed: int, curve: list[dict[str, Any]], epoch_s: list[float], extra: dict[str, Any]
            ) -> dict[str, Any]:
    """One run in the shape :func:`approxgnn.report.tta_speedup` reads (``val``: the best
    validation; ``curve``: cumulative training ``time_s``, ``val``, ``test`` per epoch)."""
    best = max(curve, key=lambda c: c["val"])
    return {"run": kind, "seed": seed, "val": best["val"], "test": best["test"], "test_final": curve[-1]["test"],
            "epoch_s": statistics.median(epoch_s), "epoch_times_s": epoch_s, "train_time_s": curve[-1]["time_s"],
            "threads": torch.get_num_threads(), "loadavg": os.getloadavg(), "curve": curve, **extra}


# ---- PyG ----------------------------------------------------------------------------------------
def pyg_graph(data):
    """The PyG ``Data`` of ``data`` (features the same memmap) and the whole graph's ``adj_t``."""
    from torch_geometric.data import Data
    from torch_geometric.utils import remove_self_loops, to_undirected
    from torch_sparse import SparseTensor

    ei = to_undirected(remove_self_loops(torch.as_tensor(np.asarray(data.edge_index), dtype=torch.long))[0],
                       num_nodes=data.num_nodes)
    with warnings.catch_warnings():  # a read-only memmap: PyG only ever reads it
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(data.x)
    masks = {k: torch.from_numpy(np.asarray(getattr(data, f"{k}_mask"))) for k in ("train", "val", "test")}
    g = Data(x=x, edge_index=ei, y=torch.as_tensor(data.y), num_nodes=data.num_nodes)
    adj_t = SparseTensor(row=ei[1], col=ei[0], sparse_sizes=(data.num_nodes, data.num_nodes))
    return g, adj_t, masks


@torch.no_grad()
def pyg_evaluate(model, g, adj_t, masks: dict[str, torch.Tensor], metric: str) -> dict[str, float]:
    """Exact full-batch inference with PyG's own layers over the whole graph."""
    model.eval()
    logits = model(g.x, adj_t)
    return {k: evaluate_logits(logits[masks[k]], g.y[masks[k]], metric) for k in ("val", "test")}


def pyg_run(data, g, adj_t, masks, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """PyG's standard loop: ``NeighborLoader`` batches, ``GraphSAGE``, Adam; evaluated every epoch."""
    from torch_geometric.loader import NeighborLoader
    from torch_geometric.nn.models import GraphSAGE

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    loader = NeighborLoader(g, num_neighbors=a.fanouts, batch_size=a.batch_size, input_nodes=masks["train"],
                            shuffle=True, num_workers=a.pyg_workers)
    setup_s = time.perf_counter() - t0
    model = GraphSAGE(data.num_features, a.hidden, a.layers, data.num_classes, dropout=a.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    curve, epoch_s, spent = [], [], 0.0
    for epoch in range(a.epochs):
        model.train()
        t0 = time.perf_counter()
        for batch in loader:
            opt.zero_grad()
            out = model(batch.x, batch.edge_index)[: batch.batch_size]
            F.cross_entropy(out, batch.y[: batch.batch_size]).backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t0)
        spent += epoch_s[-1]
        t0 = time.perf_counter()
        ev = pyg_evaluate(model, g, adj_t, masks, data.metric)
        curve.append({"epoch": epoch, "time_s": spent, "eval_s": time.perf_counter() - t0, **ev})
        _progress("pyg", epoch, curve[-1], epoch_s[-1])
    return _record("pyg", seed, curve, epoch_s, {"setup_s": setup_s})


# ---- ours ---------------------------------------------------------------------------------------
def our_config(data, kind: str, seed: int, a: argparse.Namespace) -> TrainConfig:
    """``kind``: ``sample`` or ``refresh``, with ``+pc`` for the precomputed first hop
    (``--precompute on``; without it ``off``, the plain path), ``+pc16`` for it stored as float16."""
    engine, _, pc = kind.partition("+")
    feature_mb = data.num_nodes * data.num_features * 4 / 2**20
    mb = MiniBatchConfig(fanouts=a.fanouts, batch_size=a.batch_size, features_path=str(data.x.filename),
                         cache_mb=a.cache_share * feature_mb, feature_store=a.feature_store)
    history = HistoryConfig(policy="refresh" if engine == "refresh" else "none", staleness=a.staleness)
    return TrainConfig(dataset=a.dataset, model="sage", engine=engine, layers=a.layers, hidden=a.hidden,
                       dropout=a.dropout, lr=a.lr, weight_decay=a.weight_decay, epochs=a.our_epochs, seed=seed,
                       device="cpu", progress=True, minibatch=mb, history=history,
                       precompute="on" if pc.startswith("pc") else "off",
                       precompute_dtype="float16" if pc == "pc16" else "float32")


def our_run(data, kind: str, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    engine = kind
    cfg = our_config(data, kind, seed, a)
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, data)
    setup_s = time.perf_counter() - t0
    result = fit(trainer)
    curve = [{"epoch": c["epoch"], "time_s": c["time_s"], "val": c["val"], "test": c["test"]} for c in result["curve"]]
    for c in curve:
        _progress(engine, c["epoch"], c, result["curve"][c["epoch"]]["step_time_s"])
    return _record(engine, seed, curve, [c["step_time_s"] for c in result["curve"]],
                   {"setup_s": setup_s, "eval_time_s": result["eval_time_s"],
                    "input_dropout": result.get("input_dropout"), "hit_rate": result.get("hit_rate"),
                    "feature_bytes_per_epoch": result.get("feature_bytes_read_per_epoch"),
                    "sampled_nodes_per_hop": result.get("sampled_nodes_per_hop"),
                    "precompute": result.get("precompute"),
                    "cache_mb": cfg.minibatch.cache_mb if cfg.engine == "refresh" else 0.0})


def _progress(kind: str, epoch: int, c: dict[str, Any], secs: float) -> None:
    print(f"  {kind:8s} epoch {epoch + 1}: {secs:6.1f} s  cumulative {c['time_s']:7.1f} s  "
          f"val {100 * c['val']:.2f}  test {100 * c['test']:.2f}", flush=True)


# ---- comparison ---------------------------------------------------------------------------------
def _on_test(r: dict[str, Any], target: float) -> dict[str, Any]:
    """``r`` with its test curve in the validation slot and ``val`` set to ``target``: the shape in
    which :func:`tta_speedup` measures the time to reach ``target − margin`` on the test curves."""
    return {"val": target, "curve": [{"time_s": c["time_s"], "val": c["test"]} for c in r["curve"]]}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run; ours compared with the PyG run of the same seed."""
    rows = []
    for r in runs:
        base = next((p for p in runs if p["run"] == "pyg" and p["seed"] == r["seed"]), None)
        row = {"run": r["run"], "seed": r["seed"], "threads": r["threads"], "epoch_s": r["epoch_s"],
               "test_final_%": 100 * r["test_final"], "test_best_val_%": 100 * r["test"],
               "curve_test_%": " / ".join(f"{100 * c['test']:.1f}" for c in r["curve"])}
        if base is not None:
            on_test = [{"val": c["test"], "time_s": c["time_s"]} for c in r["curve"]]
            row["s_to_pyg_test"] = time_to_within(on_test, base["test_final"], MARGIN)
            target = base["test_final"]
            row["sooner_x"] = tta_speedup(_on_test(base, target), _on_test(r, target), margin=MARGIN)
            row["epoch_speedup"] = base["epoch_s"] / r["epoch_s"]
            row["val_tta_x"] = tta_speedup(base, r, margin=MARGIN)
        rows.append(row)
    return rows


def over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run kind: medians over seeds of the epoch time and ratios, mean ± sd of the final test."""
    out = []
    for kind in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == kind]
        tests = [r["test_final_%"] for r in rs]
        num = lambda k: [r[k] for r in rs if isinstance(r.get(k), (int, float))]  # noqa: E731
        med = lambda k: statistics.median(num(k)) if num(k) else None  # noqa: E731
        out.append({"run": kind, "seeds": len(rs), "epoch_s": med("epoch_s"), "epoch_speedup": med("epoch_speedup"),
                    "test_final_%": f"{statistics.mean(tests):.2f} ± {statistics.pstdev(tests):.2f}",
                    "s_to_pyg_test": med("s_to_pyg_test"), "reached": f"{len(num('s_to_pyg_test'))}/{len(rs)}",
                    "sooner_x": med("sooner_x"), "val_tta_x": med("val_tta_x")})
    return out


COLUMNS = ["run", "seed", "threads", "epoch_s", "epoch_speedup", "curve_test_%", "test_final_%", "test_best_val_%",
           "s_to_pyg_test", "sooner_x", "val_tta_x"]


def build_parser() -> argparse.ArgumentParser:
    """The settings of both sides (also read by ``minibatch_precompute_speed.py``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic-hard-1m")
    p.add_argument("--runs", default="pyg,sample,refresh",
                   help="which of pyg, sample, refresh, in this order; sample+pc, refresh+pc: with the "
                        "precomputed first hop (the plain ones run --precompute off); +pc16: its table "
                        "stored as float16")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--our-epochs", type=int, help="cap on our runs' epochs (default: --epochs); the lr is "
                   "constant, so more epochs only let a run that has not yet reached PyG's final test go on")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--fanouts", default=[15, 10, 5], type=lambda s: [int(f) for f in s.split(",")])
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--cache-share", type=float, default=0.25, help="refresh: budget as a share of the feature bytes")
    p.add_argument("--staleness", type=int, default=40, help="refresh: iterations (1M graph: 20 batches an epoch)")
    p.add_argument("--pyg-workers", type=int, default=0, help="NeighborLoader worker processes")
    p.add_argument("--feature-store", default="auto", choices=FEATURE_STORES,
                   help="ours: how the features file (and a table beside it) is read")
    p.add_argument("--data-dir", default="/tmp/approxgnn-bench")
    p.add_argument("--quick", action="store_true", help="smoke test: synthetic-hard-50k, 2 epochs, seed 0")
    p.add_argument("--json", help="written after every run")
    p.add_argument("--keep", help="comma-separated run kinds --resume may keep (default: every kind)")
    p.add_argument("--resume", metavar="JSON", help="keep the runs of this earlier --json that this call would "
                   "repeat (same run, seed and epochs) instead of running them again")
    return p


def main() -> None:
    a = build_parser().parse_args()
    missing = peer_missing()
    if missing:
        print(f"skipped: {missing} is not installed (make peer)")
        return
    if a.quick:
        a.dataset, a.epochs, a.seeds, a.staleness = "synthetic-hard-50k", 2, "0", 2
    a.our_epochs = a.our_epochs or a.epochs
    measure(a)


def measure(a: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    data = load(a.dataset, Path(a.data_dir))
    g, adj_t, masks = pyg_graph(data)
    print(f"{a.dataset}: {data.num_nodes} nodes, {g.edge_index.shape[1]} directed edges (PyG side), "
          f"train {int(data.train_mask.sum())}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} (loaded in {time.perf_counter() - t0:.0f} s)",
          flush=True)
    kept = {(r["run"], r["seed"], len(r["curve"])): r for r in
            (json.loads(Path(a.resume).read_text())["runs"] if a.resume else [])}
    runs: list[dict[str, Any]] = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for kind in a.runs.split(","):
            key = (kind, seed, a.epochs if kind == "pyg" else a.our_epochs)
            if key in kept and (not a.keep or kind in a.keep.split(",")):
                print(f"  {kind} seed {seed}: kept from {a.resume}", flush=True)
                runs.append(kept[key])
            else:
                runs.append(pyg_run(data, g, adj_t, masks, seed, a) if kind == "pyg" else our_run(data, kind, seed, a))
            rows = summarise(runs)
            _common.write_json(a.json, {"args": vars(a), "argv": sys.argv, "summary": rows,
                                        "over_seeds": over_seeds(rows), "runs": runs})
    print(markdown_table(rows, COLUMNS))
    print(markdown_table(over_seeds(rows)))


if __name__ == "__main__":
    main()
