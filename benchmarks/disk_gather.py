"""Cold gather of random feature rows from a file larger than the page cache can keep: the memory
map today's ``ArrayFeatureStore`` reads through, against :class:`approxgnn.minibatch.DiskFeatureStore`,
against what the disk itself can do (fio, 4 KiB random reads, ``O_DIRECT``).

    approxgnn prepare --dataset synthetic-hard-11m --num-features 256 --out /work/bigdata/hard11m
    flock /work/coord/bench.lock python benchmarks/disk_gather.py --file /work/bigdata/hard11m/x.npy \\
        --json benchmarks/disk_gather.json

Each run draws ``--rows`` distinct random row ids (a new draw per run and cell) and drops the page
cache first (``sync; echo 3 > /proc/sys/vm/drop_caches``: needs root; the script checks that the
cache really shrank and records it). Cells:

* ``memmap``: ``ArrayFeatureStore`` over ``np.load(mmap_mode="r")`` (numba-parallel gather that
  faults one page at a time per thread);
* ``disk tN``: ``DiskFeatureStore(threads=N)``: sorted, merged ``pread`` from N threads over
  ``O_DIRECT`` (the rows checked against the memory map afterwards, untimed);
* ``fio depth D``: ``fio --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=D`` on the
  same file for ``--fio-seconds``.

``kernel_MiB`` is what the kernel read from the device for the process (``/proc/self/io``
``read_bytes``, readahead included): for the disk store it checks the pages the store counts itself.
Figures are medians over ``--runs``. The JSON is rewritten after every cell, so a killed run keeps
what it measured.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np

from approxgnn.minibatch import ArrayFeatureStore, DiskFeatureStore
from approxgnn.train.results import format_table


def gather_memmap(path: str, ids: np.ndarray) -> dict[str, Any]:
    store = ArrayFeatureStore.open(path)
    io0, t0 = _common.kernel_read_bytes(), time.perf_counter()
    store.read(ids)
    return {"seconds": time.perf_counter() - t0, "kernel_read_bytes": _common.kernel_read_bytes() - io0}


def gather_disk(path: str, ids: np.ndarray, threads: int) -> dict[str, Any]:
    store = DiskFeatureStore(path, threads=threads)
    io0, t0 = _common.kernel_read_bytes(), time.perf_counter()
    rows = store.read(ids)
    seconds = time.perf_counter() - t0
    kernel = _common.kernel_read_bytes() - io0
    check = slice(0, 2000)  # untimed: the rows are the file's rows
    assert np.array_equal(rows[check].numpy(), np.load(path, mmap_mode="r")[ids[check]]), "disk store read wrong rows"
    out = {"seconds": seconds, "direct": store.direct, "kernel_read_bytes": kernel, **{k: v for k, v in store.counters().items() if k.startswith("disk")}}
    store.close()
    return out


def run_fio(path: str, depth: int, seconds: int) -> dict[str, Any]:
    cmd = ["fio", "--name=randread", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k", "--direct=1",
           "--ioengine=libaio", f"--iodepth={depth}", "--time_based", f"--runtime={seconds}", "--output-format=json"]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    read = res["jobs"][0]["read"]
    return {"iops": read["iops"], "MiB_s": read["bw"] / 1024, "lat_mean_us": read["clat_ns"]["mean"] / 1e3,
            "command": " ".join(cmd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", required=True, help="a float32 [N, F] .npy, larger than the page cache can hold")
    p.add_argument("--rows", type=int, default=99_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[64, 128])
    p.add_argument("--fio-depths", type=int, nargs="*", default=[64, 1])
    p.add_argument("--fio-seconds", type=int, default=20)
    p.add_argument("--no-memmap", action="store_true", help="skip the (slow) memory-map cell")
    p.add_argument("--json")
    a = p.parse_args()

    shape = np.load(a.file, mmap_mode="r").shape
    size = Path(a.file).stat().st_size
    print(f"{a.file}: {shape[0]} x {shape[1]} float32, {size / 2**30:.2f} GiB")
    cells = ([] if a.no_memmap else ["memmap"]) + [f"disk t{t}" for t in a.threads]
    if a.fio_depths and shutil.which("fio") is None:
        raise SystemExit("fio is not installed (apt-get install -y fio), or pass --fio-depths with no value")
    cells += [f"fio depth {d}" for d in a.fio_depths]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in cells}
    payload: dict[str, Any] = {"file": a.file, "shape": list(shape), "file_bytes": size, "rows": a.rows,
                               "runs": a.runs, "cells": results}
    for r in range(a.runs):
        for c in cells:
            drop = _common.drop_caches()
            ids = np.random.default_rng([r, cells.index(c)]).choice(shape[0], a.rows, replace=False)
            if c == "memmap":
                rec = gather_memmap(a.file, ids)
            elif c.startswith("disk"):
                rec = gather_disk(a.file, ids, int(c.split("t")[-1]))
            else:
                rec = run_fio(a.file, int(c.split()[-1]), a.fio_seconds)
            if "seconds" in rec:
                rec["rows_s"] = a.rows / rec["seconds"]
            if "disk_reads" in rec:
                rec["iops"] = rec["disk_reads"] / rec["seconds"]
                rec["MiB_s"] = rec["disk_bytes_read"] / rec["seconds"] / 2**20
            results[c].append({**rec, **drop})
            print(f"run {r} {c}: " + ", ".join(f"{k} {v:.4g}" for k, v in rec.items() if isinstance(v, float)))
            _common.write_json(a.json, payload)
    summary = summarise(results)
    payload["summary"] = summary
    _common.write_json(a.json, payload)
    print(format_table(summary, ["cell", "rows_s", "iops", "MiB_s", "kernel_MiB", "vs_fio64_iops", "vs_memmap_rows"]))


def summarise(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Median per cell, and the two target ratios against the baselines measured in the same run."""
    def med(c: str, k: str) -> float | None:
        vals = [x[k] for x in results.get(c, []) if k in x]
        return float(np.median(vals)) if vals else None

    fio64, memmap = med("fio depth 64", "iops"), med("memmap", "rows_s")
    rows = []
    for c in results:
        row: dict[str, Any] = {"cell": c, "rows_s": med(c, "rows_s"), "iops": med(c, "iops"), "MiB_s": med(c, "MiB_s")}
        kernel = med(c, "kernel_read_bytes")
        row["kernel_MiB"] = kernel / 2**20 if kernel is not None else None
        if c.startswith("disk"):
            row["vs_fio64_iops"] = row["rows_s"] / fio64 if fio64 else None
            row["vs_memmap_rows"] = row["rows_s"] / memmap if memmap else None
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
