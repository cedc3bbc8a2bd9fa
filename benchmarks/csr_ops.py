"""Timing of the CSR operations that issue 21 gathered into one CSR type and one diagonal SpMM.

    python benchmarks/csr_ops.py --json csr_ops.json                 # this checkout
    python benchmarks/csr_ops.py --src OTHER/src --json before.json  # another source tree (A/B)

Run it under the benchmark lock (``flock /work/coord/bench.lock ...``). On one synthetic power-law
graph (``--nodes``, average degree 20) it times, as medians of ``--repeats`` runs after a warm-up:

* ``exact_fwd_ms`` / ``exact_bwd_ms``: the exact GCN operator, ``Â x`` and ``Âᵀ g`` (symmetric:
  the backward reuses ``Â``), width ``--width``;
* ``mean_first_bwd_ms``: the first backward of the row-normalised (not symmetric) operator, which
  builds its transpose; ``mean_bwd_ms``: a later one;
* ``sample_ms``: drawing one mini-batch (fanouts 10, 10; ``--batch`` seeds) including its blocks;
* ``block_bwd_ms``: the backward of every block of one batch (each builds its block's transpose
  first), summed over the batch's blocks.

Only names both trees export are used, so the same script times the code before and after a change.
"""
from __future__ import annotations

import argparse
import sys
import time

import _common
import numpy as np
import torch


def _ms(fn, repeats: int) -> float:
    return _common.median(_common.time_runs(fn, repeats, 1)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="time the library in this source tree instead of the checkout's")
    p.add_argument("--nodes", type=int, default=200_000)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json")
    a = p.parse_args()
    if a.src:
        sys.path.insert(0, a.src)
    from approxgnn.datasets import synthetic
    from approxgnn.graph import CSRGraph, gcn_norm, mean_norm
    from approxgnn.minibatch import NeighborSampler
    from approxgnn.ops import SparseOperator

    import approxgnn
    print(f"library: {approxgnn.__file__}; torch threads {torch.get_num_threads()}", flush=True)
    data = synthetic(num_nodes=a.nodes, avg_degree=20.0, num_features=1, seed=0)
    g = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    del data
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(g.num_nodes, a.width, generator=gen)
    row: dict[str, float | int] = {"nodes": g.num_nodes, "nnz": g.nnz, "width": a.width, "batch": a.batch}
    gcn = SparseOperator.from_adjacency(gcn_norm(g))
    row["exact_fwd_ms"] = _ms(lambda: gcn.forward(x), a.repeats)
    row["exact_bwd_ms"] = _ms(lambda: gcn.backward(x), a.repeats)
    mean_adj = mean_norm(g)
    first = []
    for _ in range(3):
        op = SparseOperator.from_adjacency(mean_adj)
        t0 = time.perf_counter()
        op.backward(x)
        first.append(time.perf_counter() - t0)
    row["mean_first_bwd_ms"] = _common.median(first) * 1e3
    row["mean_bwd_ms"] = _ms(lambda: op.backward(x), a.repeats)
    del gcn, op, x
    sampler = NeighborSampler(g, [10, 10], "mean")
    rng = np.random.default_rng(0)
    batches = [rng.choice(g.num_nodes, a.batch, replace=False) for _ in range(a.repeats + 1)]
    it = iter(range(10**9))
    row["sample_ms"] = _ms(lambda: sampler.sample(batches[next(it) % len(batches)], 7), a.repeats)
    samples = [sampler.sample(s, 7) for s in batches]
    grads = [[torch.randn(b.num_targets, a.width, generator=gen) for b in s.blocks] for s in samples]
    times = []
    for s, gs in zip(samples, grads):
        ops = [b.operator() for b in s.blocks]  # fresh operators: no transpose built yet
        t0 = time.perf_counter()
        for op, gr in zip(ops, gs):
            op.backward(gr)
        times.append(time.perf_counter() - t0)
    row["block_bwd_ms"] = _common.median(times[1:]) * 1e3  # the first batch also warms the kernels up
    print(row, flush=True)
    _common.write_json(a.json, {"library": approxgnn.__file__, "row": row})


if __name__ == "__main__":
    main()
