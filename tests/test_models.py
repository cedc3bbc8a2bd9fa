import pytest
import torch

from approxgnn.graph import CSRGraph, normalize
from approxgnn.nn import GCN, GCNII, SAGE, ExactPropagation, build_model
from approxgnn.ops import SparseOperator


def _prop(kind, n=40):
    ei = torch.randint(0, n, (2, 160), generator=torch.Generator().manual_seed(1))
    adj = normalize(CSRGraph.from_edge_index(ei, n), kind)
    return adj, ExactPropagation(SparseOperator.from_adjacency(adj))


@pytest.mark.parametrize("cls", [GCN, SAGE, GCNII])
@pytest.mark.parametrize("bn", [False, True])
def test_forward_shapes_and_gradients(cls, bn):
    torch.manual_seed(0)
    model = cls(8, 16, 3, num_layers=3, dropout=0.2, batch_norm=bn)
    _, prop = _prop(model.norm)
    out = model(torch.randn(40, 8), prop)
    assert out.shape == (40, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gcn_matches_dense_formula():
    torch.manual_seed(0)
    model = GCN(5, 6, 2, num_layers=2, dropout=0.0).eval()
    adj, prop = _prop("gcn")
    x = torch.randn(40, 5)
    a = adj.dense()
    h = torch.relu(a @ model.lins[0](x))
    ref = a @ model.lins[1](h)
    assert torch.allclose(model(x, prop), ref, atol=1e-5)


def test_sage_matches_dense_formula():
    torch.manual_seed(0)
    model = SAGE(5, 6, 2, num_layers=1, dropout=0.0).eval()
    adj, prop = _prop("mean")
    x = torch.randn(40, 5)
    ref = model.lins_self[0](x) + model.lins_neigh[0](adj.dense() @ x)
    assert torch.allclose(model(x, prop), ref, atol=1e-5)


def test_spmm_widths_follow_where_propagation_runs():
    assert GCN(10, 32, 4, num_layers=3).spmm_widths() == {0: 32, 1: 32, 2: 4}
    assert SAGE(10, 32, 4, num_layers=3).spmm_widths() == {1: 32, 2: 32}  # layer 0: no backward SpMM
    assert GCNII(10, 32, 4, num_layers=2).spmm_widths() == {0: 32, 1: 32}


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gat", 4, 4, 2, 2, 0.1)
    with pytest.raises(ValueError, match="num_layers"):
        GCN(4, 4, 2, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        SAGE(4, 4, 2, dropout=1.0)
