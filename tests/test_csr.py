"""The one CSR type (CSRGraph) as every embedder holds it, and the one diagonal SpMM (spmm_diag)."""
import numpy as np
import pytest
import torch

from approxgnn import csr_kernels
from approxgnn.graph import CSRGraph, normalize
from approxgnn.minibatch import NeighborSampler
from approxgnn.ops import SparseOperator, spmm_diag
from approxgnn.rsc import RSCConfig, SampledPropagation
from approxgnn.rsc.spmm import build_slice


def _graph(n=80, e=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = (torch.rand(e, generator=g) ** 2 * n).long()  # skewed: hubs and leaves
    return CSRGraph.from_edge_index(torch.stack([src, torch.randint(0, n, (e,), generator=g)]), n)


def _dense(a: CSRGraph) -> torch.Tensor:
    """Dense ``[m, n]`` reference built entry by entry from the arrays (not through torch's CSR)."""
    m, n = a.shape
    out = torch.zeros(m, n, dtype=torch.float64)
    ptr, col = a.rowptr.tolist(), a.col.tolist()
    val = [1.0] * a.nnz if a.value is None else a.value.double().tolist()
    for i in range(m):
        for p in range(ptr[i], ptr[i + 1]):
            out[i, col[p]] += val[p]
    return out


def _embedded() -> dict[str, tuple[CSRGraph, torch.Tensor]]:
    """Every place that holds a CSR, with the dense matrix it must equal (computed independently)."""
    g = _graph()
    adj = normalize(g, "gcn")
    full = adj.off.to_torch().to_dense().double()
    op = SparseOperator.from_adjacency(normalize(g, "mean"))
    mean = _dense(normalize(g, "mean").off)
    sampler = NeighborSampler(g, [4, 3], "gcn")
    batch = sampler.sample(np.arange(0, 80, 7), 5)
    blk = batch.blocks[0]
    # Block row i: its k sampled neighbours u of target v, each (d_v / k) / sqrt((d_v+1)(d_u+1)).
    src, tgt = batch.input_nodes, batch.layer_nodes[0][: batch.num_computed[0]]
    deg = g.degree().double()
    blk_ref = torch.zeros(len(tgt), len(src), dtype=torch.float64)
    ptr, col = blk.adj.rowptr.tolist(), blk.adj.col.tolist()
    for i, v in enumerate(tgt.tolist()):
        k = ptr[i + 1] - ptr[i]
        for p in range(ptr[i], ptr[i + 1]):
            u = int(src[col[p]])
            blk_ref[i, col[p]] = deg[v] / k / ((deg[v] + 1) * (deg[u] + 1)).sqrt()
    rows = torch.tensor([1, 5, 6, 40, 79])
    scale = torch.linspace(0.5, 2.0, 5)
    slc = build_slice(adj.off, rows, scale)
    slc_ref = torch.zeros_like(full)
    slc_ref[rows] = full[rows] * scale.double()[:, None]
    rsc = SampledPropagation(SparseOperator.from_adjacency(adj), adj.row_norm(), {0: 4}, RSCConfig(), epochs=5)
    return {"graph": (g, _dense(g)), "normalised": (adj.off, full), "operator": (op.off, mean),
            "operator transpose": (op.transpose, mean.t()), "block": (blk.adj, blk_ref),
            "block operator transpose": (blk.operator().transpose, blk_ref.t()),
            "rsc slice": (slc.t, slc_ref.t()), "rsc adjacency": (rsc.adj, full)}


@pytest.mark.parametrize("where", ["graph", "normalised", "operator", "operator transpose", "block",
                                   "block operator transpose", "rsc slice", "rsc adjacency"])
def test_every_embedded_csr_keeps_the_invariants(where):
    a, ref = _embedded()[where]
    assert a.validate() is a
    m, n = a.shape
    assert ref.shape == (m, n)
    assert a.nnz == int(a.rowptr[-1]) == int(a.degree().sum())
    assert torch.equal(a.degree(), torch.tensor([int((ref[i] != 0).sum()) for i in range(m)]))
    for i in range(m):  # distinct column ids within each row, sorted except in a block (draw order)
        c = a.col[a.rowptr[i]:a.rowptr[i + 1]]
        assert len(set(c.tolist())) == len(c)
        assert where == "block" or bool((c[1:] > c[:-1]).all())
    assert torch.allclose(_dense(a), ref, atol=1e-6)
    assert torch.allclose(a.to_torch(torch.float64).to_dense(), ref, atol=1e-6)
    t = a.transpose()
    assert t.shape == (n, m) and t.validate() is t
    assert torch.allclose(_dense(t), ref.t(), atol=1e-6)


def test_validate_names_each_broken_invariant():
    g = _graph(n=10, e=30)
    ptr, col = g.rowptr.clone(), g.col.clone()
    with pytest.raises(ValueError, match="entries for 10 rows"):
        CSRGraph(ptr[:-1], col, 10).validate()
    bad = ptr.clone()
    bad[-1] += 1
    with pytest.raises(ValueError, match="run from 0 to nnz"):
        CSRGraph(bad, col, 10).validate()
    bad = ptr.clone()
    i = 1 + int(torch.nonzero(g.degree()[1:-1] > 0)[0])  # neither end of rowptr moves
    bad[i + 1], bad[i] = int(ptr[i]), int(ptr[i + 1])  # swapped: row i gets a negative length
    with pytest.raises(ValueError, match="decreases"):
        CSRGraph(bad, col, 10).validate()
    with pytest.raises(ValueError, match="outside"):
        CSRGraph(ptr, col, 10, num_cols=int(col.max())).validate()
    with pytest.raises(ValueError, match="value has shape"):
        CSRGraph(ptr, col, 10, torch.ones(g.nnz + 1)).validate()


@pytest.fixture(params=["numba-serial", "numba-parallel", "torch-forced", "torch-fallback"])
def backend(request, monkeypatch):
    """The numba kernels (both of the pair), the explicit torch path, and the fallback other devices take."""
    if request.param == "numba-parallel":
        monkeypatch.setattr(csr_kernels, "SERIAL_BELOW", 0)
    if request.param == "torch-fallback":
        monkeypatch.setattr(csr_kernels, "use_numba", lambda t: False)
    return "torch" if request.param == "torch-forced" else "auto"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,k", [((30, 30), 30), ((12, 30), 12), ((30, 12), 12), ((30, 30), 0)])
def test_spmm_diag_equals_dense_with_diagonal(backend, dtype, shape, k):
    """``out = A x`` then ``out[:k] += diag ⊙ x[:k]``: square, a block's forward (k = m < n), its
    transpose (k = n < m), and no diagonal; into a fresh buffer and into a given (dirty) one."""
    g = torch.Generator().manual_seed(k + shape[0])
    m, n = shape
    dense = (torch.rand(m, n, generator=g) < 0.2) * torch.randn(m, n, generator=g)
    a = CSRGraph.from_torch(dense.to(dtype).to_sparse_csr())
    x = torch.randn(n, 7, generator=g, dtype=dtype)
    diag = torch.randn(k, generator=g, dtype=dtype) if k else None
    ref = dense.double() @ x.double()
    if k:
        ref[:k] += diag.double()[:, None] * x.double()[:k]
    got = spmm_diag(a, x, diag, backend=backend)
    assert got.shape == (m, 7) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got.double(), ref, atol=tol)
    out = torch.full((m, 7), float("nan"), dtype=dtype)
    assert spmm_diag(a, x, None if diag is None else diag[:, None], out, backend=backend) is out
    assert torch.allclose(out.double(), ref, atol=tol)


def test_spmm_diag_refuses_what_it_cannot_multiply():
    a = CSRGraph.from_torch(torch.eye(4).to_sparse_csr())
    with pytest.raises(ValueError, match="3 rows, the matrix 4 columns"):
        spmm_diag(a, torch.ones(3, 2))
    with pytest.raises(ValueError, match="more than min"):
        spmm_diag(a, torch.ones(4, 2), torch.ones(5))
    with pytest.raises(ValueError, match="weighted"):
        spmm_diag(a.with_value(None), torch.ones(4, 2))
    with pytest.raises(ValueError, match="backend"):
        spmm_diag(a, torch.ones(4, 2), backend="cuda")


def test_block_transpose_is_the_counting_sort_kernel_and_equals_torchs():
    """A mini-batch block's backward uses CSRGraph.transpose (the numba counting sort on CPU);
    it must give exactly the arrays torch's own CSR transpose gives."""
    g = _graph(n=300, e=3000, seed=3)
    batch = NeighborSampler(g, [10, 10]).sample(np.arange(0, 300, 4), 1)
    for blk in batch.blocks:
        t = blk.adj.transpose()
        ref = blk.adj.to_torch().t().to_sparse_csr()
        assert torch.equal(t.rowptr, ref.crow_indices()) and torch.equal(t.col, ref.col_indices())
        assert torch.equal(t.value, ref.values())
