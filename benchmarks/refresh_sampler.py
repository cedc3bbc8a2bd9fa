"""Neighbour-sampler throughput: approxgnn's numba sampler vs a vectorised PyTorch reference and PyG.

    flock /tmp/approxgnn-bench.lock python benchmarks/refresh_sampler.py --json refresh_sampler.json
    python benchmarks/refresh_sampler.py --quick

Cases: 3-hop ``[15, 10, 5]`` with 1024 seeds (the training batch), and one hop of fanout 10 for
10k seeds. Each figure is the median of ``--repeats`` runs after one warm-up, a new key (random
draw) per run. Every sampler produces the same thing: per hop, distinct neighbours without
replacement and the relabelled node list (``torch.unique``/our relabel); ours also builds the
normalised block values.

* ``approxgnn numba``: :class:`approxgnn.minibatch.NeighborSampler` (parallel ``prange``).
* ``torch reference``: our own vectorised PyTorch sampler written for this comparison (per edge of
  the frontier a random key, one sort by (row, key), keep the first ``k`` per row, then
  ``torch.unique`` to relabel) — what one writes without a compiled sampler.
* ``PyG NeighborLoader``: needs ``pyg-lib`` or ``torch-sparse`` (compiled); skipped otherwise. With
  torch-sparse, also its ``neighbor_sample`` op alone (no subgraph building), the figure the
  issue quotes.
"""
from __future__ import annotations

import argparse
from typing import Any

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch

from approxgnn.datasets import synthetic
from approxgnn.graph import CSRGraph
from approxgnn.minibatch import NeighborSampler
from approxgnn.train.results import format_table


def torch_reference(rowptr: torch.Tensor, col: torch.Tensor, seeds: torch.Tensor, fanouts: list[int],
                    gen: torch.Generator) -> list[int]:
    """Vectorised sampling without replacement; returns the node count after each hop."""
    nodes, sizes = seeds, [len(seeds)]
    frontier = seeds
    for f in fanouts:
        start, deg = rowptr[frontier], rowptr[frontier + 1] - rowptr[frontier]
        row = torch.repeat_interleave(torch.arange(len(frontier)), deg)
        offs = torch.arange(int(deg.sum())) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
        edge = torch.repeat_interleave(start, deg) + offs
        key = torch.rand(len(edge), generator=gen)
        order = torch.argsort(key)
        order = order[torch.argsort(row[order], stable=True)]  # by row, random within the row
        rank = offs  # after the sort, position within the row
        keep = order[rank < torch.repeat_interleave(torch.clamp(deg, max=f) if f > 0 else deg, deg)]
        nbr = col[edge[keep]]
        uniq = torch.unique(torch.cat([nodes, nbr]))  # relabel: nodes of the next layer
        new = uniq[~torch.isin(uniq, nodes)]
        nodes = torch.cat([nodes, new])
        frontier = nodes
        sizes.append(len(nodes))
    return sizes


def pyg_timings(graph: CSRGraph, fanouts: list[int], batch: int, seed_sets: list[np.ndarray],
                repeats: int) -> dict[str, Any]:
    """PyG's ``NeighborLoader`` per batch and, with torch-sparse, its sampling op alone.

    PyG expands only the nodes that are new at each hop into one merged subgraph, while our sampler
    builds a block per layer whose targets are *all* nodes of the layer above (DGL/GraphSAGE
    semantics), so PyG samples fewer nodes: ``pyg_nodes`` (all hops) records how many.
    """
    import torch_geometric.typing as pyg_t
    from torch_geometric.data import Data
    from torch_geometric.loader import NeighborLoader

    d = Data(edge_index=torch.stack([graph.row(), graph.col]), num_nodes=graph.num_nodes)
    batches = iter(NeighborLoader(d, num_neighbors=fanouts, batch_size=batch, shuffle=True))
    loader = _common.time_runs(lambda: next(batches), repeats=repeats)
    out: dict[str, Any] = {"pyg_ms": 1e3 * _common.median(loader), "pyg_nodes": next(batches).num_nodes}
    if pyg_t.WITH_TORCH_SPARSE:
        op = torch.ops.torch_sparse.neighbor_sample
        seeds = [torch.from_numpy(s).long() for s in seed_sets]
        it = iter(range(10**9))
        # the graph is symmetric, so its CSR arrays are also the CSC arrays the op expects
        t = _common.time_runs(lambda: op(graph.rowptr, graph.col, seeds[next(it) % len(seeds)], fanouts, False, True),
                              repeats=repeats)
        out["torch_sparse_op_ms"] = 1e3 * _common.median(t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--degree", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="200k nodes, 3 repeats")
    p.add_argument("--json")
    a = p.parse_args()
    if a.quick:
        a.nodes, a.repeats = 200_000, 3
    data = synthetic(num_nodes=a.nodes, avg_degree=a.degree, num_features=1, seed=0)
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    del data
    rng = np.random.default_rng(0)
    print(f"graph: {graph.num_nodes} nodes, {graph.nnz} directed edges, torch threads {torch.get_num_threads()}")

    cases = [("3-hop [15,10,5], 1024 seeds", [15, 10, 5], 1024), ("1-hop [10], 10k seeds", [10], 10_000)]
    try:
        import torch_geometric.typing as pyg_t

        pyg_ok = pyg_t.WITH_PYG_LIB or pyg_t.WITH_TORCH_SPARSE
        pyg_note = None if pyg_ok else "skipped: torch-sparse not installed (nor pyg-lib)"
    except ImportError:
        pyg_ok, pyg_note = False, "skipped: torch_geometric not installed"
    rows = []
    for label, fanouts, batch in cases:
        sampler = NeighborSampler(graph, fanouts)
        seed_sets = [rng.choice(graph.num_nodes, batch, replace=False) for _ in range(a.repeats + 1)]
        it = iter(range(10**9))
        ours = _common.time_runs(lambda: sampler.sample(seed_sets[next(it) % len(seed_sets)], next(it)),
                                 repeats=a.repeats)
        sizes = sampler.sample(seed_sets[0], 0).nodes_per_hop()
        gen = torch.Generator().manual_seed(0)
        tseeds = [torch.from_numpy(s) for s in seed_sets]
        jt = iter(range(10**9))
        ref = _common.time_runs(lambda: torch_reference(graph.rowptr, graph.col, tseeds[next(jt) % len(tseeds)],
                                                        fanouts, gen), repeats=a.repeats)
        ref_sizes = torch_reference(graph.rowptr, graph.col, tseeds[0], fanouts, gen)
        row = {"case": label, "numba_ms": 1e3 * _common.median(ours), "torch_ref_ms": 1e3 * _common.median(ref),
               "speedup_vs_torch_ref": _common.median(ref) / _common.median(ours),
               "nodes_per_hop": "/".join(map(str, sizes)), "ref_nodes_per_hop": "/".join(map(str, ref_sizes))}
        if pyg_ok:
            row.update(pyg_timings(graph, fanouts, batch, seed_sets, a.repeats))
            row["speedup_vs_pyg"] = row["pyg_ms"] / row["numba_ms"]
            if "torch_sparse_op_ms" in row:
                row["speedup_vs_torch_sparse_op"] = row["torch_sparse_op_ms"] / row["numba_ms"]
        else:
            row["pyg_ms"] = pyg_note
        rows.append(row)
    print(format_table(rows, list(rows[0])))
    _common.write_json(a.json, {"args": vars(a), "rows": rows})


if __name__ == "__main__":
    main()
