"""Dropout forward+backward: approxgnn's hashed dropout vs ``torch.nn.functional.dropout``.

    flock /tmp/approxgnn-bench.lock python benchmarks/dropout.py --json benchmarks/dropout.json

Why it matters: on a 2-core CPU, ``F.dropout``'s per-element Bernoulli draw took 10 of the 28 s of
a GCN training step on the 1M-node graph (``rsc_profile.py``), more than the backward SpMM that RSC
approximates. Timed: ``dropout(x).backward(g)`` for an ``N×d`` float32 tensor with a precomputed
``g``; median of ``--repeats`` after one warm-up.
"""
from __future__ import annotations

import argparse

import _common
import torch
import torch.nn.functional as F

from approxgnn.nn.dropout import dropout
from approxgnn.train.results import format_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--dims", default="128,256")
    p.add_argument("--p", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    rows = []
    for d in (int(x) for x in a.dims.split(",")):
        x = torch.randn(a.nodes, d, requires_grad=True)
        g = torch.randn(a.nodes, d)
        times = {}
        for name, fn in (("torch F.dropout", F.dropout), ("approxgnn hashed", dropout)):
            def step() -> None:
                x.grad = None
                fn(x, a.p, True).backward(g)

            times[name] = _common.median(_common.time_runs(step, a.repeats, 1))
        base = times["torch F.dropout"]
        rows += [{"shape": f"{a.nodes}x{d}", "impl": k, "fwd+bwd ms": round(1e3 * v, 1),
                  "speedup": round(base / v, 2)} for k, v in times.items()]
    print(format_table(rows, ["shape", "impl", "fwd+bwd ms", "speedup"]))
    _common.write_json(a.json, {"args": vars(a), "rows": rows})


if __name__ == "__main__":
    main()
