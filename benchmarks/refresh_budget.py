"""ReFresh at realistic budgets: cache policies at 5 %, 10 % and 25 % of the feature bytes on a hard 1M graph.

    python benchmarks/refresh_budget.py --json benchmarks/refresh_budget.json --seeds 0,1,2 --epochs 6
    python benchmarks/refresh_budget.py --quick            # smoke test: synthetic-hard-50k, 2 epochs

Graph: ``synthetic-hard-1m`` from the registry (1M nodes, 10M edges, 128-d features written to disk
and memory-mapped, 2 % training nodes, homophily 0.3: accuracy can move). Model and sampling as
``refresh_policies.py`` (SAGE 3 x 128, batch norm, dropout 0.1, fanouts [15, 10, 5], batch 1024).

Cells: ``none`` once per seed (it has no budget), then each of :data:`POLICIES` at each budget
share. The staleness (``--staleness``, iterations) is chosen so that entries do expire during the
run; each run records how many did (entries rewritten or replaced after going stale). Per run:
feature bytes read per epoch and training seconds per epoch (means over the run, so an exact last
epoch counts; bytes are deterministic, seconds are loaded figures on a shared machine), the
training time to reach the no-cache run's best validation minus 1 pp (same seed;
:func:`approxgnn.train.time_to_reach`), and the test metric at the best validation epoch. The
table gives medians over seeds, test as mean ± sd. The JSON is rewritten after every run;
``--resume`` skips the runs it already holds; sweeps run apart (one per seed, say) merge with
``--from-json a.json,b.json``.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import torch
from refresh_policies import COMMON, locked

from approxgnn.datasets import load_dataset
from approxgnn.history import HistoryConfig
from approxgnn.minibatch import BlockPropagation, MiniBatchConfig
from approxgnn.minibatch.loader import epoch_seeds
from approxgnn.minibatch.sampler import batch_key
from approxgnn.report import markdown_table
from approxgnn.train import TrainConfig, build_trainer, fit, time_to_within
from approxgnn.train.results import format_table

# A cell is a cache policy, optionally with ``@layers``: the hidden layers it caches (default: the
# second-to-last, layer 1 of 3), then ``+option``s (:func:`cell_options`): ``+switch``: the last
# epoch trains exactly (``switch_time = (E − 1) / E``); ``+agg``: cache the layer's input neighbour
# mean (``cached_value="aggregate"``); ``+lmcK`` / ``+mixX``: recompute hits from K neighbours, mixed
# with weight X (``hit_fanout``, ``hit_mix``); ``+warmF``: no history for the first fraction F of
# the epochs (``start_time``); ``+oracle-value`` / ``+oracle-gradient``: the diagnostic oracles of
# :class:`approxgnn.history.HistoryEngine` (every hit computed in full: bytes as ``none``);
# ``+cvP``: VR-GCN's control variate, each hit recomputed with probability P (``control_variate``;
# with ``+lmcK``, from K neighbours); ``+decayB``: served rows weighed exp(−B · age / staleness) in
# the layer above (``staleness_decay``); ``+restR`` / ``+rowsN``: a forward-only refresh of the N
# oldest entries (default 1024) after every R steps (``refresh_every``, ``refresh_rows``);
# ``+esS``: embeddings may take share S of the arena (``embedding_share``); ``+rateQ``: admit below
# the Q gradient-norm quantile (``rate``; default ``--rate``); ``+stS``: entries expire after S
# iterations (``staleness``; default ``--staleness``); ``+h16``: entries stored as float16
# (``entry_dtype``).
# ``refresh@0`` caches layer 0's output, so a hit prunes only the deepest hop below it, but the
# layers above it keep fresh inputs and their full gradient.
POLICIES = ("none", "feature", "gas", "refresh", "refresh-paper", "refresh+switch", "gas@0", "refresh@0")
SHARES = (0.05, 0.10, 0.25)


def cell_options(cell: str, epochs: int) -> tuple[str, dict[str, Any], str | None]:
    """``(policy, HistoryConfig keywords, oracle)`` of a cell name such as ``refresh@0+lmc2+mix0.5``."""
    head, *opts = cell.split("+")
    name, _, layers = head.partition("@")
    # A cell names what it caches: the layer's output unless ``+agg`` (not the library's ``auto``).
    kw: dict[str, Any] = {"cached_layers": [int(l) for l in layers.split(",")] if layers else None,
                          "cached_value": "output"}
    oracle = None
    for o in opts:
        if o == "switch":
            kw["switch_time"] = (epochs - 1) / epochs
        elif o == "agg":
            kw["cached_value"] = "aggregate"
        elif o.startswith("lmc"):
            kw["hit_fanout"] = int(o[3:])
        elif o.startswith("mix"):
            kw["hit_mix"] = float(o[3:])
        elif o.startswith("warm"):
            kw["start_time"] = float(o[4:])
        elif o.startswith("cv"):
            kw["control_variate"] = float(o[2:])
        elif o.startswith("decay"):
            kw["staleness_decay"] = float(o[5:])
        elif o.startswith("rest"):
            kw["refresh_every"] = int(o[4:])
        elif o.startswith("rows"):
            kw["refresh_rows"] = int(o[4:])
        elif o.startswith("es"):
            kw["embedding_share"] = float(o[2:])
        elif o.startswith("rate"):
            kw["rate"] = float(o[4:])
        elif o.startswith("st"):
            kw["staleness"] = int(o[2:])
        elif o == "h16":
            kw["entry_dtype"] = "float16"
        elif o.startswith("oracle-"):
            oracle = o[len("oracle-"):]
        else:
            raise SystemExit(f"unknown cell option +{o} in {cell!r}")
    return name, kw, oracle


def load(name: str, data_dir: Path):
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_dataset(name, features_path=data_dir / f"{name}-x.npy")


def config(data, policy: str, share: float, seed: int, a: argparse.Namespace) -> TrainConfig:
    feature_mb = data.num_nodes * data.num_features * 4 / 2**20
    # lookahead 0 by default: the look-ahead cache (on by default for features on disk since issue 22)
    # would take half of the budget these cells give the feature and history caches
    mb = MiniBatchConfig(fanouts=COMMON["fanouts"], batch_size=COMMON["batch_size"], cache_mb=share * feature_mb,
                         eval_batch_size=COMMON["eval_batch_size"], features_path=str(data.x.filename),
                         lookahead=a.lookahead)
    name, kw, _ = cell_options(policy, a.epochs)
    hc = HistoryConfig(policy=name, **{"rate": a.rate, "staleness": a.staleness, **kw})
    return TrainConfig(dataset=a.dataset, model=COMMON["model"], engine="refresh", layers=COMMON["layers"],
                       precompute=a.precompute, precompute_dir=a.data_dir if a.precompute == "on" else None,
                       hidden=COMMON["hidden"], dropout=COMMON["dropout"],
                       batch_norm=COMMON["batch_norm"] and not a.no_batch_norm, lr=a.lr,
                       weight_decay=COMMON["weight_decay"], lr_schedule=a.lr_schedule, epochs=a.epochs, seed=seed,
                       device="cpu", progress=a.progress, minibatch=mb, history=hc)


def one_run(data, policy: str, share: float, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    cfg = config(data, policy, share, seed, a)
    oracle = cell_options(policy, a.epochs)[2]
    with locked(a.lock):
        trainer = build_trainer(cfg, data)
        if oracle:
            trainer.history.oracle = oracle
        result = fit(trainer)
        bn = bn_recalibrated(trainer) if a.bn_recal else None
    curve = result["curve"]
    row = {"policy": policy, "share": share, "seed": seed, "epochs": a.epochs, "staleness": a.staleness,
           "lr_schedule": a.lr_schedule, "batch_norm": cfg.batch_norm, "lookahead": cfg.minibatch.lookahead,
           "precompute": a.precompute,
           "cache_mb": cfg.minibatch.cache_mb, "feature_dim": data.num_features, "test": result["test"], "val": result["val"],
           "best_epoch": result["best_epoch"], "epoch_time_s": result["epoch_time_median_s"],
           "train_time_s": result["train_time_s"], "feature_bytes_read": result["feature_bytes_read"],
           "feature_bytes_per_epoch": result["feature_bytes_read_per_epoch"],
           "feature_cache_rows": curve[-1].get("feature_cache_rows"), "hit_rate": result.get("hit_rate"),
           "mean_age": result.get("mean_age"), "expired": sum(c.get("expired", 0) for c in curve),
           "admitted": sum(c.get("admitted", 0) for c in curve),
           "recomputed": sum(c.get("recomputed", 0) for c in curve),
           "refreshed": sum(c.get("refreshed", 0) for c in curve),
           "refresh_s": sum(c.get("time", {}).get("refresh_s", 0.0) for c in curve),
           "sampled_nodes_per_hop": result["sampled_nodes_per_hop"],
           "test_final": curve[-1]["test"], "val_final": curve[-1]["val"], "bn_recal": bn,
           "curve": [{"epoch": c["epoch"], "time_s": c["time_s"], "val": c["val"], "test": c["test"]} for c in curve]}
    del trainer, result
    gc.collect()
    print(f"  {policy:13s} {share:4.0%} seed {seed}: test {row['test']:.4f}  epoch {row['epoch_time_s']:.2f}s  "
          f"read {row['feature_bytes_read'] / 1e6:.1f} MB/epoch  hit {row['hit_rate']}  expired {row['expired']}",
          flush=True)
    return row


def bn_recalibrated(trainer) -> dict[str, float] | None:
    """Batch norm's running statistics re-estimated on one epoch of *unpruned* batches (every node
    computed, as ``none`` trains), then the final model evaluated again: a diagnostic of whether the
    statistics a history run learned from its misses alone cost accuracy. ``None`` without batch norm."""
    model = trainer.model
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if not bns:
        return None
    if trainer.first_hop:
        raise SystemExit("--bn-recal runs the plain path (--precompute off)")
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches below
    model.train()  # the statistics training sees (dropout on), without any parameter update
    epoch = trainer.cfg.epochs
    with torch.no_grad():
        for b, seeds in enumerate(epoch_seeds(trainer.train_ids, trainer.mc.batch_size, trainer.cfg.seed, epoch)):
            sample = trainer.sampler.sample(seeds, batch_key(trainer.cfg.seed, epoch, b))
            x = trainer.features.read(sample.input_nodes).to(trainer.device)
            model(x, BlockPropagation([blk.operator(trainer.device) for blk in sample.blocks]))
    ev = trainer.evaluate()
    return {"val": ev["val"], "test": ev["test"]}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (share, policy): medians over seeds; test mean ± sd; ratios to ``none`` and ``feature``."""
    base = {r["seed"]: r for r in rows if r["policy"] == "none"}
    if not base:
        return []
    b_bytes = statistics.median(_bytes(r) for r in base.values())
    b_time = statistics.median(_epoch_s(r) for r in base.values())
    b_test = statistics.mean(100 * r["test"] for r in base.values())
    out = []
    for share in sorted({r["share"] for r in rows if r["policy"] != "none"}):
        feat = [r for r in rows if r["policy"] == "feature" and r["share"] == share]
        f_saved = b_bytes - statistics.median(_bytes(r) for r in feat) if feat else None
        for pol in _ordered(rows):
            rs = [r for r in rows if r["policy"] == pol and (pol == "none" or r["share"] == share)]
            if not rs:
                continue
            by = statistics.median(_bytes(r) for r in rs)
            t = statistics.median(_epoch_s(r) for r in rs)
            tests = [100 * r["test"] for r in rs]
            tta = [_tta(r, base.get(r["seed"])) for r in rs]
            reached = [x for x in tta if x is not None]
            near = [x for x in (_tta(r, base.get(r["seed"]), 0.005) for r in rs) if x is not None]
            out.append({"budget": f"{share:.0%}", "policy": pol, "MB_read_per_epoch": by / 1e6,
                        "%_of_none": 100 * by / b_bytes, "saving_vs_feature": (b_bytes - by) / f_saved
                        if f_saved and pol != "none" else None, "epoch_s": t, "speedup": b_time / t,
                        "tta_s": statistics.median(reached) if reached else None,
                        "reached": f"{len(reached)}/{len(tta)}",
                        "tta0.5_s": statistics.median(near) if near else None, "reached0.5": f"{len(near)}/{len(tta)}",
                        "test_%": f"{statistics.mean(tests):.2f} ± {statistics.pstdev(tests):.2f}",
                        "Δtest_pp": f"{statistics.mean(tests) - b_test:+.2f}",
                        "hit_rate": _med(rs, "hit_rate"), "expired": _med(rs, "expired"), "seeds": len(rs)})
    return out


def profile(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the no-cache run's feature bytes go in a steady epoch (each run's median epoch), as %
    of them (medians over seeds).

    The input layer of a batch needs the rows of its deepest sampled hop. A history hit drops a
    subtree, so ``pruned = 1 − hop_L / hop_L(none)``; of the rows still needed, the feature cache
    serves ``needed − read`` and the rest are ``read`` from the store. ``feature_rows_%_of_budget``
    is the share of ``--cache-mb`` still holding feature rows at the end (the rest: embeddings and
    metadata)."""
    base = [r for r in rows if r["policy"] == "none"]
    if not base:
        return []
    b_bytes = statistics.median(r["feature_bytes_read"] for r in base)
    b_rows = statistics.median(r["sampled_nodes_per_hop"][-1] for r in base)
    out = []
    for share in sorted({r["share"] for r in rows if r["policy"] != "none"}):
        for pol in _ordered(rows)[1:]:
            rs = [r for r in rows if r["policy"] == pol and r["share"] == share]
            if not rs:
                continue
            needed = 100 * statistics.median(r["sampled_nodes_per_hop"][-1] for r in rs) / b_rows
            read = 100 * statistics.median(r["feature_bytes_read"] for r in rs) / b_bytes
            feat = statistics.median((r["feature_cache_rows"] or 0) * 4 * r.get("feature_dim", 128) for r in rs)
            out.append({"budget": f"{share:.0%}", "policy": pol, "pruned_by_hits_%": round(100 - needed, 2),
                        # + 0.0: a rounding residue of −0.0 prints as 0
                        "served_by_feature_cache_%": round(needed - read, 2) + 0.0, "read_%": read,
                        "feature_rows_%_of_budget": 100 * feat / (rs[0]["cache_mb"] * 2**20),
                        "hit_rate": _med(rs, "hit_rate"), "expired": _med(rs, "expired")})
    return out


def diagnosis(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run recorded with ``--bn-recal``: the final epoch's test, and the same model's test after
    batch norm's statistics were re-estimated on unpruned batches (:func:`bn_recalibrated`)."""
    out = []
    for r in rows:
        if r.get("bn_recal"):
            out.append({"budget": f"{r['share']:.0%}", "policy": r["policy"], "seed": r["seed"],
                        "test_best_val_%": 100 * r["test"], "test_final_%": 100 * r["test_final"],
                        "test_bn_recal_%": 100 * r["bn_recal"]["test"],
                        "bn_recal_gain_pp": 100 * (r["bn_recal"]["test"] - r["test_final"])})
    return out


def _bytes(row: dict[str, Any]) -> float:
    """Feature bytes read per epoch, the mean over the run (an exact last epoch counts in full)."""
    return statistics.mean(row["feature_bytes_per_epoch"])


def _epoch_s(row: dict[str, Any]) -> float:
    """Training seconds per epoch, the mean over the run (evaluation excluded)."""
    return row["train_time_s"] / row["epochs"]


def _ordered(rows: list[dict[str, Any]]) -> list[str]:
    """The cells present in ``rows``: :data:`POLICIES` order first, other variants after it."""
    seen = {r["policy"] for r in rows}
    return [p for p in POLICIES if p in seen] + sorted(seen - set(POLICIES))


def _tta(row: dict[str, Any], base: dict[str, Any] | None, gap: float = 0.01) -> float | None:
    """Training seconds until validation first reached the same seed's no-cache best minus ``gap``
    (1 pp; the ``tta0.5_s`` column: 0.5 pp)."""
    if base is None:
        return None
    return time_to_within(row["curve"], base["val"], gap)


def _med(rs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Per budget: Δtest (pp, paired with the seed's ``none``; mean ± sd over seeds) against the
    bytes read (% of ``none``, top) and the epoch speedup (bottom); the 25 % targets shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {r["seed"]: r for r in rows if r["policy"] == "none"}
    shares = sorted({r["share"] for r in rows if r["policy"] != "none"})
    pols = [p for p in _ordered(rows) if p != "none"]
    colors = dict(zip(pols, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(2, len(shares), figsize=(4.6 * len(shares), 7.2), squeeze=False, sharey=True)
    for j, share in enumerate(shares):
        feat = [_bytes(r) for r in rows if r["policy"] == "feature" and r["share"] == share]
        for pol in pols:
            rs = [r for r in rows if r["policy"] == pol and r["share"] == share and r["seed"] in base]
            if not rs:
                continue
            d = [100 * (r["test"] - base[r["seed"]]["test"]) for r in rs]
            x_bytes = statistics.median(100 * _bytes(r) / _bytes(base[r["seed"]]) for r in rs)
            x_speed = statistics.median(_epoch_s(base[r["seed"]]) / _epoch_s(r) for r in rs)
            for ax, x in ((axes[0][j], x_bytes), (axes[1][j], x_speed)):
                ax.errorbar(x, statistics.mean(d), yerr=statistics.pstdev(d), fmt="o", color=colors[pol],
                            capsize=3, label=pol)
        if share == 0.25 and feat:
            f_pct = 100 * statistics.median(feat) / statistics.median(_bytes(r) for r in base.values())
            # issue 20's 25 % targets: bytes ≤ 35 % of no cache's and a saving ≥ 1.5x the feature cache's
            axes[0][j].axvspan(0, min(35.0, 100 - 1.5 * (100 - f_pct)), ymin=0, ymax=1, color="tab:green", alpha=0.08)
            axes[1][j].axvspan(2.5, axes[1][j].get_xlim()[1] + 1, color="tab:green", alpha=0.08)
        for ax in axes[:, j]:
            ax.axhline(-0.5, color="tab:green", ls="--", lw=0.8)
            ax.axhline(0.0, color="gray", lw=0.6)
            ax.grid(alpha=0.3)
        axes[0][j].set_title(f"budget {share:.0%} of the feature bytes")
        axes[0][j].set_xlabel("feature bytes read per epoch (% of no cache)")
        axes[1][j].set_xlabel("epoch speedup over no cache")
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ test accuracy vs no cache (pp)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("cache policies on synthetic-hard-1m (shaded: the 25 % targets; dashed: −0.5 pp)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic-hard-1m")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--shares", default=",".join(map(str, SHARES)), help="budgets as shares of the feature bytes")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--no-batch-norm", action="store_true", help="the model without batch norm (an ablation)")
    p.add_argument("--rate", type=float, default=0.9)
    p.add_argument("--staleness", type=int, default=40, help="iterations (synthetic-hard-1m: 20 batches an epoch)")
    p.add_argument("--lookahead", type=int, default=0, help="batches the look-ahead cache plans ahead (default 0: "
                   "off, as the budget tables were measured; it takes part of --shares' budget when on)")
    p.add_argument("--precompute", default="off", choices=("off", "on"),
                   help="the precomputed first hop for every cell, `none` included (default off, as the earlier "
                        "tables were measured); the budget stays a share of the raw features' bytes")
    p.add_argument("--data-dir", default="/tmp/approxgnn-bench")
    p.add_argument("--lock", help="flock this file around each run")
    p.add_argument("--quick", action="store_true", help="smoke test: synthetic-hard-50k, 2 epochs, one seed")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--bn-recal", action="store_true", help="after each run, re-estimate batch norm's statistics "
                   "on unpruned batches and evaluate again (a diagnostic; recorded as bn_recal)")
    p.add_argument("--json", help="written after every run")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --json and skip them")
    p.add_argument("--markdown", help="write the summary table as Markdown to this file")
    p.add_argument("--plot", help="write the accuracy / bytes / speed figure (PNG) to this file")
    p.add_argument("--from-json", help="re-render the table from earlier --json files (comma-separated: one "
                   "sweep per seed, say); with --json, also write the merged runs there; no training")
    a = p.parse_args()
    if a.from_json:
        rows = [r for f in a.from_json.split(",") for r in json.loads(Path(f).read_text())["runs"]]
        save(rows, a)
        report(rows, a)
        return
    if a.quick:
        a.dataset, a.seeds, a.epochs, a.staleness = "synthetic-hard-50k", "0", 2, 3
    rows = resumed(a)
    t0 = time.perf_counter()
    data = load(a.dataset, Path(a.data_dir))
    print(f"{a.dataset}: {data.num_nodes} nodes, {data.num_edges} edges, {data.num_features} features on disk, "
          f"train {int(data.train_mask.sum())} (loaded in {time.perf_counter() - t0:.0f}s)", flush=True)
    done = {(r["policy"], r["share"], r["seed"]) for r in rows}
    for seed in (int(s) for s in a.seeds.split(",")):
        for share in (float(s) for s in a.shares.split(",")):
            for pol in a.policies.split(","):
                cell = (pol, 0.0 if pol == "none" else share, seed)
                if cell not in done:
                    rows.append(one_run(data, pol, cell[1], seed, a))
                    done.add(cell)
                    save(rows, a)  # after every run: a cut-off sweep keeps what it measured
    report(rows, a)


def resumed(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs already in ``--json`` when ``--resume`` is given; they must share this sweep's settings."""
    if not (a.resume and a.json and Path(a.json).exists()):
        return []
    rows = json.loads(Path(a.json).read_text())["runs"]
    odd = [r for r in rows
           if (r["epochs"], r["staleness"], r.get("lr_schedule", "constant"), r.get("batch_norm", True),
               r.get("precompute", "off")) != (a.epochs, a.staleness, a.lr_schedule, not a.no_batch_norm, a.precompute)]
    if odd:  # the ratios to ``none`` and the time-to-target would mix two settings
        raise SystemExit(f"--resume: {len(odd)} runs in {a.json} used other --epochs/--staleness/--lr-schedule/--no-batch-norm/--precompute "
                         f"(e.g. {odd[0]['epochs']}/{odd[0]['staleness']}/{odd[0].get('lr_schedule', 'constant')}); pass the same or a new --json")
    print(f"resuming: {len(rows)} runs already in {a.json}")
    return rows


def save(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    if a.json:
        _common.write_json(a.json, {"args": vars(a), "common": COMMON, "summary": summarise(rows),
                                     "profile": profile(rows), "diagnosis": diagnosis(rows), "runs": rows})


def report(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    lines, prof, diag = summarise(rows), profile(rows), diagnosis(rows)
    if lines:
        print(format_table(lines, list(lines[0])))
        print(format_table(prof, list(prof[0])) if prof else "")
        print(format_table(diag, list(diag[0])) if diag else "")
        if a.markdown:
            Path(a.markdown).write_text("\n\n".join(markdown_table(t) for t in (lines, prof, diag) if t) + "\n")
        if a.plot:
            plot(rows, a.plot)


if __name__ == "__main__":
    main()
