"""RSC op benchmark: one backward SpMM, sampled (cache warm) vs our exact, on synthetic power-law graphs.

    python benchmarks/rsc_op.py [--quick] [--json out.json]

It takes the shared benchmark lock ``/tmp/approxgnn-bench.lock`` itself around each timed block
(and waits for the machine to be quiet first); do not wrap it in ``flock``.

For every graph × width d × budget C:

* ``exact_ms``: our real exact backward, ``SparseOperator.backward`` (``Âᵀ @ G`` + diagonal);
* ``kexact_ms``: the product over RSC's transposed slice with *every* row kept (the slice built by
  ``CSRGraph.transposed_rows``, multiplied by ``approxgnn.ops.spmm_diag``): no sampling (kernel-matched);
* ``sampled_ms``: the sampled backward with a warm cache (``SampledPropagation.backward``, a cache hit);
* ``torch_sampled_ms``: a slice of the same kept rows through ``spmm_diag(..., backend="torch")``
  (torch's CSR ``addmm``, the device-agnostic path; unscaled rows: the same structure, the same cost);
* ``resample_ms``: the extra cost of a resample step over a cache hit (scores ``‖Â_i‖·‖G_i‖``, sort,
  top-k within the nnz allowance, transposed-slice build, EMA statistics); ``amortised``: speedup
  counting ``resample_ms / R`` per step;
* ``others_cpu``: cores other processes used during the measurement (see ``rsc_common``);
* ``rows_kept``/``nnz_kept``: fractions of rows and of off-diagonal non-zeros kept;
* ``rel_err``: ``‖approx − exact‖_F / ‖exact‖_F``.

Timed through the engine itself, on its public face: a one-layer
:class:`~approxgnn.rsc.SampledPropagation` is driven by its epoch hooks into the approximate phase
(one exact backward gathers the statistics, then the engine's greedy code allocates C; a single
layer, so the allocation reduces to "rows by score until C·nnz non-zeros"), its backward is
:meth:`~approxgnn.rsc.SampledPropagation.backward`, and what it kept is read from
:meth:`~approxgnn.rsc.SampledPropagation.profile`. The resample cost is the difference between an
engine that resamples at every step (R = 1) and one that never does (R = 10⁹). ``G`` is a
Gaussian gradient on every row (no free zero rows). Every time is the median of ``--repeats`` runs
after a warm-up.
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (puts src/ on the path)
import rsc_common
import torch

from approxgnn import csr_kernels
from approxgnn.datasets import synthetic
from approxgnn.graph import CSRGraph, gcn_norm
from approxgnn.ops import SparseOperator, spmm_diag
from approxgnn.rsc import RSCConfig, SampledPropagation
from approxgnn.train.results import format_table

GRAPHS = {"500k": (500_000, 20.0), "2m": (2_000_000, 20.0)}
QUICK_GRAPHS = {"50k": (50_000, 20.0)}


def _ms(fn, repeats: int) -> float:
    return _common.median(_common.time_runs(fn, repeats, 1)) * 1e3


def _approximating(op, row_norm, g, c: float, interval: int) -> SampledPropagation:
    """A one-layer RSC engine (budget C, resample every ``interval`` steps) brought into the
    approximate phase through its public hooks: epoch 0 approximates without statistics, so the
    layer's first backward is exact and gathers them; epoch 1 allocates C."""
    cfg = RSCConfig(budget=c, cache_interval=interval, warmup=0, switch_time=1.0)
    prop = SampledPropagation(op, row_norm, {0: g.size(1)}, cfg, epochs=2, seed=0)
    prop.on_epoch_start(0, 2)
    prop.backward(0, g)
    prop.on_epoch_start(1, 2)
    assert prop.profile().approximating
    return prop


def _time_budget(op, row_norm, g, exact_out, c: float, repeats: int) -> dict:
    """Time one budget: the sampled product on a warm cache, a resampling step, the same kept rows
    on torch's path, and the relative error against the exact backward."""
    every = _approximating(op, row_norm, g, c, 1)  # R = 1: every backward resamples
    resample_total_ms = _ms(lambda: every.backward(0, g), max(3, repeats // 2))
    del every
    prop = _approximating(op, row_norm, g, c, 10**9)  # R = 10⁹: after the first, every backward hits
    prop.backward(0, g)
    sampled_ms = _ms(lambda: prop.backward(0, g), repeats)  # cache hit: the product only
    kept = prop.profile().by_layer[0]
    buf = prop.backward(0, g)
    rel = float(torch.sub(buf, exact_out, out=buf).norm() / exact_out.norm())  # in place: no extra N×d
    t = op.off.transposed_rows(kept.kept_rows)
    torch_ms = _ms(lambda: spmm_diag(t, g, op.diag, buf, backend="torch"), repeats)
    return {"profile": kept, "sampled_ms": sampled_ms, "resample_ms": max(resample_total_ms - sampled_ms, 0.0),
            "torch_ms": torch_ms, "rel": rel}


def bench_graph(name: str, nodes: int, degree: float, dims: list[int], budgets: list[float], repeats: int,
                cache_interval: int, a_max_busy: float, lock: str | None) -> list[dict]:
    t0 = time.perf_counter()
    data = synthetic(num_nodes=nodes, avg_degree=degree, num_features=1, seed=0)
    adj = gcn_norm(CSRGraph.from_edge_index(data.edge_index, data.num_nodes))
    del data
    op = SparseOperator.from_adjacency(adj)
    deg = op.off.degree()
    row_norm = adj.row_norm()
    n, nnz = adj.num_nodes, op.off.nnz
    print(f"[{name}] {n} nodes, {nnz} off-diagonal nnz (+{n} diagonal), max degree {int(deg.max())}, "
          f"built in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    for d in dims:
        g = torch.randn(n, d, generator=torch.Generator().manual_seed(d))
        exact_out = op.backward(g)
        full = op.off.transposed_rows(torch.arange(n))
        kbuf = torch.empty_like(g)
        with rsc_common.quiet_lock(lock, a_max_busy), rsc_common.others_meter() as m_exact:
            exact_ms = _ms(lambda: op.backward(g), repeats)
            kexact_ms = _ms(lambda: spmm_diag(full, g, op.diag, kbuf), repeats)
        del full, kbuf
        print(f"[{name} d={d}] exact {exact_ms:.0f} ms, kernel-matched exact {kexact_ms:.0f} ms", flush=True)
        for c in budgets:
            with rsc_common.quiet_lock(lock, a_max_busy), rsc_common.others_meter() as m:
                t = _time_budget(op, row_norm, g, exact_out, c, repeats)
            kept = t["profile"]
            sampled_ms, resample_ms, torch_ms, rel = t["sampled_ms"], t["resample_ms"], t["torch_ms"], t["rel"]
            row = {"graph": name, "nodes": n, "nnz": nnz, "d": d, "C": c,
                   "rows_kept": kept.rows_kept / n, "nnz_kept": kept.nnz_kept / nnz,
                   "exact_ms": exact_ms, "kexact_ms": kexact_ms, "sampled_ms": sampled_ms,
                   "torch_sampled_ms": torch_ms, "resample_ms": resample_ms,
                   "speedup": exact_ms / sampled_ms, "speedup_kernel_matched": kexact_ms / sampled_ms,
                   "amortised": exact_ms / (sampled_ms + resample_ms / cache_interval),
                   "rel_err": rel, "others_cpu": max(m.cores, m_exact.cores)}
            rows.append(row)
            print(f"  C={c}: rows {row['rows_kept']:.3f} nnz {row['nnz_kept']:.3f} sampled {sampled_ms:.1f} ms "
                  f"(torch {torch_ms:.1f}) resample {resample_ms:.0f} ms speedup {row['speedup']:.1f}x "
                  f"amortised {row['amortised']:.1f}x err {rel:.3f}", flush=True)
            del kept, t
        del g, exact_out
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: a 50k-node graph, 3 repeats")
    p.add_argument("--graphs", default=None, help=f"comma list of {sorted(GRAPHS)}")
    p.add_argument("--dims", default="128,256")
    p.add_argument("--budgets", default="0.05,0.1,0.3,0.5")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cache-interval", type=int, default=10, help="R used for the amortised speedup")
    p.add_argument("--max-busy", type=float, default=0.25,
                   help="wait until other processes use fewer cores than this before each measurement")
    p.add_argument("--lock", default=rsc_common.LOCK, help="benchmark lock ('' for none); do not also wrap in flock")
    p.add_argument("--json")
    a = p.parse_args()
    graphs = QUICK_GRAPHS if a.quick else {k: GRAPHS[k] for k in (a.graphs.split(",") if a.graphs else GRAPHS)}
    repeats = 3 if a.quick else a.repeats
    dims = [int(x) for x in a.dims.split(",")]
    budgets = [float(x) for x in a.budgets.split(",")]
    csr_kernels.warm_up()
    print(f"threads: torch {torch.get_num_threads()}, numba kernels: {csr_kernels.use_numba(torch.empty(0))}")
    rows = []
    for name, (nodes, degree) in graphs.items():
        rows += bench_graph(name, nodes, degree, dims, budgets, repeats, a.cache_interval, a.max_busy, a.lock)
    cols = ["graph", "d", "C", "rows_kept", "nnz_kept", "exact_ms", "kexact_ms", "sampled_ms", "torch_sampled_ms",
            "resample_ms", "speedup", "speedup_kernel_matched", "amortised", "rel_err", "others_cpu"]
    print(format_table(rows, cols))
    _common.write_json(a.json, {"repeats": repeats, "cache_interval": a.cache_interval, "rows": rows})


if __name__ == "__main__":
    main()
