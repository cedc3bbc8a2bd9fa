"""Checkpoint/resume: a SIGKILLed run resumes to exactly the metrics of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from approxgnn.train.checkpoint import PREVIOUS_NAME, CHECKPOINT_NAME, load_latest_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

ENGINE_FLAGS = {
    "exact": ["--engine", "exact", "--model", "gcn"],  # precomputed first hop (the default)
    "exact-plain": ["--engine", "exact", "--model", "gcn", "--precompute", "off"],
    "exact-sage": ["--engine", "exact", "--model", "sage", "--precompute", "on"],
    "rsc": ["--engine", "rsc", "--model", "gcn", "--budget", "0.3", "--warmup", "1", "--tune-interval", "3",
            "--cache-interval", "2"],
    "refresh": ["--engine", "refresh", "--model", "sage", "--fanouts", "5,5", "--batch-size", "512",
                "--cache-mb", "1", "--staleness", "7"],
    # the other mini-batch policies, with a staleness short enough that entries expire and a budget
    # small enough that embeddings and feature rows compete
    "refresh-paper": ["--engine", "refresh", "--policy", "refresh-paper", "--model", "sage", "--fanouts", "5,5",
                      "--batch-size", "512", "--cache-mb", "0.3", "--staleness", "7"],
    "gas": ["--engine", "refresh", "--policy", "gas", "--model", "sage", "--fanouts", "5,5", "--batch-size", "512",
            "--cache-mb", "0.3"],
    # the switch to exact at epoch 6 of 40, before the first checkpoint the run is killed after
    "gas-switch": ["--engine", "refresh", "--policy", "gas", "--model", "sage", "--fanouts", "5,5",
                   "--batch-size", "512", "--cache-mb", "0.3", "--history-switch-time", "0.15"],
    # what a hit holds (issue 20): the layer's input aggregate (a hidden layer >= 1: three layers,
    # entries stored as float16), an LMC-style partial refresh, and a warm start that ends before the kill
    "refresh-aggregate": ["--engine", "refresh", "--model", "sage", "--layers", "3", "--fanouts", "5,5,5",
                          "--batch-size", "512", "--cache-mb", "0.3", "--staleness", "7", "--cached-value",
                          "aggregate", "--history-dtype", "float16"],
    "refresh-lmc": ["--engine", "refresh", "--model", "sage", "--fanouts", "5,5", "--batch-size", "512",
                    "--cache-mb", "0.3", "--staleness", "7", "--hit-fanout", "2", "--hit-mix", "0.3"],
    "refresh-warm": ["--engine", "refresh", "--model", "sage", "--fanouts", "5,5", "--batch-size", "512",
                     "--cache-mb", "0.3", "--staleness", "7", "--history-start-time", "0.1"],
    # the corrections for what a hit withholds (issue 20): VR-GCN's control variate with a
    # staleness-aware weight on served rows (one run, to keep the suite short), REST's
    # forward-only refreshes between steps
    "refresh-cv-decay": ["--engine", "refresh", "--model", "sage", "--fanouts", "5,5", "--batch-size", "512",
                         "--cache-mb", "0.3", "--staleness", "7", "--control-variate", "0.3",
                         "--staleness-decay", "2"],
    "refresh-rest": ["--engine", "refresh", "--model", "sage", "--fanouts", "5,5", "--batch-size", "512",
                     "--cache-mb", "0.3", "--staleness", "7", "--refresh-every", "3", "--refresh-rows", "128"],
    "feature": ["--engine", "sample", "--policy", "feature", "--model", "sage", "--fanouts", "5,5",
                "--batch-size", "512", "--cache-mb", "0.3"],
}


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "approxgnn.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _final(run_dir):
    r = json.loads((run_dir / "result.json").read_text())
    last = r["curve"][-1]
    return r["val"], r["test"], r["best_epoch"], last["loss"], last["val"], last["test"]


@pytest.mark.parametrize("engine", list(ENGINE_FLAGS))
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, engine):
    if engine != "exact":
        try:
            __import__("approxgnn.rsc" if engine == "rsc" else "approxgnn.train.minibatch", fromlist=["_"])
        except ImportError:
            pytest.skip(f"{engine} engine not available")
    epochs = 40
    common = ["train", "--dataset", "synthetic", "--layers", "2", "--hidden", "32", "--epochs", str(epochs),
              "--seed", "7", "--no-progress", *ENGINE_FLAGS[engine]]
    full = _cli(common + ["--out", str(tmp_path / "full")])
    assert full.wait(timeout=600) == 0, full.stderr.read()

    killed_dir = tmp_path / "killed"
    p = _cli(common + ["--out", str(killed_dir), "--checkpoint-every", "4"])
    deadline = time.time() + 300
    while not (killed_dir / PREVIOUS_NAME).exists():  # at least two checkpoints written
        assert p.poll() is None, "run finished before it could be killed; make it longer"
        assert time.time() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed_dir / "result.json").exists()
    state, _ = load_latest_checkpoint(killed_dir)
    assert 0 < state["loop"]["epoch"] < epochs

    resumed = _cli(["train", "--resume", str(killed_dir), "--no-progress"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert _final(killed_dir) == _final(tmp_path / "full")


def test_torn_checkpoint_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, {"loop": {"epoch": 1}, "w": torch.ones(3)})
    save_checkpoint(tmp_path, {"loop": {"epoch": 2}, "w": torch.ones(3) * 2})
    state, path = load_latest_checkpoint(tmp_path)
    assert state["loop"]["epoch"] == 2 and path.name == CHECKPOINT_NAME
    # Simulate a crash mid-write that tore the newest file.
    data = (tmp_path / CHECKPOINT_NAME).read_bytes()
    (tmp_path / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    state, path = load_latest_checkpoint(tmp_path)
    assert state["loop"]["epoch"] == 1 and path.name == PREVIOUS_NAME
    assert torch.equal(state["w"], torch.ones(3))


def test_crash_before_rename_leaves_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"loop": {"epoch": 1}})

    def crash(*a, **k):
        raise OSError("disk full")

    import approxgnn.train.checkpoint as ck
    monkeypatch.setattr(ck.os, "fsync", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"loop": {"epoch": 2}})
    monkeypatch.undo()
    state, _ = load_latest_checkpoint(tmp_path)
    assert state["loop"]["epoch"] == 1


def test_a_refresh_checkpoint_from_before_auto_took_the_first_hop_resumes_on_its_path(tmp_path):
    """A refresh run recorded with ``--precompute auto`` when auto meant the plain path for it: its
    checkpoint holds a plain store, so ``--resume`` keeps the plain path and ends as an
    uninterrupted plain run does."""
    from approxgnn.cli import main

    base = ["train", "--dataset", "synthetic-500", "--engine", "refresh", "--model", "sage", "--layers", "2",
            "--hidden", "16", "--dropout", "0.3", "--precompute", "off", "--no-progress", "--checkpoint-every", "1"]
    assert main(base + ["--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert main(base + ["--epochs", "2", "--out", str(tmp_path / "cut")]) == 0
    state, _ = load_latest_checkpoint(tmp_path / "cut")
    state["config"]["epochs"], state["config"]["precompute"] = 3, "auto"  # as recorded before
    save_checkpoint(tmp_path / "cut", state)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    whole, cut = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "cut"))
    assert cut["precompute"]["path"] == "plain"
    assert [c["loss"] for c in cut["curve"]] == [c["loss"] for c in whole["curve"]]


def test_a_gcn_first_hop_checkpoint_resumes_with_its_table(tmp_path):
    """GCN's first hop reads its table alone (no joined store): ``--resume`` must not take that
    for the plain path."""
    from approxgnn.cli import main

    base = ["train", "--dataset", "synthetic-500", "--engine", "sample", "--model", "gcn", "--layers", "2",
            "--hidden", "16", "--dropout", "0.3", "--no-progress", "--checkpoint-every", "1"]
    assert main(base + ["--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert main(base + ["--epochs", "2", "--out", str(tmp_path / "cut")]) == 0
    state, _ = load_latest_checkpoint(tmp_path / "cut")
    state["config"]["epochs"] = 3
    save_checkpoint(tmp_path / "cut", state)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    whole, cut = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "cut"))
    assert cut["precompute"]["path"] == whole["precompute"]["path"] == "precomputed"
    assert [c["loss"] for c in cut["curve"]] == [c["loss"] for c in whole["curve"]]
