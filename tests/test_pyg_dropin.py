"""approximate() as real PyG scripts use a model: explain, hooks, copies, graphs built in forward, deep models.

Every model is written here; each check compares with the plain PyG model or with the engine's own
counters, never with a figure the code under test produced.
"""
from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_geometric", reason="torch_geometric not installed (pip install 'approxgnn[pyg]')")

from torch_geometric.explain import Explainer, GNNExplainer  # noqa: E402
from torch_geometric.nn import DirGNNConv, GCN2Conv, GCNConv, SAGEConv  # noqa: E402

from approxgnn.pyg import approximate, engine_of  # noqa: E402
from approxgnn.rsc import propagation as rsc_propagation  # noqa: E402

N, F_IN, C = 150, 10, 4
SAMPLE_ALL = dict(min_layer_flops=0)  # these graphs are tiny: sample every layer anyway


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, N, (2, 6 * N), generator=g), torch.randn(N, F_IN, generator=g), \
        torch.randint(0, C, (N,), generator=g)


class TwoGCN(nn.Module):
    def __init__(self, hidden: int = 16, p: float = 0.5) -> None:
        super().__init__()
        self.conv1, self.conv2, self.p = GCNConv(F_IN, hidden), GCNConv(hidden, C), p

    def forward(self, x, edge_index, edge_weight=None):
        h = F.relu(self.conv1(F.dropout(x, self.p, self.training), edge_index, edge_weight))
        return self.conv2(F.dropout(h, self.p, self.training), edge_index, edge_weight)


def step(model: nn.Module, opt, x, ei, y, **kw) -> dict[str, torch.Tensor]:
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x, ei, **kw), y).backward()
    opt.step()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def pair(seed: int = 0, **options):
    torch.manual_seed(seed)
    plain = TwoGCN()
    return plain, approximate(copy.deepcopy(plain), epochs=20, warmup=1, **{**SAMPLE_ALL, **options})


def sampled(model: nn.Module) -> int:
    """Backward products that went through RSC's sampled path so far."""
    return sum(layer["approx_steps"] for e in engine_of(model).stats()["engines"].values()
               for layer in e["detail"]["layers"].values())


def explain(model: nn.Module, x, ei):
    torch.manual_seed(3)
    explainer = Explainer(model, GNNExplainer(epochs=20), explanation_type="model", node_mask_type="attributes",
                          edge_mask_type="object", model_config=dict(mode="multiclass_classification",
                                                                     task_level="node", return_type="raw"))
    return explainer(x, ei, index=7)


def test_explainer_runs_pygs_propagate_and_leaves_a_clean_model() -> None:
    ei, x, y = data()
    plain, model = pair()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        step(model, opt, x, ei, y)
    plain.load_state_dict(model.state_dict())
    got, want = explain(model, x, ei), explain(plain, x, ei)
    assert got.edge_mask.abs().sum() > 0  # the edge mask received gradients through message passing
    torch.testing.assert_close(got.edge_mask, want.edge_mask)
    torch.testing.assert_close(got.node_mask, want.node_mask)
    assert engine_of(model).stats()["fallbacks"]["conv1: explain"] > 0
    assert model.conv1.explain is not True and model.conv1._edge_mask is None
    plain.load_state_dict(model.state_dict(), strict=True)
    before = sampled(model)
    for _ in range(3):  # explanation over: training samples again
        step(model, opt, x, ei, y)
    assert sampled(model) > before


def test_a_failed_explainer_does_not_break_strict_loading() -> None:
    ei, x, y = data(1)
    plain, model = pair(1)

    class Breaks(nn.Module):  # the explainer's third forward fails, after the masks were set
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x, ei):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("interrupted")
            return self.inner(x, ei)

    with pytest.raises(RuntimeError, match="interrupted"):
        explain(Breaks(model), x, ei)
    assert isinstance(model.conv1._parameters.get("_edge_mask"), nn.Parameter)  # PyG left its mask behind
    assert "conv1._edge_mask" not in model.state_dict()
    plain.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert isinstance(model.conv1._parameters.get("_edge_mask"), nn.Parameter)  # untouched by the load


def test_propagate_and_message_hooks_fire_as_on_the_plain_conv() -> None:
    ei, x, y = data(2)
    plain, model = pair(2)
    fired = {"plain": 0, "approx": 0}

    def counting(key):
        def hook(module, inputs, output):
            fired[key] += 1
            return output * 2.0  # a hook may change the result
        return hook

    def scale_messages(module, inputs):
        (kwargs,) = inputs
        return ({**kwargs, "x_j": kwargs["x_j"] * 0.5},)

    handles = [plain.conv2.register_propagate_forward_hook(counting("plain")),
               model.conv2.register_propagate_forward_hook(counting("approx")),
               plain.conv1.register_message_forward_pre_hook(scale_messages),
               model.conv1.register_message_forward_pre_hook(scale_messages)]
    opt_p, opt_a = torch.optim.SGD(plain.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)
    rec = []
    for _ in range(2):
        torch.manual_seed(5)
        gp = step(plain, opt_p, x, ei, y)
        torch.manual_seed(5)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ga = step(model, opt_a, x, ei, y)
        rec += [(str(w.message), w.filename) for w in seen]
        for k in gp:
            torch.testing.assert_close(ga[k], gp[k], msg=k)
    assert fired == {"plain": 2, "approx": 2}
    hooks = [r for r in rec if "runs PyG's own propagate while hooks" in r[0]]
    assert len(hooks) == 2 and {f for _, f in hooks} == {__file__}  # once per layer, at the model's line
    assert any(m.startswith("approximate(): conv2 (GCNConv)") and "(propagate_hooks)" in m for m, _ in hooks)
    assert any(m.startswith("approximate(): conv1 (GCNConv)") and "(message_pre_hooks)" in m for m, _ in hooks)
    for h in handles:
        h.remove()
    before = sampled(model)
    for _ in range(3):
        step(model, opt_a, x, ei, y)
    assert sampled(model) > before and fired["approx"] == 2


def test_decomposed_layers_and_trainable_edge_weights_follow_pyg() -> None:
    ei, x, y = data(3)
    plain, model = pair(3)
    model.conv2.decomposed_layers = plain.conv2.decomposed_layers = 2
    weight = torch.rand(ei.size(1), requires_grad=True)
    torch.manual_seed(0)
    gp = step(plain, torch.optim.SGD(plain.parameters(), lr=0.1), x, ei, y, edge_weight=weight)
    wp, weight.grad = weight.grad.clone(), None
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ga = step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, ei, y, edge_weight=weight)
    for k in gp:
        torch.testing.assert_close(ga[k], gp[k], msg=k)
    torch.testing.assert_close(weight.grad, wp)  # the edge weights' gradient is PyG's
    fb = engine_of(model).stats()["fallbacks"]
    assert fb == {"conv1: edge_weight requires grad": 1, "conv2: decomposed_layers > 1": 1}


def test_torch_compile_runs_pygs_forward() -> None:
    ei, x, y = data(4)
    plain, model = pair(4, budget=0.3)
    model.eval(), plain.eval()
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x, ei), plain(x, ei))
    compiled.train()
    out = compiled(x, ei)
    F.cross_entropy(out, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert engine_of(model).stats()["engines"] == {}  # nothing was sampled inside the compiled graph


def train_then_eval(model: nn.Module, x, ei, y, steps: int = 4):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.manual_seed(0)
    for _ in range(steps):
        step(model, opt, x, ei, y)
    model.eval()
    with torch.no_grad():
        model(x, ei)
    return opt


def test_deepcopy_after_forward_continues_alike_and_shares_nothing() -> None:
    ei, x, y = data(5)
    plain, model = pair(5, budget=0.3, cache_interval=3)
    opt = train_then_eval(model, x, ei, y)
    assert sampled(model) > 0
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    twin_opt.load_state_dict(opt.state_dict())
    assert list(twin.state_dict()) == list(plain.state_dict())
    torch.manual_seed(9)
    g_model = step(model, opt, x, ei, y)
    torch.manual_seed(9)
    g_twin = step(twin, twin_opt, x, ei, y)
    for k in g_model:  # the copy samples the same rows, from the same statistics and generators
        torch.testing.assert_close(g_twin[k], g_model[k], msg=k)
    ops = {id(e.op) for e in engine_of(model).graphs.entries()}
    assert ops.isdisjoint(id(e.op) for e in engine_of(twin).graphs.entries())
    frozen = engine_of(model).stats()
    for _ in range(3):
        step(twin, twin_opt, x, ei, y)
    assert engine_of(model).stats() == frozen and engine_of(twin).epoch == frozen["epoch"] + 3


def test_pickled_model_round_trips() -> None:
    ei, x, y = data(6)
    _, model = pair(6)
    train_then_eval(model, x, ei, y)
    for restore in (lambda m: pickle.loads(pickle.dumps(m)),
                    lambda m: torch.load(io.BytesIO(_saved(m)), weights_only=False)):
        back = restore(model)
        back.eval()
        with torch.no_grad():
            torch.testing.assert_close(back(x, ei), model(x, ei))
        assert engine_of(back).epoch == engine_of(model).epoch
        before = sampled(back)
        train_then_eval(back, x, ei, y, steps=2)
        assert sampled(back) > before


def _saved(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


class DirSAGE(nn.Module):
    """Directed message passing: DirGNNConv builds ``edge_index.flip([0])`` on every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(F_IN, 16)
        self.dir = DirGNNConv(SAGEConv(16, 16), alpha=0.5)
        self.out = nn.Linear(16, C)

    def forward(self, x, edge_index):
        return self.out(F.relu(self.dir(F.relu(self.lin(x)), edge_index)))


def test_adjacency_built_in_forward_reuses_its_operator_and_samples() -> None:
    ei, x, y = data(7)
    model = approximate(DirSAGE(), epochs=20, warmup=1, budget=0.3, **SAMPLE_ALL)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither direction falls back to exact
        for _ in range(5):
            grads = step(model, opt, x, ei, y)
    st = engine_of(model).stats()
    assert st["graph_builds"] == 2  # one operator per direction, over five epochs
    assert sorted(st["engines"]) == ["mean", "mean/graph1"]
    assert all(e["resamples"] > 0 for e in st["engines"].values())
    assert grads["dir.conv_out.lin_l.weight"].abs().sum() > 0


def test_a_graph_first_seen_later_names_the_layer_at_the_users_line() -> None:
    ei, x, y = data(8)
    ei2, _, _ = data(9)
    _, model = pair(8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    step(model, opt, x, ei, y)
    with pytest.warns(UserWarning, match=r"conv1 \(GCNConv\) trains on a graph first seen after") as rec:
        step(model, opt, x, ei2, y)
    later = [w for w in rec if "first seen" in str(w.message)]
    assert len(later) == 2 and {w.filename for w in later} == {__file__}  # conv1 and conv2, at the model's lines
    assert engine_of(model).stats()["unbound_forwards"] == {"conv1": 1, "conv2": 1}


class GCNII(nn.Module):
    def __init__(self, layers: int, hidden: int = 16) -> None:
        super().__init__()
        self.lin_in, self.lin_out = nn.Linear(F_IN, hidden), nn.Linear(hidden, C)
        self.convs = nn.ModuleList(GCN2Conv(hidden, alpha=0.1, theta=0.5, layer=i + 1) for i in range(layers))

    def forward(self, x, edge_index):
        x = x0 = F.relu(self.lin_in(F.dropout(x, 0.5, self.training)))
        for conv in self.convs:
            x = F.relu(conv(F.dropout(x, 0.5, self.training), x0, edge_index))
        return self.lin_out(x)


def test_64_layer_gcnii_reallocation_cost_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every re-allocation of 64 layers makes a bounded number of tensor operations (the old greedy
    made one Python step per layer per 2 % of rows: hundreds of thousands)."""
    counts: list[int] = []
    real = rsc_propagation.allocate_budget

    def counted(*a, **kw):
        with _CountOps() as c:
            out = real(*a, **kw)
        counts.append(c.calls)
        return out

    monkeypatch.setattr(rsc_propagation, "allocate_budget", counted)
    ei, x, y = data(10)
    torch.manual_seed(0)
    model = approximate(GCNII(64), epochs=8, warmup=1, tune_interval=2, budget=0.3, **SAMPLE_ALL)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(6):
        step(model, opt, x, ei, y)
    st = engine_of(model).stats()
    (eng,) = st["engines"].values()
    assert eng["detail"]["tunes"] == len(counts) == 3 and len(eng["detail"]["layers"]) == 64
    assert max(counts) <= 20 * 64 + 150
    assert st["tune_time_s"] > 0 and eng["resamples"] > 0


def test_layers_too_small_to_pay_stay_exact() -> None:
    ei, x, y = data(11)
    torch.manual_seed(0)
    plain = GCNII(4)
    model = approximate(copy.deepcopy(plain), epochs=8, warmup=1, budget=0.3)  # the default min_layer_flops
    opt_p, opt_a = torch.optim.SGD(plain.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        torch.manual_seed(1)
        gp = step(plain, opt_p, x, ei, y)
        torch.manual_seed(1)
        ga = step(model, opt_a, x, ei, y)
        for k in gp:
            torch.testing.assert_close(ga[k], gp[k], rtol=1e-4, atol=1e-6, msg=k)
    (eng,) = engine_of(model).stats()["engines"].values()
    assert eng["detail"]["exact_small_layers"] == [0, 1, 2, 3] and eng["detail"]["layers"] == {}
    assert eng["resamples"] == 0 and eng["detail"]["tunes"] == 0


class _CountOps(torch.overrides.TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_bipartite_input_runs_pygs_forward_and_is_counted() -> None:
    ei, x, _ = data(12)
    torch.manual_seed(0)
    plain = SAGEConv((F_IN, 6), 8)
    holder = approximate(nn.ModuleDict({"sage": copy.deepcopy(plain)}), epochs=5, **SAMPLE_ALL)
    x_dst = torch.randn(N, 6)
    torch.testing.assert_close(holder["sage"]((x, x_dst), ei), plain((x, x_dst), ei))
    assert engine_of(holder).stats()["fallbacks"] == {"sage: input other than x [N, F] with an [N, N] graph": 1}
