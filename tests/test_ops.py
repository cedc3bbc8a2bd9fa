import pytest
import torch

from approxgnn.graph import CSRGraph, normalize
from approxgnn.ops import SparseOperator, spmm


def _adj(kind, n=25, e=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return normalize(CSRGraph.from_edge_index(ei, n), kind)


@pytest.mark.parametrize("kind", ["gcn", "mean"])
def test_spmm_forward_and_backward_match_dense(kind):
    adj = _adj(kind)
    op = SparseOperator.from_adjacency(adj)
    x = torch.randn(adj.num_nodes, 7, requires_grad=True)
    y = spmm(op, x)
    ref = adj.dense() @ x
    assert torch.allclose(y, ref, atol=1e-5)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.allclose(gx, adj.dense().t() @ g, atol=1e-5)


@pytest.mark.parametrize("kind", ["gcn", "mean"])
def test_spmm_gradcheck(kind):
    adj = _adj(kind, n=12, e=30)
    op = SparseOperator(adj.off.to_torch(torch.float64), None if adj.diag is None else adj.diag.double(),
                        symmetric=adj.symmetric)
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spmm(op, t), (x,))


def test_transpose_is_built_once_and_symmetric_reuses_matrix():
    sym = SparseOperator.from_adjacency(_adj("gcn"))
    assert sym.transpose is sym.off
    mean = SparseOperator.from_adjacency(_adj("mean"))
    t1 = mean.transpose
    assert mean.transpose is t1


def test_rectangular_block_with_diagonal():
    # 3 targets, 5 sources; targets are the first 3 sources.
    dense = torch.tensor([[0, .5, 0, .5, 0], [.2, 0, 0, 0, .3], [0, 0, 0, 1., 0]])
    diag = torch.tensor([.1, .2, .3])
    op = SparseOperator(dense.to_sparse_csr(), diag)
    x = torch.randn(5, 4, requires_grad=True)
    y = spmm(op, x)
    ref = dense @ x + diag[:, None] * x[:3]
    assert torch.allclose(y, ref, atol=1e-6)
    g = torch.randn(3, 4)
    (gx,) = torch.autograd.grad(y, x, g)
    (gref,) = torch.autograd.grad(ref, x, g)
    assert torch.allclose(gx, gref, atol=1e-6)


def test_numba_thread_team_keeps_torchs_thread_count():
    """numba's OpenMP team shares torch's libgomp; starting it (first parallel kernel in a fresh
    process) used to raise torch's thread count to the core count, even under OMP_NUM_THREADS=1."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import numpy as np, torch\n"
            "from approxgnn import csr_kernels\n"
            "n, d = 3000, 400\n"  # above SERIAL_BELOW: the parallel kernel runs
            "ptr = torch.arange(n + 1, dtype=torch.int64); col = torch.arange(n, dtype=torch.int64)\n"
            "x = torch.ones(n, d); out = torch.empty(n, d)\n"
            "assert n * d + n * d >= csr_kernels.SERIAL_BELOW\n"
            "csr_kernels.csr_spmm(ptr, col, torch.ones(n), x, None, out)\n"
            "assert torch.equal(out, x)\n"
            "print(torch.get_num_threads())\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
