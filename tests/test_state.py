"""Every saved state carries a version, and loading refuses one it cannot read."""
from __future__ import annotations

from pathlib import Path

import pytest

from approxgnn.history import HistoryConfig
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.train import TrainConfig, build_trainer, fit, read_checkpoint

from helpers import planted_dataset


def _trainer(policy: str, out: Path | None = None):
    cfg = TrainConfig(dataset="planted", model="sage", engine="refresh", layers=2, hidden=16, epochs=2, dropout=0.3,
                      progress=False, checkpoint_every=1, out=str(out) if out else None,
                      minibatch=MiniBatchConfig(fanouts=[4, 4], batch_size=32, cache_mb=0.05),
                      history=HistoryConfig(policy=policy, staleness=5))
    return build_trainer(cfg, planted_dataset(n=300))


def _bumped(state: dict) -> dict:
    return {**state, "version": state["version"] + 1}


@pytest.mark.parametrize("part", ["store", "feature_cache", "history_engine", "history_cache", "trainer"])
def test_each_state_refuses_a_version_it_cannot_read(part: str) -> None:
    trainer = _trainer("feature" if part == "feature_cache" else "refresh")
    trainer.train_epoch(0)  # real state: counters moved, rows admitted
    obj = {"store": trainer.store, "feature_cache": trainer.feature_cache, "history_engine": trainer.history,
           "history_cache": trainer.history.cache if trainer.history else None, "trainer": trainer}[part]
    state = obj.state_dict()
    obj.load_state_dict(state)  # its own state loads back
    with pytest.raises(ValueError, match=f"version {state['version'] + 1}"):
        obj.load_state_dict(_bumped(state))


def test_a_checkpoint_file_of_another_layout_is_refused_and_an_unversioned_one_read(tmp_path: Path) -> None:
    first = fit(_trainer("refresh", tmp_path / "run"))
    state = read_checkpoint(tmp_path / "run")
    assert state["version"] == 1
    with pytest.raises(ValueError, match="unsupported checkpoint state"):
        fit(_trainer("refresh", tmp_path / "other"), resume_state=_bumped(state))
    # Written before the key existed: read as version 1 (the loop has finished, so nothing trains).
    unversioned = {k: v for k, v in state.items() if k != "version"}
    again = fit(_trainer("refresh", tmp_path / "third"), resume_state=unversioned)
    assert again["val"] == first["val"] and again["curve"] == first["curve"]
