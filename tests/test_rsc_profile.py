"""RSC's public profiling hook (SampledPropagation.profile) and the trainer's exact-gradient probe,
on real training steps: dropout on, Adam steps, warm-up, approximate and exact phases."""
import json

import pytest
import torch

from approxgnn.graph import CSRGraph
from approxgnn.rsc import LayerProfile, RSCConfig, RSCProfile
from approxgnn.train import TrainConfig, build_trainer

from helpers import planted_dataset

EPOCHS = 10  # warm-up 0-1, approximate 2-7, exact 8-9 (switch_time 0.8)


def _trainer(budget=0.3, seed=0, engine="rsc"):
    cfg = TrainConfig(dataset="planted", model="gcn", engine=engine, hidden=16, layers=3, epochs=EPOCHS, dropout=0.5,
                      seed=seed, progress=False, precompute="off",
                      rsc=RSCConfig(budget=budget, warmup=2, tune_interval=100, cache_interval=2, selection="topk",
                                    switch_time=0.8))
    torch.manual_seed(seed)
    return build_trainer(cfg, planted_dataset(n=300, seed=seed))


def test_profile_follows_the_schedule_and_counts_what_happened():
    data = planted_dataset(n=300, seed=0)
    deg = CSRGraph.from_edge_index(data.edge_index, data.num_nodes).degree()  # counted apart from the engine
    tr = _trainer()
    first = tr.engine.profile()
    assert isinstance(first, RSCProfile) and first.phase == "exact" and not first.approximating
    seen = []
    for epoch in range(EPOCHS):
        tr.train_epoch(epoch)
        p = tr.engine.profile()
        seen.append(p)
        assert set(p.by_layer) == {0, 1, 2} and all(isinstance(lp, LayerProfile) for lp in p.by_layer.values())
        expect = "warmup" if epoch < 2 else "approx" if epoch < 8 else "exact"
        assert p.phase == expect and p.approximating == (expect == "approx")
        for lp in p.by_layer.values():
            assert lp.mode == expect
            if expect != "approx":
                assert lp.rows_kept is None and lp.kept_rows is None
                continue
            rows = lp.kept_rows
            assert lp.rows_kept == rows.numel() > 0
            assert bool((rows[1:] > rows[:-1]).all()) and 0 <= int(rows[0]) and int(rows[-1]) < data.num_nodes
            assert lp.nnz_kept == int(deg[rows].sum())  # the sample's non-zeros, from the graph itself
            assert lp.nnz_kept <= lp.max_nnz  # top-k: a hard bound per layer
        if expect == "approx":
            widths = {l: lp.width for l, lp in p.by_layer.items()}
            want = sum(int(deg[lp.kept_rows].sum()) * widths[l] for l, lp in p.by_layer.items())
            assert p.flops_kept == pytest.approx(want / (int(deg.sum()) * sum(widths.values())))
            assert p.flops_kept <= 0.3 * 1.001  # the budget C holds over the layers together
    last = seen[-1]
    for l, lp in last.by_layer.items():  # 2 warm-up + 2 exact steps; 6 approximate: R = 2, one allocation
        assert (lp.exact_steps, lp.approx_steps, lp.resamples, lp.cache_hits) == (4, 6, 3, 3)
        assert lp.nnz_kept_frac_mean == pytest.approx(sum(s.by_layer[l].nnz_kept for s in seen[2:8]) / 6 / last.nnz)
        assert lp.sample_time_s > 0 and lp.spmm_time_s > 0
    assert last.tunes == 1 and last.switch_epoch == 8 and last.guard_epoch is None
    # A snapshot: the profile of epoch 3 still says what epoch 3 did.
    assert seen[3].by_layer[1].approx_steps == 2 and seen[3].phase == "approx"
    # stats() (progress bar, result.json) is built from the same figures.
    st = tr.engine.stats()
    assert st["resamples"] == 9 and st["cache_hits"] == 9 and st["rsc"] == "exact"
    assert st["detail"]["layers"] == {l: lp.record() for l, lp in last.by_layer.items()}
    assert "kept_rows" not in st["detail"]["layers"][1]
    json.dumps(st)


def test_exact_gradient_probe_changes_nothing_and_measures_the_sampled_error():
    def train(probe: bool):  # one after the other: the dropout seeds come from torch's global RNG
        tr = _trainer(budget=0.2)
        recs, params = [], []
        for epoch in range(EPOCHS):
            recs.append(tr.train_epoch(epoch, compare_exact=probe))
            recs[-1]["approximating"] = tr.engine.profile().approximating
            params.append([p.detach().clone() for p in tr.model.parameters()])
        return recs, params

    (probed, p_params), (plain, q_params) = train(True), train(False)
    assert [r["approximating"] for r in probed] == [False] * 2 + [True] * 6 + [False] * 2
    for a, b, ps, qs in zip(probed, plain, p_params, q_params):
        assert a["loss"] == b["loss"]  # the probe replays the dropout masks and leaves the step alone
        assert all(torch.equal(p, q) for p, q in zip(ps, qs))
        assert "grad_rel_err" not in b
        if a["approximating"]:
            assert 1e-3 < a["grad_rel_err"] < 1.5 and 0.0 < a["grad_cos"] < 1.0
        else:  # warm-up and exact epochs: RSC's backward is the exact one
            assert a["grad_rel_err"] < 1e-6 and a["grad_cos"] == pytest.approx(1.0, abs=1e-6)


def test_layers_is_a_deprecated_name_for_samplers():
    tr = _trainer()
    with pytest.warns(DeprecationWarning, match="samplers"):
        assert tr.engine.layers is tr.engine.samplers
    assert set(tr.engine.samplers) == {0, 1, 2}
