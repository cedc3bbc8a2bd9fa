"""Greedy layer-wise FLOPs allocation: a pure function of per-layer statistics."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from approxgnn.rsc.budget import Allocation, LayerStats, allocate_budget, budget_flops


def _stats(scores, degrees, width, fnorm=1.0):
    scores = torch.as_tensor(scores, dtype=torch.float32)
    degrees = torch.as_tensor(degrees, dtype=torch.int64)
    s, order = torch.sort(scores, descending=True)
    cum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(degrees[order], 0)])
    return LayerStats(s, cum, fnorm, width)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 300), layers=st.integers(1, 4), budget=st.floats(0.01, 1.0),
       mode=st.sampled_from(["delta", "delta_per_flop", "uniform"]), seed=st.integers(0, 10_000),
       step=st.sampled_from([0.02, 0.05, 0.1]))
def test_flops_kept_never_exceed_budget(n, layers, budget, mode, seed, step):
    g = torch.Generator().manual_seed(seed)
    deg = (torch.rand(n, generator=g) ** 4 * 50).long() + 1
    nnz = int(deg.sum())
    stats, widths = {}, {}
    for l in range(layers):
        sc = torch.rand(n, generator=g)
        sc[torch.rand(n, generator=g) < 0.3] = 0.0
        widths[l] = int(torch.randint(1, 300, (1,), generator=g))
        stats[l] = _stats(sc, deg, widths[l], fnorm=float(torch.rand(1, generator=g)) + 0.1)
    alloc = allocate_budget(stats, nnz, budget, step=step, mode=mode)
    spent = sum(alloc[l].flops(widths[l]) for l in alloc)
    assert spent <= budget_flops(budget, nnz, widths) + 1e-6
    for l, a in alloc.items():
        need = int(stats[l].cum_nnz[int((stats[l].sorted_scores > 0).sum())])
        if a.max_nnz == nnz and a.ratio == 1.0:  # uncapped: the statistics' whole need was planned
            assert a.planned_nnz == need
            continue
        assert a.planned_nnz == a.max_nnz < need or mode == "uniform"
        assert 0 <= a.rows <= int((stats[l].sorted_scores > 0).sum())
        if mode == "uniform":
            assert a.max_nnz <= budget * nnz
        else:
            assert a.max_nnz <= int(stats[l].cum_nnz[a.rows])


def test_full_budget_keeps_every_nonzero_row():
    st_ = _stats([3.0, 2.0, 0.0, 1.0], [1, 2, 3, 4], 8)
    a = allocate_budget({0: st_}, 10, 1.0)[0]
    # Never shrunk: uncapped (rows that gain a gradient later are kept too), 7 non-zeros planned.
    assert a == Allocation(1.0, 4, 10, planned_nnz=7)


def test_argmin_delta_vs_delta_per_flop():
    # Same graph in both layers (50 rows of degree 10). Layer 0 is wide (d=100) with slightly
    # larger scores, layer 1 narrow (d=5): its chunks cost little error but also save few FLOPs.
    n, deg = 50, torch.full((50,), 10)
    stats = {0: _stats(torch.full((n,), 1.5), deg, 100), 1: _stats(torch.full((n,), 1.0), deg, 5)}
    by_delta = allocate_budget(stats, 500, 0.5, mode="delta")
    per_flop = allocate_budget(stats, 500, 0.5, mode="delta_per_flop")
    kept = {name: {l: a.max_nnz // 10 for l, a in alloc.items()}  # whole rows of degree 10
            for name, alloc in (("delta", by_delta), ("per_flop", per_flop))}
    # argmin Δ cuts the narrow layer down to its 10-row minimum first (saving little), then
    # still has to cut the wide one to 25 rows.
    assert kept["delta"] == {0: 25, 1: 10}
    # Δ per FLOP cuts only the wide layer: 27 chunks of 1000 FLOPs each.
    assert kept["per_flop"] == {0: 23, 1: 50}
    # Both hand the 750 FLOPs left after the last step back: 7 more non-zeros at d = 100.
    assert by_delta[0].max_nnz == 257 and per_flop[0].max_nnz == 237

    def dropped_error(k):
        return sum(float(stats[l].sorted_scores[r:].sum()) for l, r in k.items())

    assert dropped_error(kept["per_flop"]) < dropped_error(kept["delta"])
    for alloc in (by_delta, per_flop):
        assert sum(a.max_nnz * stats[l].width for l, a in alloc.items()) <= 0.5 * 500 * 105


def test_uniform_gives_each_layer_the_same_fraction():
    deg = torch.ones(100, dtype=torch.int64)
    stats = {0: _stats(torch.rand(100), deg, 4), 1: _stats(torch.rand(100), deg, 64)}
    alloc = allocate_budget(stats, 100, 0.25, mode="uniform")
    assert alloc[0].max_nnz == alloc[1].max_nnz == 25
    assert alloc[0].rows == alloc[1].rows == 25


def test_min_rows_rule_and_bad_arguments():
    stats = {0: _stats(torch.rand(1000), torch.ones(1000, dtype=torch.int64), 4)}
    # RSC's rule k = min(max(int(N·r), 10), N): at r = 0 a layer still keeps 10 rows ...
    a = allocate_budget(stats, 1000, 0.010)[0]
    assert a.max_nnz == 10  # (the row cap shows the step before: 20 rows)
    # ... unless even that breaks the budget (5 nnz here): the budget is a hard bound.
    a = allocate_budget(stats, 1000, 0.005)[0]
    assert a.max_nnz <= 5
    with pytest.raises(ValueError, match="budget"):
        allocate_budget(stats, 1000, 0.0)
    with pytest.raises(ValueError, match="mode"):
        allocate_budget(stats, 1000, 0.5, mode="best")


def test_stats_ema():
    s = _stats([4.0, 2.0], [1, 1], 3, fnorm=2.0)
    s.update(torch.tensor([2.0, 0.0]), torch.tensor([0, 1, 2]), 4.0, 0.5)
    assert s.sorted_scores.tolist() == [3.0, 1.0] and s.fnorm == 3.0 and s.observations == 2
