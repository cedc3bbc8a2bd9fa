"""Exact SpMM forward+backward: approxgnn's cached-transpose Function vs torch.sparse autograd vs PyG.

    python benchmarks/exact_spmm.py [--nodes 500000 --degree 20 --dim 128 --repeats 5 --json out.json]

Graph: synthetic power-law (approxgnn.datasets.synthetic), GCN-normalised with the diagonal kept
separate. Every row is the median of ``--repeats`` timed runs after one warm-up.
"""
from __future__ import annotations

import argparse

import _common  # noqa: F401  (puts src/ on the path)
import torch

from approxgnn.datasets import synthetic
from approxgnn.graph import CSRGraph, gcn_norm
from approxgnn.ops import SparseOperator, spmm
from approxgnn.train.results import format_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=500_000)
    p.add_argument("--degree", type=float, default=20.0, help="average degree (directed edges per node)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = dev.type == "cuda"

    data = synthetic(num_nodes=a.nodes, avg_degree=a.degree, num_features=8, seed=0)
    adj = gcn_norm(CSRGraph.from_edge_index(data.edge_index, data.num_nodes))
    op = SparseOperator.from_adjacency(adj).to(dev)
    n, nnz = adj.num_nodes, adj.off.nnz
    # torch's own CSR autograd on the full matrix (diagonal included, as a user would build it).
    full = (adj.off.to_torch() + torch.sparse.spdiags(adj.diag, torch.tensor([0]), (n, n)).to_sparse_csr()).to(dev)
    x = torch.randn(n, a.dim, device=dev, requires_grad=True)
    g = torch.randn(n, a.dim, device=dev)
    print(f"graph: {n} nodes, {nnz} off-diagonal nnz (+{n} diagonal), d={a.dim}, device={dev}, "
          f"threads={torch.get_num_threads()}")

    def ours():
        x.grad = None
        spmm(op, x).backward(g)

    def torch_sparse_mm():
        x.grad = None
        torch.sparse.mm(full, x).backward(g)

    def ours_fwd():
        with torch.no_grad():
            op.forward(x)

    cases = {"approxgnn ExactSpMM fwd+bwd": ours, "torch.sparse.mm autograd fwd+bwd": torch_sparse_mm,
             "approxgnn forward only": ours_fwd}
    try:
        from torch_geometric.nn import GCNConv
        from torch_geometric.utils import spmm as pyg_spmm

        adj_t = full.t().to_sparse_csr()  # PyG convention: adj_t[i, j] is an edge j → i

        def pyg_spmm_case():
            x.grad = None
            pyg_spmm(adj_t, x, reduce="sum").backward(g)

        conv = GCNConv(a.dim, a.dim, normalize=False, bias=False).to(dev)
        lin = torch.nn.Linear(a.dim, a.dim, bias=False).to(dev)
        lin.weight.data.copy_(conv.lin.weight.data)

        def pyg_conv():
            x.grad = None
            conv(x, adj_t).backward(g)

        def ours_layer():
            x.grad = None
            spmm(op, lin(x)).backward(g)

        cases.update({"PyG utils.spmm fwd+bwd": pyg_spmm_case, "PyG GCNConv layer fwd+bwd": pyg_conv,
                      "approxgnn GCN layer (Linear+ExactSpMM) fwd+bwd": ours_layer})
    except ImportError:
        print("PyG: skipped (torch_geometric not installed; `make peer` installs it)")

    rows, times = [], {}
    for name, fn in cases.items():
        ts = [t * 1e3 for t in _common.time_runs(fn, a.repeats, 1, sync)]
        times[name] = ts
        rows.append({"case": name, "median_ms": _common.median(ts), "min_ms": min(ts), "max_ms": max(ts)})
    ref = times["approxgnn ExactSpMM fwd+bwd"]
    for r in rows:
        r["vs_ours"] = r["median_ms"] / _common.median(ref)
    print(format_table(rows, ["case", "median_ms", "min_ms", "max_ms", "vs_ours"]))
    if "PyG GCNConv layer fwd+bwd" in times:
        print(f"PyG GCNConv / approxgnn layer: "
              f"{_common.median(times['PyG GCNConv layer fwd+bwd']) / _common.median(times['approxgnn GCN layer (Linear+ExactSpMM) fwd+bwd']):.2f}x")
    _common.write_json(a.json, {"nodes": n, "nnz_offdiag": nnz, "dim": a.dim, "repeats": a.repeats,
                                "times_ms": times, "rows": rows})


if __name__ == "__main__":
    main()
