"""Greedy layer-wise FLOPs allocation: a pure function of per-layer statistics."""
import math

import pytest
import torch
from hypothesis import example, given, settings
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
@example(n=20, layers=4, budget=0.5, mode="delta", seed=9997, step=0.02)  # cap == need
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
        # Capped: the plan is the cap; it may equal the need when the cap lands exactly on the
        # last positive-score row (found by hypothesis: n=20, layers=4, budget=0.5, seed=9997).
        assert a.planned_nnz == a.max_nnz <= need or mode == "uniform"
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


def _reference_greedy(stats, nnz, budget, step, mode, min_rows=10):
    """The greedy as RSC states it, one Python step at a time: shrink, by one ``step`` of rows, the
    layer whose next chunk has the smallest key, until the FLOPs fit (then, as a last resort, let a
    layer drop to zero rows), and refill the last shrunk layer with the leftover budget."""
    def rows(l, m):
        s = stats[l]
        n, nz = s.num_rows, int((s.sorted_scores > 0).sum())
        if m > int(math.floor(nz / n / step + 1e-9)):
            return 0
        return min(min(max(int(n * max(nz / n - m * step, 0.0) + 1e-9), min_rows), n), nz)

    def cost(l, k):
        return int(stats[l].cum_nnz[k]) * stats[l].width

    def mass(l, k):  # score mass of the top k rows, summed in float64 as the allocator does
        return float(torch.cumsum(stats[l].sorted_scores.double(), 0)[k - 1]) if k else 0.0

    last = {l: int(math.floor(int((s.sorted_scores > 0).sum()) / s.num_rows / step + 1e-9)) for l, s in stats.items()}
    steps, k_now = {l: 0 for l in stats}, {l: rows(l, 0) for l in stats}
    total = budget * nnz * sum(s.width for s in stats.values())
    spent, allow_zero, last_shrunk = sum(cost(l, k_now[l]) for l in stats), False, None
    while spent > total:
        best, best_key = None, None
        for l in stats:
            if steps[l] >= last[l] + allow_zero or k_now[l] == 0:
                continue
            k_lo = rows(l, steps[l] + 1)
            f = stats[l].fnorm
            delta = (mass(l, k_now[l]) - mass(l, k_lo)) / f if f > 0 else 0.0
            key = delta if mode == "delta" else delta / max(float(cost(l, k_now[l]) - cost(l, k_lo)), 1e-30)
            if best_key is None or key < best_key:
                best, best_key = l, key
        if best is None:
            if allow_zero:
                break
            allow_zero = True
            continue
        steps[best] += 1
        k_now[best] = rows(best, steps[best])
        spent = sum(cost(l, k_now[l]) for l in stats)
        last_shrunk = best
    out = {}
    for l, s in stats.items():
        if steps[l]:
            out[l] = Allocation(k_now[l] / s.num_rows, k_now[l], int(s.cum_nnz[k_now[l]]))
        else:
            out[l] = Allocation(1.0, s.num_rows, nnz, int(s.cum_nnz[k_now[l]]))
    if last_shrunk is not None and spent < total:
        l = last_shrunk
        k_prev = rows(l, steps[l] - 1)
        extra = int((total - spent) // stats[l].width)
        out[l] = Allocation(k_prev / stats[l].num_rows, k_prev,
                            min(int(stats[l].cum_nnz[k_prev]), int(stats[l].cum_nnz[k_now[l]]) + extra))
    return out


@pytest.mark.parametrize("mode", ["delta", "delta_per_flop"])
def test_vectorised_allocation_equals_the_step_by_step_greedy(mode):
    """Random layers, including tied keys (scores drawn from a few values), layers with no
    non-zero score, a zero Frobenius norm and budgets that force layers down to zero rows."""
    g = torch.Generator().manual_seed(1)
    for trial in range(150):
        n = int(torch.randint(5, 200, (1,), generator=g))
        deg = (torch.rand(n, generator=g) ** 3 * 40).long() + int(trial % 3 == 0)  # some zero-degree rows
        nnz = int(deg.sum()) or 1
        stats = {}
        for l in range(int(torch.randint(1, 9, (1,), generator=g))):
            if trial % 2:
                sc = torch.randint(0, 4, (n,), generator=g).float()  # many ties
            else:
                sc = torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.4)
            if torch.rand(1, generator=g) < 0.1:
                sc.zero_()
            fnorm = 0.0 if torch.rand(1, generator=g) < 0.1 else float(torch.rand(1, generator=g)) + 0.05
            stats[3 * l + 1] = _stats(sc, deg, int(torch.randint(1, 64, (1,), generator=g)), fnorm)
        budget = float(torch.rand(1, generator=g)) ** 2 * 0.999 + 0.001
        step = [0.02, 0.05, 0.1, 0.3][trial % 4]
        assert allocate_budget(stats, nnz, budget, step=step, mode=mode) == \
            _reference_greedy(stats, nnz, budget, step, mode), (trial, budget, step)


class _CountOps(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["delta", "delta_per_flop"])
def test_allocation_work_grows_with_layers_only(mode):
    """The tensor operations an allocation makes grow linearly in the layers and do not depend on
    the number of greedy steps (64 layers at a fine step take as many as at a coarse one)."""
    def ops(layers, step):
        g = torch.Generator().manual_seed(0)
        deg = torch.randint(1, 20, (2000,), generator=g)
        stats = {l: _stats(torch.rand(2000, generator=g), deg, 64) for l in range(layers)}
        with _CountOps() as c:
            allocate_budget(stats, int(deg.sum()), 0.1, step=step, mode=mode)
        return c.calls

    coarse, fine = ops(64, 0.05), ops(64, 0.002)
    assert fine == coarse  # 50 vs 500 steps per layer, the same operations
    per_layer = (ops(64, 0.02) - ops(8, 0.02)) / 56
    assert per_layer <= 20 and ops(64, 0.02) <= per_layer * 64 + 150
