import json

import pytest
import torch

from approxgnn.train import TrainConfig, run
from approxgnn.train.loop import check_out_dir
from approxgnn.train.metrics import accuracy, roc_auc

from helpers import planted_dataset


def test_roc_auc_matches_pairwise_definition_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    pos, neg = scores[y == 1], scores[y == 0]
    pairs = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    assert roc_auc(scores, y) == pytest.approx(pairs.mean().item())
    assert accuracy(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])) == 0.5


@pytest.mark.parametrize("model", ["gcn", "sage", "gcn2"])
def test_short_training_run_learns_and_writes_result(tmp_path, model):
    data = planted_dataset()
    cfg = TrainConfig(dataset="planted", model=model, hidden=32, layers=2, epochs=30, lr=0.02,
                      out=str(tmp_path / model), progress=False)
    result = run(cfg, data)
    assert result["test"] > 0.6  # 3 classes: chance is 1/3
    saved = json.loads((tmp_path / model / "result.json").read_text())
    for key in ("dataset", "model", "engine", "metric", "val", "test", "best_epoch", "epochs", "train_time_s",
                "epoch_time_median_s", "config"):
        assert key in saved
    assert saved["config"]["model"] == model and saved["config"]["rsc"]["budget"] == cfg.rsc.budget
    assert len(saved["curve"]) == 30


def test_same_seed_gives_identical_metrics():
    data = planted_dataset()
    cfg = TrainConfig(dataset="planted", hidden=16, epochs=8, progress=False, seed=3)
    a, b = run(cfg, data), run(cfg, data)
    assert [c["val"] for c in a["curve"]] == [c["val"] for c in b["curve"]]
    assert [c["loss"] for c in a["curve"]] == [c["loss"] for c in b["curve"]]


def test_auc_metric_for_binary_task():
    data = planted_dataset(classes=2, metric="auc")
    r = run(TrainConfig(dataset="planted", hidden=16, epochs=20, progress=False), data)
    assert r["metric"] == "auc" and r["test"] > 0.7


def test_config_validation_and_out_dir_guard(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="engine"):
        TrainConfig(engine="fast")
    (tmp_path / "result.json").write_text("{}")
    with pytest.raises(ValueError, match="another run"):
        check_out_dir(tmp_path, resume=False, overwrite=False)
    check_out_dir(tmp_path, resume=False, overwrite=True)


def test_memory_check_names_the_fix():
    from approxgnn.train.memory import check_memory, estimate_bytes

    data = planted_dataset()
    cfg = TrainConfig(dataset="planted", hidden=16, epochs=1, progress=False)
    need = sum(estimate_bytes(cfg, data).values())
    check_memory(cfg, data, available=need + 1)
    with pytest.raises(MemoryError, match="--engine refresh"):
        check_memory(cfg, data, available=need - 1)
    from approxgnn.minibatch import MiniBatchConfig

    mb = TrainConfig(dataset="planted", engine="sample", layers=2, minibatch=MiniBatchConfig(fanouts=[5, 5], cache_mb=0.0))
    with pytest.raises(MemoryError, match="--features-on-disk"):
        check_memory(mb, data, available=1000)
    mb.minibatch.cache_mb = 8.0
    mb.history.policy = "feature"  # a cache that spends the budget (unspent, --cache-mb costs nothing)
    with pytest.raises(MemoryError, match="--cache-mb"):
        check_memory(mb, data, available=1000)


def test_result_records_time_to_accuracy(tmp_path, one_torch_thread):
    from approxgnn.train import time_to_reach

    data = planted_dataset()
    cfg = TrainConfig(dataset="planted", model="gcn", hidden=16, epochs=15, dropout=0.5, lr=0.01, progress=False,
                      out=str(tmp_path))
    result = run(cfg, data)
    curve, best = result["curve"], result["val"]
    ttv = json.loads((tmp_path / "result.json").read_text())["time_to_val"]
    first_best = next(c for c in curve if c["val"] >= best)
    assert ttv["best-0"] == first_best["time_s"]
    times = [ttv[f"best-{m:g}"] for m in (0.05, 0.02, 0.01, 0.005, 0.0)]
    assert times == sorted(times)  # a lower level is reached no later
    assert time_to_reach(curve, best + 0.01) is None  # never reached: said so, not guessed
    assert time_to_reach(curve, -1.0) == curve[0]["time_s"]


def test_time_to_within_counts_a_level_met_exactly() -> None:
    from approxgnn.train import time_to_within

    curve = [{"time_s": 1.0, "val": 0.1}, {"time_s": 2.0, "val": 0.7}, {"time_s": 3.0, "val": 0.8}]
    assert 0.8 - 0.1 > 0.7  # float rounding: a plain comparison would miss epoch 1
    assert time_to_within(curve, 0.8, 0.1) == 2.0
    assert time_to_within(curve, 0.8, 0.0) == 3.0 and time_to_within(curve, 0.9, 0.0) is None
