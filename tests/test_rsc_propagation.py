"""SampledPropagation: exactness at full budget, caching, budget, schedule, checkpoints, trainer."""
import json
import math
import subprocess
import sys

import pytest
import torch

from approxgnn.graph import CSRGraph, normalize
from approxgnn.nn import ExactPropagation, build_model
from approxgnn.ops import SparseOperator
from approxgnn import csr_kernels
from approxgnn.rsc import RSCConfig, SampledPropagation
from approxgnn.rsc.budget import Allocation
from approxgnn.train import TrainConfig, run

from helpers import planted_dataset


def _setup(model="gcn", n=200, layers=3, hidden=16, seed=0, **rsc):
    torch.manual_seed(seed)
    data = planted_dataset(n=n, seed=seed)
    m = build_model(model, data.num_features, hidden, data.num_classes, layers, dropout=0.0)
    adj = normalize(CSRGraph.from_edge_index(data.edge_index, data.num_nodes), m.norm)
    op = SparseOperator.from_adjacency(adj)
    epochs = rsc.pop("epochs", 20)
    cfg = RSCConfig(**{"warmup": 1, "tune_interval": 5, "cache_interval": 3, **rsc})
    prop = SampledPropagation(op, adj.row_norm(), m.spmm_widths(), cfg, epochs=epochs)
    x = torch.as_tensor(data.x)
    y = torch.as_tensor(data.y)
    mask = torch.as_tensor(data.train_mask)
    return m, prop, ExactPropagation(op), x, y, mask


def _grads(model, prop, x, y, mask):
    model.zero_grad(set_to_none=True)
    out = model(x, prop)
    torch.nn.functional.cross_entropy(out[mask], y[mask]).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("model", ["gcn", "sage", "gcn2"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("selection", ["topk", "poisson"])
def test_uncapped_allowance_gives_exact_gradients(model, backend, selection, monkeypatch):
    """The sampled kernels with every row allowed reproduce the exact backward (C < 1 path)."""
    if backend == "torch":  # the device-agnostic path (what CUDA tensors take)
        monkeypatch.setattr(csr_kernels, "use_numba", lambda t: False)
    m, prop, exact, x, y, mask = _setup(model, budget=0.99, selection=selection, cache_interval=1)
    for epoch in range(4):  # warm-up (exact + statistics), then approximate with uncapped layers
        prop.on_epoch_start(epoch, 20)
        for s in prop.samplers.values():
            if s.alloc is not None:
                s.set_allocation(Allocation(1.0, s.adj.num_nodes, prop.nnz))
        got = _grads(m, prop, x, y, mask)
        ref = _grads(m, exact, x, y, mask)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert prop.phase == "approx"
    assert all(s.counters["approx_steps"] == 3 for s in prop.samplers.values())


@pytest.mark.parametrize("model", ["gcn", "sage", "gcn2"])
def test_full_budget_trains_bit_identically_to_exact(model, one_torch_thread):
    """C = 1 with dropout 0.5 and Adam steps over many epochs: the very same parameters as exact.

    Regression: C = 1 used to run the sampled path with non-zero allowances taken from the last
    statistics, so rows whose gradient dropout had made non-zero since were cut (2.5e-2 drift
    after 30 Cora steps)."""
    data = planted_dataset(n=240)

    def train(engine):
        cfg = TrainConfig(dataset="planted", model=model, engine=engine, hidden=16, layers=3, epochs=12,
                          dropout=0.5, progress=False, rsc=RSCConfig(budget=1.0, warmup=1, tune_interval=2))
        return run(cfg, data)

    a, b = train("exact"), train("rsc")
    assert [c["loss"] for c in a["curve"]] == [c["loss"] for c in b["curve"]]
    for k, v in a["best_model"].items():
        assert torch.equal(v, b["best_model"][k]), k


@pytest.mark.parametrize("model", ["gcn", "sage", "gcn2"])
@pytest.mark.parametrize("selection", ["topk", "poisson"])
def test_flops_kept_match_budget_during_training_with_dropout(model, selection, one_torch_thread):
    """With dropout on and optimiser steps, every approximate step keeps C of the backward FLOPs.

    Regression: SAGE at C = 0.3 kept 0.21, because the allowance of layers the greedy did not
    shrink came from the statistics' non-zero rows, which dropout and ReLU change every step."""
    from approxgnn.train import build_trainer

    data = planted_dataset(n=600, degree=12)
    budget = 0.3
    # precompute off: all three layers budgeted (with GCN's layer 0 precomputed, two layers make the
    # Poisson mean too noisy for a 1 % check over 28 steps; test_precompute covers that path)
    cfg = TrainConfig(dataset="planted", model=model, engine="rsc", hidden=32, layers=3, epochs=40, dropout=0.5,
                      progress=False, precompute="off", rsc=RSCConfig(budget=budget, warmup=2, tune_interval=5, cache_interval=1,
                                                    selection=selection))
    tr = build_trainer(cfg, data)
    prop = tr.prop
    total = prop.nnz * sum(prop.widths.values())
    kept = []
    for epoch in range(30):
        tr.train_epoch(epoch)
        if prop.phase == "approx":
            kept.append(sum(s.slice.t.nnz * s.width for s in prop.samplers.values()) / total)
    assert len(kept) == 28
    mean = sum(kept) / len(kept)
    if selection == "topk":  # a hard bound, filled to within one row per layer
        assert all(k <= budget * 1.001 for k in kept)
        assert mean >= budget * 0.99, kept
    else:  # Poisson: the budget holds in expectation
        assert abs(mean - budget) <= 0.01 * budget, kept


def test_sage_layer0_is_not_sampled():
    m, prop, *_ = _setup("sage")
    assert set(prop.samplers) == {1, 2}
    assert prop.widths == {1: 16, 2: 16}  # the SpMM width is the *input* width of the layer


def test_cache_reuse_skips_resampling_and_budget_holds():
    m, prop, exact, x, y, mask = _setup("gcn", budget=0.3, cache_interval=3, tune_interval=100, selection="topk")
    slices = []
    for epoch in range(11):  # 1 warm-up + 10 approximate steps
        prop.on_epoch_start(epoch, 20)
        _grads(m, prop, x, y, mask)
        slices.append({l: s.slice for l, s in prop.samplers.items()})
        kept = sum(s.slice.t.nnz * s.width for s in prop.samplers.values() if s.slice is not None)
        assert kept <= 0.3 * prop.nnz * sum(prop.widths.values())
    for s in prop.samplers.values():
        assert s.counters["resamples"] == 4  # steps 1, 4, 7, 10
        assert s.counters["cache_hits"] == 6
    l0 = next(iter(prop.samplers))
    assert slices[1][l0] is slices[2][l0] is slices[3][l0]
    assert slices[4][l0] is not slices[3][l0]
    st = prop.stats()
    assert st["resamples"] == 4 * len(prop.samplers) and st["flops_kept"] <= 0.3
    json.dumps(st)  # result.json must be able to hold it


def test_sampled_gradients_differ_then_switch_makes_later_epochs_exact():
    m, prop, exact, x, y, mask = _setup("gcn", budget=0.1, epochs=10, switch_time=0.5)
    for epoch in range(10):
        prop.on_epoch_start(epoch, 10)
        got = _grads(m, prop, x, y, mask)
        ref = _grads(m, exact, x, y, mask)
        same = all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(got, ref))
        if 1 <= epoch < 5:
            assert prop.phase == "approx" and not same
        elif epoch >= 5:
            assert prop.phase == "exact" and same
            assert all(s.slice is None for s in prop.samplers.values())


def test_two_models_share_no_state():
    # Model 2 trains interleaved with model 1, model 3 (its twin) alone: were any sampler state
    # or random stream shared, model 1's draws would change model 2's samples and gradients.
    m1, p1, _, x, y, mask = _setup("gcn", budget=0.2, selection="importance")
    m2, p2, *_ = _setup("gcn", budget=0.2, selection="importance")
    m3, p3, *_ = _setup("gcn", budget=0.2, selection="importance")
    alone = []
    for epoch in range(6):
        p3.on_epoch_start(epoch, 20)
        alone.append(_grads(m3, p3, x, y, mask))
    for epoch in range(6):
        p1.on_epoch_start(epoch, 20), p2.on_epoch_start(epoch, 20)
        _grads(m1, p1, x, y, mask)
        for g2, g3 in zip(_grads(m2, p2, x, y, mask), alone[epoch]):
            torch.testing.assert_close(g2, g3, rtol=0, atol=0)
    assert all(s.counters["approx_steps"] == 5 for s in p1.samplers.values())


@pytest.mark.parametrize("selection", ["topk", "importance"])
def test_state_dict_resume_rebuilds_identical_slices(selection):
    m, prop, _, x, y, mask = _setup("gcn", budget=0.3, selection=selection, cache_interval=4)
    for epoch in range(4):
        prop.on_epoch_start(epoch, 20)
        _grads(m, prop, x, y, mask)
    state = prop.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # checkpoints are loaded this way
    m2, prop2, *_ = _setup("gcn", budget=0.3, selection=selection, cache_interval=4)
    m2.load_state_dict(m.state_dict())
    prop2.load_state_dict(state)
    for l in prop.samplers:
        assert torch.equal(prop.samplers[l].slice.t.col, prop2.samplers[l].slice.t.col)
        assert torch.equal(prop.samplers[l].slice.t.value, prop2.samplers[l].slice.t.value)
    for epoch in range(4, 9):  # a cache hit, then a resample that draws from the restored RNG
        prop.on_epoch_start(epoch, 20)
        prop2.on_epoch_start(epoch, 20)
        for a, b in zip(_grads(m, prop, x, y, mask), _grads(m2, prop2, x, y, mask)):
            assert torch.equal(a, b)
    assert prop.stats()["resamples"] == prop2.stats()["resamples"]


def test_validation_guard_switches_early():
    m, prop, _, x, y, mask = _setup("gcn", budget=0.2, val_guard=True, val_patience=2, val_tolerance=0.5)
    vals = [0.5, 0.6, 0.7, 0.7, 0.69, 0.8]
    phases = []
    for epoch, v in enumerate(vals):
        prop.on_epoch_start(epoch, 20)
        phases.append(prop.phase)
        prop.on_epoch_end(epoch, v)
    # Epochs 3 and 4 bring no improvement (patience 2): exact from epoch 5 on.
    assert phases == ["warmup", "approx", "approx", "approx", "approx", "exact"]
    assert prop.stats()["detail"]["guard_epoch"] == 5
    m, prop, *_ = _setup("gcn", val_guard=True, val_patience=50, val_tolerance=0.05)
    for epoch, v in enumerate([0.5, 0.8, 0.7]):
        prop.on_epoch_start(epoch, 20)
        prop.on_epoch_end(epoch, v)
    assert prop.schedule.guard_epoch == 3  # fell 0.1 below the best: drop trigger


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": 0.0}, "budget"), ({"budget": 1.5}, "budget"), ({"budget": math.nan}, "budget"),
    ({"switch_time": -0.1}, "switch_time"), ({"switch_time": 1.2}, "switch_time"),
    ({"cache_interval": -1}, "cache_interval"), ({"tune_interval": 0}, "tune_interval"),
    ({"tune_interval": -3}, "tune_interval"), ({"cache_interval": 2.5}, "integer"), ({"budget": "0.1"}, "number"),
    ({"warmup": -2}, "warmup"), ({"allocation": "best"}, "allocation"), ({"selection": "random"}, "selection"),
])
def test_bad_config_fails_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSCConfig(**kwargs)
    cfg = RSCConfig()
    for k, v in kwargs.items():
        setattr(cfg, k, v)  # mutated after construction: the trainer's config check still catches it
    with pytest.raises(ValueError, match=match):
        TrainConfig(engine="rsc", rsc=cfg)


def test_cli_rejects_bad_budget_with_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "approxgnn.cli", "train", "--engine", "rsc", "--budget", "1.5",
                        "--dataset", "synthetic", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 2 and "budget" in r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model", ["gcn", "sage", "gcn2"])
def test_trainer_runs_rsc_and_records_stats(tmp_path, model, one_torch_thread):
    data = planted_dataset()
    cfg = TrainConfig(dataset="planted", model=model, engine="rsc", hidden=16, layers=3, epochs=30, lr=0.02,
                      out=str(tmp_path), progress=False,
                      rsc=RSCConfig(budget=0.2, warmup=2, tune_interval=10, cache_interval=5))
    result = run(cfg, data)
    assert result["test"] > 0.6
    saved = json.loads((tmp_path / "result.json").read_text())
    st = saved["engine_stats"]
    assert st["rsc"] == "exact" and st["detail"]["switch_epoch"] == 24 and st["detail"]["tunes"] == 3
    layers = st["detail"]["layers"]
    assert all(v["approx_steps"] == 22 for v in layers.values())
    kept = sum(v["nnz_kept_frac_mean"] * v["width"] for v in layers.values())
    # The default Poisson selection keeps the budget in expectation: a few % either way per run.
    assert 0 < kept <= 0.2 * 1.05 * sum(v["width"] for v in layers.values())


def test_interrupted_run_resumes_identically(tmp_path, one_torch_thread):
    from approxgnn.train import build_trainer, fit, read_checkpoint

    data = planted_dataset(n=150)
    rsc = RSCConfig(budget=0.2, warmup=1, tune_interval=3, cache_interval=4)

    def cfg(out):
        return TrainConfig(dataset="planted", model="gcn", engine="rsc", hidden=8, layers=3, epochs=12,
                           checkpoint_every=5, out=str(out), progress=False, rsc=rsc)

    full = fit(build_trainer(cfg(tmp_path / "a"), data))

    class Crash(Exception):
        pass

    tr = build_trainer(cfg(tmp_path / "b"), data)
    step = tr.train_epoch
    tr.train_epoch = lambda e: (_ for _ in ()).throw(Crash()) if e == 7 else step(e)  # dies after the epoch-5 checkpoint
    with pytest.raises(Crash):
        fit(tr)
    resumed = fit(build_trainer(cfg(tmp_path / "b"), data), resume_state=read_checkpoint(tmp_path / "b"))
    assert [c["loss"] for c in resumed["curve"]] == [c["loss"] for c in full["curve"]]
    assert resumed["engine_stats"]["resamples"] == full["engine_stats"]["resamples"]
