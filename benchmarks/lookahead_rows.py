"""Rows read from the feature store per epoch with the look-ahead cache at several depths and
budget shares, against the feature cache alone with the whole budget: a count, not a timing, so it
runs on a warm memory map and on any machine.

    python benchmarks/lookahead_rows.py --layout /work/bigdata/i22_test50k --cache-mb 4,8,16 \\
        --json benchmarks/lookahead_rows_50k.json

Each run trains ``--epochs`` epochs of SAGE (``--fanouts``, ``--batch-size``) on ``--batches``
batches of the layout's training nodes (``--engine sample``); the figure is the last epoch's
``feature_rows_read`` (rows that reached the store) beside the rows the batches requested.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import _common
import numpy as np

from approxgnn.datasets import load_dataset
from approxgnn.train import TrainConfig, build_trainer
from approxgnn.train.results import format_table


def variants(depths: list[int], shares: list[float]) -> list[tuple[str, str, int, float]]:
    """(name, policy, depth, share): the feature cache alone, + look-ahead, look-ahead alone."""
    out = [("feature", "feature", 0, 0.5)]
    out += [(f"feature+lookahead K={k} share={s:g}", "feature", k, s) for k in depths for s in shares]
    out += [(f"lookahead K={k} (whole budget)", "none", k, 1.0) for k in depths]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", required=True)
    p.add_argument("--cache-mb", type=lambda s: [float(v) for v in s.split(",")], default=[4.0, 8.0, 16.0])
    p.add_argument("--depths", type=lambda s: [int(v) for v in s.split(",")], default=[2, 4, 8])
    p.add_argument("--shares", type=lambda s: [float(v) for v in s.split(",")], default=[0.25, 0.5])
    p.add_argument("--fanouts", type=lambda s: [int(v) for v in s.split(",")], default=[15, 10, 5])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    data = load_dataset(a.layout)
    train = np.flatnonzero(np.asarray(data.train_mask))
    keep = np.random.default_rng(0).permutation(train)[: a.batches * a.batch_size]
    data.train_mask = np.zeros(data.num_nodes, bool)
    data.train_mask[keep] = True
    rows: list[dict[str, Any]] = []
    for mb in a.cache_mb:
        for name, policy, depth, share in variants(a.depths, a.shares):
            cfg = TrainConfig.from_dict({
                "dataset": a.layout, "model": "sage", "engine": "sample", "layers": len(a.fanouts), "hidden": 64,
                "epochs": a.epochs, "dropout": 0.1, "lr": 1e-3, "progress": False, "history": {"policy": policy},
                "minibatch": {"fanouts": a.fanouts, "batch_size": a.batch_size, "cache_mb": mb, "lookahead": depth,
                              "lookahead_share": share, "feature_store": "mmap"}})
            trainer = build_trainer(cfg, data)
            t0 = time.perf_counter()
            recs = [trainer.train_epoch(e) for e in range(a.epochs)]
            last = recs[-1]
            requested = int(round(last["sampled_nodes_per_hop"][-1] * last["batches"]))
            rows.append({"cache_mb": mb, "variant": name, "rows_requested": requested,
                         "rows_read": last["feature_rows_read"], "read_fraction": last["feature_rows_read"] / requested,
                         "lookahead_rows_served": last.get("lookahead_rows_served", 0),
                         "first_epoch_rows_read": recs[0]["feature_rows_read"], "seconds": time.perf_counter() - t0})
            print(format_table(rows[-1:], list(rows[-1])), flush=True)
            _common.write_json(a.json, {"args": vars(a), "rows": rows})
    print(format_table(rows, ["cache_mb", "variant", "rows_requested", "rows_read", "read_fraction"]))


if __name__ == "__main__":
    main()
