"""The memory plan: the cgroup's headroom (v1 and v2), the parts of a mini-batch plan, the fix named
for the part that does not fit, and a run refused before it reads a batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from approxgnn.cli import main
from approxgnn.history import HistoryConfig
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.train import TrainConfig
from approxgnn.train import memory
from approxgnn.train.memory import (batch_activation_bytes, batch_input_rows, bounded_evaluation_bytes,
                                    cgroup_headroom, check_memory, estimate_bytes, evaluation_plan)

from helpers import planted_dataset


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_headroom_counts_reclaimable_file_pages_and_ancestors(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "5:devices:/\n4:memory:/jobs/run7\n0::/\n")
    leaf = tmp_path / "fs" / "memory" / "jobs" / "run7"
    _write(leaf / "memory.limit_in_bytes", "2147483648\n")
    _write(leaf / "memory.usage_in_bytes", "1073741824\n")
    _write(leaf / "memory.stat", "cache 600000000\ntotal_inactive_file 268435456\n")
    _write(leaf.parent / "memory.limit_in_bytes", "9223372036854771712\n")  # the parent sets no limit
    assert cgroup_headroom(proc, tmp_path / "fs") == 2**31 - 2**30 + 2**28
    _write(leaf.parent / "memory.limit_in_bytes", str(2**30 + 2**29))  # a tighter ancestor wins
    _write(leaf.parent / "memory.usage_in_bytes", str(2**30 + 2**28))
    assert cgroup_headroom(proc, tmp_path / "fs") == 2**28


def test_cgroup_v2_max_means_no_limit(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "0::/user.slice/job\n")
    leaf = tmp_path / "fs" / "user.slice" / "job"
    _write(leaf / "memory.max", "max\n")
    _write(leaf / "memory.current", "5000\n")
    assert cgroup_headroom(proc, tmp_path / "fs") is None
    _write(leaf / "memory.max", "1000000\n")
    _write(leaf / "memory.stat", "anon 4000\ninactive_file 700\n")
    assert cgroup_headroom(proc, tmp_path / "fs") == 1_000_000 - 5000 + 700
    assert cgroup_headroom(tmp_path / "absent", tmp_path / "fs") is None


def test_batch_rows_bound():
    assert batch_input_rows([15, 10, 5], 1024, 10**8) == 1024 * (1 + 15 + 150 + 750)
    assert batch_input_rows([15, 10, 5], 1024, 50_000) == 50_000
    assert batch_input_rows([-1], 8, 1000) == 1000


def test_activations_count_each_layers_targets():
    # 2 layers, fanouts [3, 2], batch 4: layer 0 computes the seeds and their 12 neighbours (16 rows)
    # from 10-wide inputs, layer 1 the 4 seeds from 6-wide ones; 4 tensors of width 6 each.
    assert batch_activation_bytes([3, 2], 4, 10**6, 10, 6) == (16 * (10 + 24) + 4 * (6 + 24)) * 4
    assert batch_activation_bytes([3, 2], 4, 10, 10, 6) == (10 * (10 + 24) + 4 * (6 + 24)) * 4  # capped at N


def test_first_hop_plan_reads_one_hop_fewer_rows_twice_as_wide_and_holds_its_table():
    data = planted_dataset(features=32)
    plain = _mb(model="sage", precompute="off", minibatch={"fanouts": [4, 3], "batch_size": 2})
    table = _mb(model="sage", precompute="on", precompute_dtype="float16", minibatch={"fanouts": [4, 3], "batch_size": 2})
    p, t = estimate_bytes(plain, data), estimate_bytes(table, data)
    n = data.num_nodes
    assert p["batches"] == batch_input_rows([4, 3], 2, n) * 32 * 4 * 2
    assert t["batches"] == batch_input_rows([4], 2, n) * 64 * 4 * 2
    assert "first-hop table" not in p and t["first-hop table"] == n * 32 * 2
    assert t["activations"] == batch_activation_bytes([4, 3], 2, n, 64, 8)
    # A feature cache merges a batch's rows once more.
    cached = _mb(model="sage", precompute="off", history=HistoryConfig(policy="feature"),
                 minibatch={"fanouts": [4, 3], "batch_size": 2, "cache_mb": 1.0})
    assert estimate_bytes(cached, data)["batches"] == p["batches"] * 3 // 2


def _mb(**kw) -> TrainConfig:
    mb = {"fanouts": [-1, -1], "batch_size": 64, "cache_mb": 0.0, **kw.pop("minibatch", {})}
    return TrainConfig(dataset="planted", engine="sample", model=kw.pop("model", "gcn"), layers=2, hidden=kw.pop("hidden", 8),
                       minibatch=MiniBatchConfig(**mb), **kw)


@pytest.mark.parametrize("case, cfg, features, fix", [
    ("batches", _mb(minibatch={"features_on_disk": True}), 2048, "lower --batch-size"),
    ("caches", _mb(minibatch={"features_on_disk": True, "cache_mb": 64.0, "lookahead": 2}), 16, "lower --cache-mb"),
    ("features", _mb(), 2048, "--features-on-disk"),
])
def test_the_fix_named_is_the_part_that_does_not_fit(case, cfg, features, fix):
    data = planted_dataset(features=features)
    parts = estimate_bytes(cfg, data)
    assert max(parts, key=parts.get) == case or case == "features"
    need = sum(parts.values())
    check_memory(cfg, data, available=need)  # exactly enough passes
    with pytest.raises(MemoryError, match=fix):
        check_memory(cfg, data, available=need - 1)


def test_evaluation_that_does_not_fit_goes_to_disk_and_then_names_its_fix():
    # Chunks of 8 targets: a chunk's rows are fewer than two whole layers; batches of 4 seeds.
    small = {"fanouts": [2, 2], "batch_size": 4, "eval_batch_size": 8}
    cfg, data = _mb(hidden=4096, minibatch={"features_on_disk": True, **small}), planted_dataset(features=16)
    parts = estimate_bytes(cfg, data)
    assert max(parts, key=parts.get) == "evaluation"
    need = sum(parts.values())
    assert evaluation_plan(cfg, data, available=need)["spill_layers"] is False
    check_memory(cfg, data, available=need - 1)  # not refused: its layers will be written to disk
    assert evaluation_plan(cfg, data, available=need - 1) == {"stream_features": False, "spill_layers": True}
    bounded = need - parts["evaluation"] + bounded_evaluation_bytes(cfg, data)
    assert bounded < need
    check_memory(cfg, data, available=bounded)
    # No room left beside a chunk for the feature file's pages: the features are streamed too.
    assert evaluation_plan(cfg, data, available=bounded) == {"stream_features": True, "spill_layers": True}
    with pytest.raises(MemoryError, match="lower --eval-batch-size"):
        check_memory(cfg, data, available=bounded - 1)
    # Features in RAM are never streamed (their layers still go to disk).
    ram = _mb(hidden=4096, minibatch=small)
    assert evaluation_plan(ram, data, available=sum(estimate_bytes(ram, data).values()) - 1) == {
        "stream_features": False, "spill_layers": True}


def test_a_run_that_cannot_fit_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    code = main(["train", "--dataset", "synthetic-500", "--engine", "sample", "--model", "sage", "--layers", "2",
                 "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "plans about" in err and "cgroup" in err
    assert not (tmp_path / "run" / "result.json").exists()
