"""Mini-batch epoch time, plain against the precomputed first hop, the runs taking turns epoch by epoch.

    python benchmarks/minibatch_precompute_speed.py --epochs 4 --json benchmarks/minibatch_precompute_speed.json
    python benchmarks/minibatch_precompute_speed.py --feature-store disk --json speed_disk.json  # O_DIRECT reads

The settings of ``minibatch_vs_pyg.py`` (``synthetic-hard-1m``, SAGE 3x128, fanouts [15, 10, 5],
batch 1024, features memory-mapped): ``sample`` on the plain path, ``sample+pc`` (the table in
float32) and ``sample+pc16`` (in float16), each a trainer of its own, training epoch 0 untimed
(numba compilation, first reads), then epochs 1..N in turn: sample, sample+pc, sample+pc16,
sample, ... On a shared machine load from other processes then falls on all three alike, which
back-to-back runs cannot promise. Reports the median epoch (training only: sampling, reads,
forward, backward, step) and the bytes read per epoch. Accuracy is ``minibatch_vs_pyg.py``'s job.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import _common  # noqa: F401  (puts src/ on the path)
import torch
from minibatch_vs_pyg import build_parser, load, our_config

from approxgnn.minibatch.config import FEATURE_STORES
from approxgnn.train import build_trainer
from approxgnn.train.results import format_table

KINDS = ("sample", "sample+pc", "sample+pc16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic-hard-1m")
    p.add_argument("--data-dir", default="/tmp/pygpeer")
    p.add_argument("--epochs", type=int, default=4, help="timed epochs per run (after one untimed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-store", default="auto", choices=FEATURE_STORES,
                   help="how the features file (and the table beside it) is read")
    p.add_argument("--json")
    a = p.parse_args()
    settings = build_parser().parse_args(["--dataset", a.dataset, "--epochs", str(a.epochs + 1),
                                          "--feature-store", a.feature_store])
    settings.our_epochs = a.epochs + 1
    data = load(a.dataset, Path(a.data_dir))
    trainers = {k: build_trainer(our_config(data, k, a.seed, settings), data) for k in KINDS}
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    read: dict[str, list[int]] = {k: [] for k in KINDS}
    for epoch in range(a.epochs + 1):
        for k, tr in trainers.items():
            rec = tr.train_epoch(epoch)
            if epoch:  # epoch 0 compiles and warms up
                times[k].append(rec["step_time_s"])
                read[k].append(rec["feature_bytes_read"])
            print(f"epoch {epoch} {k:12s} {rec['step_time_s']:7.2f} s  loadavg {os.getloadavg()[0]:.1f}", flush=True)
    base = statistics.median(times["sample"])
    rows = [{"run": k, "epoch_median_s": statistics.median(times[k]),
             "speedup": base / statistics.median(times[k]),
             "bytes_per_epoch": statistics.median(read[k]),
             "bytes_vs_sample": statistics.median(read[k]) / statistics.median(read["sample"]),
             "epoch_times_s": times[k]} for k in KINDS]
    print(format_table(rows, ["run", "epoch_median_s", "speedup", "bytes_per_epoch", "bytes_vs_sample"]))
    _common.write_json(a.json, {"args": vars(a), "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
