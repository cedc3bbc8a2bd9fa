"""approximate(): a PyG user's model with RSC's sampled backward, checked against PyG itself."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_geometric", reason="torch_geometric not installed (pip install 'approxgnn[pyg]')")

from torch_geometric.nn import GATConv, GCN2Conv, GCNConv, SAGEConv  # noqa: E402
from torch_geometric.nn.conv.gcn_conv import gcn_norm  # noqa: E402
from torch_geometric.nn.models import GCN, GraphSAGE  # noqa: E402
from torch_geometric.utils import to_dense_adj, to_torch_csr_tensor  # noqa: E402

from approxgnn.pyg import approximate, engine_of  # noqa: E402
from approxgnn.rsc.spmm import build_slice, sampled_backward  # noqa: E402

N, F_IN, C = 120, 12, 4


class GCNII(nn.Module):
    """A hand-written GCNII, as in PyG's examples (one layer with separate weights)."""

    def __init__(self, hidden: int = 16, layers: int = 3) -> None:
        super().__init__()
        self.lin_in, self.lin_out = nn.Linear(F_IN, hidden), nn.Linear(hidden, C)
        self.convs = nn.ModuleList(GCN2Conv(hidden, alpha=0.1, theta=0.5, layer=i + 1, shared_weights=i != 1)
                                   for i in range(layers))

    def forward(self, x, edge_index):
        x = x0 = F.relu(self.lin_in(F.dropout(x, 0.5, self.training)))
        for conv in self.convs:
            x = F.relu(conv(F.dropout(x, 0.5, self.training), x0, edge_index))
        return self.lin_out(x)


def graph(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A directed multigraph with self-loops (PyG keeps all three as given), features and labels."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, N, (2, 6 * N), generator=g)
    return ei, torch.randn(N, F_IN, generator=g), torch.randint(0, C, (N,), generator=g)


MODELS = {
    "gcn": lambda: GCN(F_IN, 16, 2, C, dropout=0.5),
    "sage": lambda: GraphSAGE(F_IN, 16, 3, C, dropout=0.5),
    "gcn2": GCNII,
}


def adjacency(kind: str, ei: torch.Tensor):
    if kind == "edge_index":
        return ei
    if kind == "adj_t":  # PyG's transposed torch sparse CSR (rows are targets)
        return to_torch_csr_tensor(ei.flip(0), size=(N, N))
    sparse = pytest.importorskip("torch_sparse", reason="SparseTensor needs torch_sparse")
    return sparse.SparseTensor(row=ei[1], col=ei[0], sparse_sizes=(N, N))


def train_steps(model: nn.Module, adj, x, y, steps: int, seed: int = 7) -> list[tuple[torch.Tensor, dict]]:
    """Adam steps with dropout on; the outputs and parameter gradients of each step."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.manual_seed(seed)
    out = []
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        o = model(x, adj)
        F.cross_entropy(o, y).backward()
        out.append((o.detach().clone(), {k: p.grad.clone() for k, p in model.named_parameters()}))
        opt.step()
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind", ["edge_index", "adj_t", "SparseTensor"])
def test_budget_one_trains_like_the_plain_model(name: str, kind: str) -> None:
    ei, x, y = graph()
    adj = adjacency(kind, ei)
    torch.manual_seed(0)
    plain = MODELS[name]()
    wrapped = approximate(copy.deepcopy(plain), budget=1.0, epochs=4, warmup=1)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    for (o1, g1), (o2, g2) in zip(train_steps(plain, adj, x, y, 4), train_steps(wrapped, adj, x, y, 4)):
        torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
        assert g1.keys() == g2.keys()
        for k in g1:
            torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6, msg=k)
    assert engine_of(wrapped).stats()["epoch"] == 3
    # The trained weights load into the plain model and back.
    plain.load_state_dict(wrapped.state_dict())
    wrapped.load_state_dict(plain.state_dict())


def test_sampled_backward_is_rscs_product_on_the_kept_rows() -> None:
    """At C = 0.1 the gradient into GCNConv's aggregation is Σ_{i∈S} s_i Â_off[i,:]ᵀ G[i,:] + diag ⊙ G,
    with Â PyG's own normalisation and S, s the rows RSC kept."""
    ei, x, y = graph(1)
    torch.manual_seed(0)
    model = approximate(GCN(F_IN, 32, 2, C, dropout=0.5), budget=0.1, epochs=20, warmup=1, min_layer_flops=0)
    conv = model.convs[1]
    seen: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(module, inputs, output) -> None:  # the gradient arriving at this output
            output.register_hook(lambda g: seen.__setitem__(key, g.clone()))
        return hook

    conv.lin.register_forward_hook(keep("dh"))  # ∂L/∂(XW): what the aggregation's backward returns
    conv.register_forward_hook(keep("G"))  # ∂L/∂(ÂXW + b) = G
    for _ in range(2):  # epoch 0 gathers statistics exactly; epoch 1 samples
        model.train()
        F.cross_entropy(model(x, ei), y).backward()
    eng = next(iter(engine_of(model).bound.values())).engine
    sampler = eng.samplers[1]
    assert eng.phase == "approx" and 0 < sampler.slice.rows < N
    norm_ei, w = gcn_norm(ei, None, N, add_self_loops=True)
    dense = to_dense_adj(norm_ei.flip(0), edge_attr=w, max_num_nodes=N)[0]  # rows are targets
    diag = dense.diagonal().clone()
    off = dense - torch.diag(diag)
    rows, scale = sampler.slice.index, sampler.slice.scale
    expected = (off[rows] * scale[:, None]).t() @ seen["G"][rows] + diag[:, None] * seen["G"]
    torch.testing.assert_close(seen["dh"], expected, rtol=1e-4, atol=1e-6)
    ours = sampled_backward(build_slice(eng.adj, rows, scale), seen["G"], eng.op.diag)
    torch.testing.assert_close(seen["dh"], ours)
    assert not torch.allclose(seen["dh"], dense.t() @ seen["G"], atol=1e-6)  # really sampled


def test_schedule_advances_with_the_users_loop_and_eval_is_exact() -> None:
    ei, x, y = graph(2)
    torch.manual_seed(0)
    plain = GraphSAGE(F_IN, 16, 2, C, dropout=0.5)
    model = approximate(copy.deepcopy(plain), budget=0.2, epochs=10, warmup=2, switch_time=0.5,
                        min_layer_flops=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    phases = []
    for _ in range(7):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x, ei), y).backward()
        opt.step()
        phases.append(engine_of(model).stats()["engines"]["mean"]["rsc"])
        model.eval()
        with torch.no_grad():  # evaluation neither counts as an epoch nor samples
            plain.load_state_dict(model.state_dict())
            plain.eval()
            torch.testing.assert_close(model(x, ei), plain(x, ei), rtol=1e-5, atol=1e-5)
    assert phases == ["warmup"] * 2 + ["approx"] * 3 + ["exact"] * 2
    st = engine_of(model).stats()
    assert st["epoch"] == 6 and st["engines"]["mean"]["resamples"] > 0
    assert sorted(st["engines"]["mean"]["detail"]["layers"]) == [1]  # layer 0's input needs no gradient
    engine_of(model).on_epoch_start(2)  # an explicit call takes over the count
    model.train()
    model(x, ei)
    assert engine_of(model).epoch == 2 and engine_of(model).stats()["engines"]["mean"]["rsc"] == "approx"


def test_the_operator_is_built_once_per_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    from approxgnn.pyg import adjacency as adj_mod

    calls = []
    real = adj_mod.normalized_adjacency
    monkeypatch.setattr(adj_mod, "normalized_adjacency", lambda *a: calls.append(1) or real(*a))
    ei, x, y = graph(3)
    model = approximate(GCN(F_IN, 16, 3, C), epochs=5)
    for _ in range(3):
        F.cross_entropy(model(x, ei), y).backward()
    assert len(calls) == 1  # three layers, three epochs, one normalisation
    ei2 = ei.clone()
    model.eval()
    model(x, ei2)
    assert len(calls) == 1  # the same graph in another tensor: found by content
    ei2[0, 0] = (ei2[0, 0] + 1) % N  # an in-place edit is a new graph
    model(x, ei2)
    assert len(calls) == 2
    model(x, ei)  # the original still finds its operator
    model(x, torch.cat([ei[:, 1:], ei[:, :1]], 1))  # the same edges in another order: another input
    assert len(calls) == 3 and engine_of(model).stats()["graph_builds"] == 3


def test_unsupported_layers_stay_exact_with_a_warning() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gat, self.gcn, self.sage_max = GATConv(F_IN, 8), GCNConv(8, 8), SAGEConv(8, C, aggr="max")

        def forward(self, x, ei):
            return self.sage_max(F.relu(self.gcn(F.relu(self.gat(x, ei)), ei)), ei)

    ei, x, y = graph(4)
    torch.manual_seed(0)
    plain = Mixed()
    with pytest.warns(UserWarning, match=r"stay exact: gat \(GATConv.*sage_max \(SAGEConv: aggr='max'\)"):
        model = approximate(copy.deepcopy(plain), epochs=3, budget=1.0)
    assert type(model.gcn).__name__ == "ApproxGCNConv" and type(model.sage_max) is SAGEConv
    torch.testing.assert_close(model(x, ei), plain(x, ei), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already"):
        approximate(model)
    with pytest.raises(TypeError, match="unknown RSC option.*budgett"):
        approximate(GCN(F_IN, 8, 2, C), budgett=0.5)


def test_float64_model_trains_through_the_sampled_backward() -> None:
    ei, x, y = graph(5)
    torch.manual_seed(0)
    model = approximate(GCN(F_IN, 16, 2, C, dropout=0.5).double(), budget=0.3, epochs=6, warmup=1,
                        min_layer_flops=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(4):
        opt.zero_grad()
        out = model(x.double(), ei)
        F.cross_entropy(out, y).backward()
        opt.step()
    assert out.dtype == torch.float64
    assert all(p.grad.dtype == torch.float64 and torch.isfinite(p.grad).all() for p in model.parameters())
    assert engine_of(model).stats()["engines"]["gcn(fill=1,self_loops=True)"]["resamples"] > 0


def test_engine_state_dict_resumes_the_same_sampling() -> None:
    ei, x, y = graph(6)
    torch.manual_seed(0)
    a = approximate(GCN(F_IN, 16, 2, C, dropout=0.0), budget=0.2, epochs=10, warmup=1, cache_interval=3,
                    min_layer_flops=0)
    train_steps(a, ei, x, y, 3)
    b = approximate(copy.deepcopy(GCN(F_IN, 16, 2, C, dropout=0.0)), budget=0.2, epochs=10, warmup=1,
                    cache_interval=3, min_layer_flops=0)
    b.load_state_dict(a.state_dict())
    engine_of(b).load_state_dict(engine_of(a).state_dict())
    (_, ga), = train_steps(a, ei, x, y, 1)
    (_, gb), = train_steps(b, ei, x, y, 1)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], msg=k)
    assert engine_of(b).epoch == engine_of(a).epoch == 3
    assert engine_of(b).stats()["engines"]["gcn(fill=1,self_loops=True)"]["cache_hits"] > 0


@pytest.mark.parametrize("arch", ["gcn", "sage"])
def test_user_loop_on_cora_matches_the_plain_model(shared_data, arch: str) -> None:
    """Three seeds, dropout on, the default budget and schedule: the mean test accuracy at the best
    validation epoch stays within 1 pp. GCN gets ``edge_index``; SAGE a torch CSR ``adj_t`` (PyG's
    scatter-mean over Cora's 1433 raw features would make this test slow)."""
    from approxgnn.datasets import load_dataset
    from approxgnn.pyg import to_pyg

    data = to_pyg(load_dataset("cora", root=shared_data))
    adj = data.edge_index if arch == "gcn" else to_torch_csr_tensor(data.edge_index.flip(0), size=(data.num_nodes,) * 2)
    epochs = 50
    accs: dict[bool, list[float]] = {False: [], True: []}
    for seed in range(3):
        for approx in (False, True):
            torch.manual_seed(seed)
            cls = GCN if arch == "gcn" else GraphSAGE
            model = cls(data.num_features, 32, 2, 7, dropout=0.5)
            if approx:
                model = approximate(model, epochs=epochs, min_layer_flops=0)  # Cora is below the default
            opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
            best_val, test = -1.0, 0.0
            for _ in range(epochs):
                model.train()
                opt.zero_grad()
                out = model(data.x, adj)
                F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
                opt.step()
                model.eval()
                with torch.no_grad():
                    pred = model(data.x, adj).argmax(1)
                val = float((pred == data.y)[data.val_mask].float().mean())
                if val > best_val:
                    best_val, test = val, float((pred == data.y)[data.test_mask].float().mean())
            accs[approx].append(test)
            if approx:
                st = engine_of(model).stats()
                assert st["epoch"] == epochs - 1 and next(iter(st["engines"].values()))["rsc"] == "exact"
    exact, approx = np.mean(accs[False]), np.mean(accs[True])
    assert exact > 0.7
    assert abs(approx - exact) <= 0.01, (accs, exact, approx)
