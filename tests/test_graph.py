import numpy as np
import pytest
import torch

from approxgnn.graph import CSRGraph, gcn_norm, mean_norm, normalize


def _random_edges(n=30, e=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (2, e), generator=g), n


def _dense_adj(edge_index, n):
    a = torch.zeros(n, n)
    a[edge_index[0], edge_index[1]] = 1
    a = ((a + a.t()) > 0).float()
    a.fill_diagonal_(0)
    return a


def test_from_edge_index_cleans_duplicates_self_loops_and_symmetrises():
    ei = torch.tensor([[0, 0, 1, 2, 2, 3], [1, 1, 0, 2, 3, 0]])
    g = CSRGraph.from_edge_index(ei, 4)
    dense = g.to_torch().to_dense()
    expected = _dense_adj(ei, 4)
    assert torch.equal(dense, expected)
    assert g.symmetric
    assert g.degree().tolist() == [2, 1, 1, 2]
    # rows sorted
    for i in range(4):
        row = g.col[g.rowptr[i]:g.rowptr[i + 1]]
        assert torch.equal(row, row.sort().values)


def test_directed_graph_keeps_direction():
    g = CSRGraph.from_edge_index(np.array([[0, 1], [1, 2]]), 3, symmetrize=False)
    assert g.to_torch().to_dense().tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert not g.symmetric
    assert torch.equal(g.transpose().to_torch().to_dense(), g.to_torch().to_dense().t())


@pytest.mark.parametrize("bad, msg", [
    (np.array([[0, 5], [1, 0]]), "outside"),
    (np.array([[0, -1], [1, 0]]), "negative"),
    (np.array([[0.0, 1.0], [1.0, 0.0]]), "integer"),
    (np.array([0, 1, 2]), "shape"),
])
def test_bad_edge_index_is_value_error(bad, msg):
    with pytest.raises(ValueError, match=msg):
        CSRGraph.from_edge_index(bad, 5)


def test_gcn_norm_matches_dense_reference_with_separate_diagonal():
    ei, n = _random_edges()
    g = CSRGraph.from_edge_index(ei, n)
    adj = gcn_norm(g)
    a = _dense_adj(ei, n) + torch.eye(n)
    dinv = a.sum(1).rsqrt()
    ref = dinv[:, None] * a * dinv[None, :]
    assert torch.allclose(adj.dense(), ref, atol=1e-6)
    # the off-diagonal part has no diagonal entries; the diagonal is 1/(deg+1)
    assert torch.all(adj.off.to_torch().to_dense().diagonal() == 0)
    assert torch.allclose(adj.diag, 1.0 / (g.degree().float() + 1))
    assert torch.allclose(adj.row_norm(), adj.off.to_torch().to_dense().norm(dim=1), atol=1e-6)


def test_mean_norm_rows_average_neighbours_and_isolated_rows_are_zero():
    ei = torch.tensor([[0, 0, 1], [1, 2, 2]])
    g = CSRGraph.from_edge_index(ei, 4)  # node 3 isolated
    adj = mean_norm(g)
    d = adj.dense()
    assert torch.allclose(d.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert adj.diag is None
    assert torch.allclose(adj.row_norm()[:3], 1 / g.degree()[:3].float().sqrt())
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize(g, "sym")
