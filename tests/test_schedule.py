"""``--lr-schedule``: cosine annealing per epoch in both trainers, and a resume that stays bit-exact."""
from __future__ import annotations

import json
import math

import pytest

from approxgnn import cli
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.train import TrainConfig, run
from approxgnn.train.checkpoint import PREVIOUS_NAME, load_checkpoint

from helpers import planted_dataset

ENGINES = {"exact": {"model": "gcn"}, "rsc": {"model": "gcn"},
           "refresh": {"model": "sage", "minibatch": MiniBatchConfig(fanouts=[5, 4], batch_size=40, cache_mb=0.02,
                                                                     eval_batch_size=64)}}


def config(engine: str, **kw) -> TrainConfig:
    # Dropout on (hidden and input), several optimiser steps per epoch for the mini-batch engine.
    base = dict(dataset="planted", engine=engine, hidden=16, layers=2, lr=0.02, dropout=0.3, input_dropout=0.2,
                lr_schedule="cosine", epochs=6, seed=5, progress=False, **ENGINES[engine])
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("engine", ["exact", "refresh"])
def test_cosine_lr_follows_the_formula(engine: str) -> None:
    result = run(config(engine), planted_dataset(n=200))
    lrs = [c["lr"] for c in result["curve"]]
    assert lrs == pytest.approx([0.02 * 0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)], rel=1e-12)
    assert lrs[0] == 0.02 and lrs[-1] < 0.002
    constant = run(config(engine, lr_schedule="constant", epochs=2), planted_dataset(n=200))
    assert [c["lr"] for c in constant["curve"]] == [0.02, 0.02]


@pytest.mark.parametrize("engine", list(ENGINES))
def test_resume_with_cosine_is_bit_exact(tmp_path, engine: str) -> None:
    data = planted_dataset(n=200)
    straight = run(config(engine, out=str(tmp_path / "straight"), checkpoint_every=3), data)
    # The checkpoint of epoch 3 (kept as the previous one) stands in for a run killed after it.
    state = load_checkpoint(tmp_path / "straight" / PREVIOUS_NAME)
    assert state["loop"]["epoch"] == 3 and state["scheduler"]["last_epoch"] == 3
    resumed = run(config(engine, out=str(tmp_path / "resumed")), data, resume_state=state)
    keys = ("loss", "lr", "val", "test")
    assert [[c[k] for k in keys] for c in resumed["curve"]] == [[c[k] for k in keys] for c in straight["curve"]]
    assert (resumed["val"], resumed["test"]) == (straight["val"], straight["test"])


def test_cli_flag(tmp_path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synthetic-2k", "--hidden", "8", "--epochs", "3", "--lr-schedule", "cosine",
            "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    saved = json.loads((out / "result.json").read_text())
    assert saved["config"] == cli.config_from_args(cli.build_parser().parse_args(argv)).to_dict()
    lrs = [c["lr"] for c in saved["curve"]]  # annealed: 0.01 · (1 + cos(π·e/3)) / 2
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--lr-schedule", "linear"])
    assert e.value.code == 2
