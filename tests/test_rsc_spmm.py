"""Sampled backward SpMM: slices, selection and the autograd Function against dense references."""
import pytest
import torch

from approxgnn import csr_kernels
from approxgnn.graph import CSRGraph, normalize
from approxgnn.ops import SparseOperator
from approxgnn.rsc.spmm import (SampledSpMM, build_slice, inclusion_probabilities, row_scores, sampled_backward,
                                select_importance, select_poisson, select_topk)


def _adj(kind, n=60, e=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A skewed degree distribution: a few hubs, many leaves (like the power-law graphs RSC targets).
    src = (torch.rand(e, generator=g) ** 3 * n).long()
    dst = torch.randint(0, n, (e,), generator=g)
    return normalize(CSRGraph.from_edge_index(torch.stack([src, dst]), n), kind)


def _operator(kind):
    """The normalised adjacency, its exact operator and that operator's off-diagonal CSR."""
    adj = _adj(kind)
    op = SparseOperator.from_adjacency(adj)
    return adj, op, op.off


@pytest.fixture(params=["numba-serial", "numba-parallel", "torch"])
def backend(request, monkeypatch):
    """Run each test on both numba CPU kernels and on the device-agnostic torch path."""
    if request.param == "torch":
        monkeypatch.setattr(csr_kernels, "use_numba", lambda t: False)
    elif request.param == "numba-parallel":
        monkeypatch.setattr(csr_kernels, "SERIAL_BELOW", 0)
    return request.param


def _dense_off(adj):
    return adj.off.to_torch().to_dense()


def _reference(adj, g, rows, scale=None):
    """Σ_{i∈S} s_i Â_off[i,:]ᵀ G[i,:] + diag ⊙ G, one outer product at a time."""
    a = _dense_off(adj)
    out = torch.zeros(adj.num_nodes, g.size(1))
    for t, i in enumerate(rows.tolist()):
        s = 1.0 if scale is None else float(scale[t])
        out += s * torch.outer(a[i], g[i])
    if adj.diag is not None:
        out += adj.diag[:, None] * g
    return out


@pytest.mark.parametrize("kind", ["gcn", "mean"])
def test_slice_is_transposed_row_slice(kind, backend):
    adj = _adj(kind)
    csr = SparseOperator.from_adjacency(adj).off
    rows = torch.tensor([0, 3, 4, 17, 59])
    scale = torch.linspace(0.5, 2.0, 5)
    slc = build_slice(csr, rows, scale)
    t = slc.t.to_torch().to_dense()
    ref = torch.zeros(adj.num_nodes, adj.num_nodes)
    ref[rows] = _dense_off(adj)[rows] * scale[:, None]
    assert torch.allclose(t, ref.t())
    assert slc.t.nnz == int(adj.off.degree()[rows].sum())
    # Column ids are sorted within every output row (a valid CSR).
    for j in range(adj.num_nodes):
        c = slc.t.col[slc.t.rowptr[j]:slc.t.rowptr[j + 1]]
        assert torch.all(c[1:] > c[:-1])


@pytest.mark.parametrize("kind", ["gcn", "mean"])
def test_keeping_every_row_equals_exact_backward(kind, backend):
    adj, op, csr = _operator(kind)
    g = torch.randn(adj.num_nodes, 9)
    slc = build_slice(csr, torch.arange(adj.num_nodes))
    out = sampled_backward(slc, g, op.diag)
    assert torch.allclose(out, op.backward(g), atol=1e-5)


@pytest.mark.parametrize("kind", ["gcn", "mean"])
def test_topk_matches_straightforward_reference(kind, backend):
    adj, op, csr = _operator(kind)
    g = torch.randn(adj.num_nodes, 5)
    g[::3] = 0.0  # rows without gradient (e.g. non-training nodes) must never be kept
    deg = adj.off.degree()
    max_nnz = int(0.3 * adj.off.nnz)
    scores = row_scores(adj.row_norm(), g)
    sorted_scores, order = torch.sort(scores, descending=True)
    rows = select_topk(sorted_scores, order, deg, max_nnz)

    # Reference: walk rows by decreasing ‖Â_i‖·‖G_i‖ (computed densely), keep while within budget.
    a = _dense_off(adj)
    ref_scores = a.norm(dim=1) * g.norm(dim=1)
    kept, used = [], 0
    for i in sorted(range(adj.num_nodes), key=lambda i: -float(ref_scores[i])):
        if ref_scores[i] <= 0 or used + int(deg[i]) > max_nnz:
            break
        kept.append(i)
        used += int(deg[i])
    assert rows.tolist() == sorted(kept)
    assert int(deg[rows].sum()) <= max_nnz
    assert all(ref_scores[i] > 0 for i in rows.tolist())
    out = sampled_backward(build_slice(csr, rows), g, op.diag)
    assert torch.allclose(out, _reference(adj, g, rows), atol=1e-5)


def test_topk_row_cap_and_zero_rows():
    scores = torch.tensor([3.0, 0.0, 2.0, 1.0, 0.0])
    deg = torch.tensor([1, 1, 1, 1, 1])
    s, o = torch.sort(scores, descending=True)
    assert select_topk(s, o, deg, max_nnz=100, max_rows=2).tolist() == [0, 2]
    assert select_topk(s, o, deg, max_nnz=100).tolist() == [0, 2, 3]
    assert select_topk(s, o, deg, max_nnz=2).tolist() == [0, 2]
    assert select_topk(s, o, deg, max_nnz=0).tolist() == []


def test_scores_ignore_nan_and_inf():
    g = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [float("inf"), 0.0]])
    s = row_scores(torch.ones(3), g)
    assert s.tolist() == [1.0, 0.0, 0.0]


def test_importance_sampling_is_unbiased_and_within_budget():
    # The estimator is Σ_i w_i Â_iᵀ G_i with w_i = c_i / (k p_i) (0 for rows not drawn), so it is
    # unbiased iff E[w_i] = 1 for every row with p_i > 0. (Slices with scales are checked above.)
    scores = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.0, 1.5, 3.0])
    deg = torch.tensor([3, 1, 2, 5, 1, 4, 2, 2])
    gen = torch.Generator().manual_seed(0)
    trials, w = 4000, torch.zeros(8)
    for _ in range(trials):
        rows, scale = select_importance(scores, deg, 10**6, gen)  # budget never binds
        w[rows] += scale
    w /= trials
    assert torch.allclose(w[scores > 0], torch.ones(7), atol=0.1)
    assert w[5] == 0.0  # zero score: never drawn
    for _ in range(50):
        rows, scale = select_importance(scores, deg, 6, gen)
        assert int(deg[rows].sum()) <= 6
        assert torch.all(rows[1:] > rows[:-1]) and scale.numel() == rows.numel()


@pytest.mark.parametrize("kind", ["gcn", "mean"])
def test_autograd_function_forward_exact_backward_delegated(kind):
    adj = _adj(kind)
    op = SparseOperator.from_adjacency(adj)
    calls = []

    class Spy:
        def backward(self, g):
            calls.append(g.shape)
            return op.backward(g)

    x = torch.randn(adj.num_nodes, 4, requires_grad=True)
    y = SampledSpMM.apply(x, op, Spy())
    assert torch.allclose(y, adj.dense() @ x, atol=1e-5)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    assert calls == [torch.Size([adj.num_nodes, 4])]
    assert torch.allclose(gx, adj.dense().t() @ (2 * y), atol=1e-4)


@pytest.mark.parametrize("frac", [0.05, 0.3, 0.9])
def test_inclusion_probabilities_solve_the_budgeted_variance_problem(frac):
    """π = min(1, μ s/√c) with Σ π c = budget: checked against a bisection on μ."""
    g = torch.Generator().manual_seed(3)
    n = 2000
    s = torch.rand(n, generator=g, dtype=torch.float64) ** 3
    s[torch.rand(n, generator=g) < 0.2] = 0.0
    c = (torch.rand(n, generator=g) ** 4 * 100).long()  # power-law-ish costs, some zero
    budget = frac * float(c[s > 0].sum())
    pi = inclusion_probabilities(s, c, budget)
    assert float((pi * c).sum()) == pytest.approx(budget, rel=1e-9)
    assert bool(((pi == 0) == ((s == 0) | (c == 0))).all())
    t = torch.where((s > 0) & (c > 0), s / c.clamp_min(1).double().sqrt(), torch.zeros((), dtype=torch.float64))
    lo, hi = 0.0, 1e12
    for _ in range(300):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((torch.clamp(mid * t, max=1.0) * c).sum()) < budget else (lo, mid)
    assert torch.allclose(pi, torch.clamp(lo * t, max=1.0), atol=1e-9)
    # The deterministic top part: every row with π = 1 has a larger s/√c than every sampled row.
    if bool((pi == 1).any()) and bool(((pi > 0) & (pi < 1)).any()):
        assert float(t[pi == 1].min()) >= float(t[(pi > 0) & (pi < 1)].max())


def test_poisson_selection_is_unbiased_and_keeps_the_budget_in_expectation():
    g = torch.Generator().manual_seed(0)
    norm_adj = _adj("gcn", n=120, e=900)
    adj = SparseOperator.from_adjacency(norm_adj).cast(torch.float64).off
    grad = torch.randn(120, 5, generator=g, dtype=torch.float64)
    exact = adj.to_torch(None).to_dense().t() @ grad
    scores = row_scores(norm_adj.row_norm().double(), grad)
    degree = adj.degree()
    budget = int(0.3 * adj.nnz)
    total, nnz, draws = torch.zeros_like(exact), 0, 3000
    for _ in range(draws):
        rows, scale = select_poisson(scores, degree, budget, g)
        slc = build_slice(adj, rows, scale)
        total += sampled_backward(slc, grad, None)
        nnz += slc.t.nnz
    assert nnz / draws == pytest.approx(budget, rel=0.02)
    err = (total / draws - exact).norm() / exact.norm()
    assert err < 0.05
    # Top-k at the same budget is deterministic and biased: its error is what it is, draw or not.
    sorted_scores, order = torch.sort(scores, descending=True)
    topk = sampled_backward(build_slice(adj, select_topk(sorted_scores, order, degree, budget)), grad, None)
    assert (topk - exact).norm() / exact.norm() > 4 * err
