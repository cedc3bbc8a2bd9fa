"""The command line: exit codes (0 ok, 1 run failure, 2 usage, 130 interrupted) and its messages.

Most tests call :func:`approxgnn.cli.main` in-process: it returns the exit status of a run and
raises ``SystemExit`` for usage errors and ``--help``, as argparse does. One test runs the real
process to check the statuses the shell sees.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from approxgnn import cli
from approxgnn.datasets import DatasetError
from approxgnn.train import TrainConfig, TrainingDiverged
from approxgnn.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME

ROOT = Path(__file__).resolve().parents[1]


def exit_code(argv: list[str]) -> int:
    """``main``'s status, whether returned (a run) or raised (usage errors, --help)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return 0 if e.code is None else int(e.code)


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command gets as far as running (loading data, training)."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("usage errors must be caught before the run starts")

    monkeypatch.setattr(cli, "run", refuse)


@pytest.fixture
def stub_run(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace training by a stub that records its config and returns a minimal result."""
    calls: list = []

    def fake(cfg, data=None, *, resume_state=None):  # noqa: ANN001
        calls.append(cfg)
        return {"dataset": cfg.dataset, "model": cfg.model, "engine": cfg.engine, "metric": "acc", "val": 0.5,
                "test": 0.5, "best_epoch": 0, "train_time_s": 0.0, "epoch_time_median_s": 0.0}

    monkeypatch.setattr(cli, "run", fake)
    return calls


# --------------------------------------------------------------------------- help and success


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "demo", "datasets", "prepare", "bench")) and "exit status" in out
    assert exit_code(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--budget" in out and "--fanouts" in out and "--resume" in out
    assert exit_code([]) == 2  # a command is required
    assert "required" in capsys.readouterr().err


def test_train_happy_path(tmp_path: Path, capsys: pytest.CaptureFixture, one_torch_thread: None) -> None:
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "synthetic", "--epochs", "2", "--hidden", "8", "--no-progress",
                     "--out", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "synthetic" in stdout and "result.json" in stdout
    saved = json.loads((out / "result.json").read_text())
    assert saved["epochs"] == 2 and saved["config"]["hidden"] == 8


# --------------------------------------------------------------------------- usage errors: exit 2, before any work

BAD_FLAGS = [
    (["--budget", "0"], "--budget", "(0, 1]"),
    (["--budget", "1.5"], "--budget", "(0, 1]"),
    (["--switch-time", "2"], "--switch-time", "[0, 1]"),
    (["--fanouts", "0"], "--fanouts", "positive or -1"),
    (["--fanouts", "-2"], "--fanouts", "positive or -1"),
    (["--fanouts", "5,x"], "--fanouts", "comma-separated integers"),
    (["--batch-size", "0"], "--batch-size", "positive"),
    (["--rate", "0"], "--rate", "(0, 1]"),
    (["--cache-mb", "-1"], "--cache-mb", ">= 0"),
    (["--model", "gat"], "--model", "'gcn', 'gcn2', 'sage'"),
    (["--engine", "fast"], "--engine", "'exact', 'rsc', 'sample', 'refresh'"),
    (["--policy", "lru"], "--policy", "'refresh'"),
    (["--lr", "nan"], "--lr", "finite"),
    (["--lr", "0"], "--lr", "positive"),
    (["--dropout", "1"], "--dropout", "[0, 1)"),
    (["--input-dropout", "1"], "--input-dropout", "[0, 1)"),
    (["--lr-schedule", "linear"], "--lr-schedule", "'constant', 'cosine'"),
    (["--preset", "paper"], "--preset", "'refresh'"),
    (["--epochs", "0"], "--epochs", ">= 1"),
    (["--hidden", "0"], "--hidden", ">= 1"),
    (["--layers", "x"], "--layers", "invalid int value"),
    (["--split", "-1"], "--split", ">= 0"),
    (["--seed", "-3"], "--seed", "[0, 2**32)"),
    (["--checkpoint-every", "-1"], "--checkpoint-every", ">= 0"),
    (["--device", "gpu"], "--device", "cpu, cuda"),
    (["--features-path", "x.bin"], "--features-path", ".npy"),
    (["--staleness", "0"], "--staleness", ">= 1"),
]


@pytest.mark.parametrize("flags, flag, valid", BAD_FLAGS, ids=[" ".join(f[0]) for f in BAD_FLAGS])
def test_bad_flag_is_a_usage_error_naming_it(flags: list[str], flag: str, valid: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, no_run: None) -> None:
    # A bogus data root: had anything been loaded, the message would be about missing files.
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cora", "--data-root", str(tmp_path / "nowhere"), "--out", str(out), *flags]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and valid in err, err
    assert "not found" not in err and not out.exists()


def test_cross_field_error_is_a_usage_error(capsys: pytest.CaptureFixture, no_run: None) -> None:
    assert exit_code(["train", "--engine", "refresh", "--fanouts", "5,5,5", "--layers", "2"]) == 2
    assert "3 fanouts given for 2 layers" in capsys.readouterr().err
    assert exit_code(["train", "--engine", "refresh", "--fanouts", "5,5", "--cached-layers", "3"]) == 2
    assert "cached layer 3" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["refresh", "sample"])
def test_default_fanouts_follow_layers(engine: str, stub_run: list) -> None:
    # No --fanouts: one per layer, [15, 10, 5] cut to --layers or extended with 5s.
    for layers, fanouts in ((None, [15, 10]), ("1", [15]), ("3", [15, 10, 5]), ("5", [15, 10, 5, 5, 5])):
        argv = ["train", "--dataset", "cora", "--engine", engine, "--no-progress"]
        assert exit_code(argv + (["--layers", layers] if layers else [])) == 0
        assert stub_run[-1].minibatch.fanouts == fanouts
    assert exit_code(["train", "--dataset", "cora", "--engine", engine, "--fanouts", "7,3"]) == 0
    assert stub_run[-1].minibatch.fanouts == [7, 3]


def test_config_file_with_the_pre_split_refresh_group(tmp_path: Path, stub_run: list) -> None:
    # result.json / --config files written before the mini-batch / history split keep working:
    # each key of "refresh" lands in the group that now owns it, and flags still win.
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"config": {"engine": "refresh", "layers": 2, "refresh": {
        "fanouts": [7, 3], "batch_size": 99, "cache_mb": 2.0, "policy": "gas", "staleness": 5}}}))
    assert exit_code(["train", "--config", str(path), "--dataset", "cora", "--staleness", "9"]) == 0
    cfg = stub_run[-1]
    assert (cfg.minibatch.fanouts, cfg.minibatch.batch_size, cfg.minibatch.cache_mb) == ([7, 3], 99, 2.0)
    assert (cfg.history.policy, cfg.history.staleness) == ("gas", 9)
    again = TrainConfig.from_dict(json.loads(path.read_text())["config"])
    assert again.minibatch.fanouts == [7, 3] and again.history.policy == "gas" and "refresh" not in again.to_dict()
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"refresh": {"fanout": [3]}})


def test_preset_refresh_values_and_overrides(stub_run: list, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["train", "--preset", "refresh", "--dataset", "cora"]) == 0
    cfg = stub_run[-1]
    assert (cfg.preset, cfg.engine, cfg.model, cfg.layers, cfg.hidden, cfg.batch_norm, cfg.dropout, cfg.lr,
            cfg.lr_schedule) == ("refresh", "refresh", "sage", 3, 256, True, 0.1, 1e-4, "cosine")
    assert cfg.minibatch.fanouts == [10, 15, 20] and cfg.minibatch.batch_size == 1000
    assert cfg.to_dict()["preset"] == "refresh"  # recorded with the run
    # Flags the user gives win over the preset; the rest of the preset stays.
    assert exit_code(["train", "--preset", "refresh", "--lr", "0.003", "--batch-size", "256", "--engine", "sample",
                      "--fanouts", "4,3,2"]) == 0
    cfg = stub_run[-1]
    assert (cfg.lr, cfg.minibatch.batch_size, cfg.engine, cfg.minibatch.fanouts, cfg.hidden) == (
        0.003, 256, "sample", [4, 3, 2], 256)
    # Another depth without fanouts: the fanouts follow it instead of the preset's three.
    assert exit_code(["train", "--preset", "refresh", "--layers", "2"]) == 0
    assert stub_run[-1].minibatch.fanouts == [15, 10] and stub_run[-1].lr_schedule == "cosine"
    assert exit_code(["train", "--preset", "refresh", "--layers", "2", "--fanouts", "5,5,5"]) == 2
    assert "3 fanouts given for 2 layers" in capsys.readouterr().err
    assert exit_code(["train", "--preset", "nope"]) == 2
    assert "argument --preset" in capsys.readouterr().err
    assert exit_code(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "ReFresh" in out and "--lr-schedule" in out and "--input-dropout" in out


def test_preset_run_records_its_name(tmp_path: Path, one_torch_thread: None) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "refresh", "--dataset", "synthetic-2k", "--hidden", "8", "--epochs", "2",
                     "--batch-size", "256", "--cache-mb", "1", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "result.json").read_text())["config"]
    assert config["preset"] == "refresh" and config["lr_schedule"] == "cosine" and config["hidden"] == 8
    assert config["minibatch"]["fanouts"] == [10, 15, 20]


def test_unknown_dataset_lists_the_valid_names(tmp_path: Path, capsys: pytest.CaptureFixture, no_run: None) -> None:
    assert exit_code(["train", "--dataset", "coraa", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'coraa'" in err
    assert all(name in err for name in ("cora", "tolokers", "twitch-de", "gnnb-cora", "synthetic", "ogbn-<name>"))
    assert exit_code(["train", "--dataset", str(tmp_path / "absent.npz")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert exit_code(["prepare", "--dataset", "coraa", "--out", str(tmp_path / "x.npy")]) == 2
    assert exit_code(["prepare", "--dataset", "cora", "--out", str(tmp_path / "x.txt")]) == 2
    assert "--out must name a directory (the on-disk layout) or a .npy file" in capsys.readouterr().err


def test_occupied_out_needs_resume_or_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                stub_run: list) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("{}")
    argv = ["train", "--dataset", "synthetic", "--out", str(out), "--no-progress"]
    assert exit_code(argv) == 2 and not stub_run
    err = capsys.readouterr().err
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert exit_code([*argv, "--overwrite"]) == 0 and len(stub_run) == 1
    (tmp_path / "file").write_text("")
    assert exit_code(["train", "--out", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture, no_run: None) -> None:
    # No checkpoint: a usage error (wrong directory), exit 2.
    assert exit_code(["train", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # Flags that --resume would silently ignore are refused.
    assert exit_code(["train", "--resume", str(tmp_path), "--epochs", "9", "--lr", "0.1"]) == 2
    assert "drop --epochs, --lr" in capsys.readouterr().err
    # Checkpoints that exist but are torn: the run cannot continue, exit 1.
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 torn")
    (tmp_path / PREVIOUS_NAME).write_bytes(b"")
    assert exit_code(["train", "--resume", str(tmp_path), "--no-progress"]) == 1
    assert "no readable checkpoint" in capsys.readouterr().err


def test_config_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture, no_run: None) -> None:
    cfg = tmp_path / "cfg.json"
    for text, message in [("{not json", "--config"), ("[1, 2]", "expected a JSON object"),
                          ('{"epochz": 3}', "unknown key(s) ['epochz']"),
                          ('{"rsc": {"budget": 3}}', "rsc budget must be in (0, 1]"),
                          ('{"rsc": {"budgett": 0.1}}', "unknown key(s) ['budgett']"),
                          ('{"lr": "fast"}', "wrong type")]:
        cfg.write_text(text)
        assert exit_code(["train", "--config", str(cfg)]) == 2, text
        assert message in capsys.readouterr().err, text
    assert exit_code(["train", "--config", str(tmp_path / "absent.json")]) == 2


def test_other_commands_usage_errors(capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["bench", "no-such-bench"]) == 2
    err = capsys.readouterr().err
    assert "no benchmark 'no-such-bench'" in err and "available:" in err
    assert exit_code(["demo", "--epochs", "0"]) == 2
    assert "argument --epochs" in capsys.readouterr().err
    assert exit_code(["demo", "--nodes", "10"]) == 2
    assert exit_code(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------- run failures: exit 1


@pytest.mark.parametrize("error", [ValueError("boom in the engine"), DatasetError("x.npz: boom"),
                                   TrainingDiverged("loss became nan"), MemoryError("needs 9 GiB"),
                                   RuntimeError("CUDA boom")])
def test_errors_during_the_run_are_failures_not_usage(error: Exception, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    def fail(*args, **kwargs):  # noqa: ANN002, ANN003
        raise error

    monkeypatch.setattr(cli, "run", fail)
    assert exit_code(["train", "--dataset", "synthetic", "--no-progress"]) == 1
    assert str(error) in capsys.readouterr().err


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def interrupt(*args, **kwargs):  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupt)
    assert exit_code(["train", "--dataset", "synthetic"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_divergence_exits_1_with_the_reason(capsys: pytest.CaptureFixture, one_torch_thread: None) -> None:
    code = cli.main(["train", "--dataset", "synthetic-2k", "--hidden", "8", "--epochs", "3", "--lr", "1e20",
                     "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "TrainingDiverged" in err and "lower --lr" in err


def test_malformed_data_exits_1_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert exit_code(["train", "--dataset", str(bad), "--no-progress"]) == 1
    assert "data error" in (err := capsys.readouterr().err) and "broken.npz" in err
    assert exit_code(["train", "--dataset", "cora", "--data-root", str(tmp_path), "--no-progress"]) == 1
    assert "not found" in capsys.readouterr().err  # a known name whose files are missing


def test_datasets_listing(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["datasets", "--data-root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("cora", "tolokers", "twitch-ptbr", "gnnb-citeseer", "synthetic"))
    assert "error" not in out


# --------------------------------------------------------------------------- the real process


def test_process_exit_statuses(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    script = ("import sys\nfrom approxgnn.cli import main\n"
              "for argv in (['train', '--budget', '1.5'], ['train', '--dataset', sys.argv[1]]):\n"
              "    try:\n        code = main(argv)\n    except SystemExit as e:\n        code = e.code\n"
              "    print('status', code)\n"
              "sys.exit(main(['train', '--dataset', 'nope']))\n")
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-c", script, str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["status", "2", "status", "1"], r.stderr
    assert r.returncode == 2 and "unknown dataset 'nope'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "approxgnn.cli", "train", "--fanouts", "0"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "argument --fanouts" in r.stderr


def test_rsc_preset_paper_sets_the_published_configuration_and_flags_override_it():
    from approxgnn.rsc.config import PRESETS, RSCConfig

    ns = cli.build_parser().parse_args(["train", "--engine", "rsc", "--rsc-preset", "paper", "--budget", "0.2"])
    cfg = cli.config_from_args(ns)
    assert cfg.rsc == RSCConfig(**{**PRESETS["paper"], "budget": 0.2})
    assert cfg.rsc.selection == "topk" and cfg.rsc.allocation == "delta"
    plain = cli.config_from_args(cli.build_parser().parse_args(["train", "--engine", "rsc"]))
    assert plain.rsc == RSCConfig()
    assert exit_code(["train", "--engine", "rsc", "--rsc-preset", "fastest"]) == 2


def test_an_old_record_gives_one_configuration_by_config_and_by_resume(tmp_path: Path, stub_run: list) -> None:
    """A config recorded before the mini-batch / history split and before ``input_dropout``
    existed, as result.json (``--config``) and as a checkpoint (``--resume``): both routes give
    the same configuration, and it drops inputs at ``dropout``, as that run did."""
    from approxgnn.history import HistoryConfig
    from approxgnn.minibatch import MiniBatchConfig
    from approxgnn.train.checkpoint import save_checkpoint

    now = TrainConfig(dataset="cora", engine="refresh", model="sage", dropout=0.4, epochs=7,
                      minibatch=MiniBatchConfig(fanouts=[6, 3], batch_size=77, cache_mb=3.0),
                      history=HistoryConfig(policy="gas", staleness=11)).to_dict()
    old = {k: v for k, v in now.items() if k not in ("input_dropout", "preset", "lr_schedule", "dist", "minibatch",
                                                     "history")}
    old["refresh"] = {**now["minibatch"], **{k: v for k, v in now["history"].items()
                                             if k not in ("embedding_share", "switch_time")}}
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    old["out"] = str(run_dir)
    (run_dir / "result.json").write_text(json.dumps({"config": old, "val": 0.5}))
    save_checkpoint(run_dir, {"config": old, "loop": {"epoch": 3}})

    assert exit_code(["train", "--config", str(run_dir / "result.json"), "--out", str(tmp_path / "again")]) == 0
    assert exit_code(["train", "--resume", str(run_dir)]) == 0
    by_config, by_resume = (c.to_dict() for c in stub_run)
    assert {**by_config, "out": None} == {**by_resume, "out": None}
    assert stub_run[0].resolved_input_dropout() == stub_run[1].resolved_input_dropout() == 0.4
    assert (stub_run[0].minibatch.batch_size, stub_run[0].history.policy, stub_run[0].history.staleness) == (77, "gas", 11)


# Each train flag with a value other than its default, and the value the config must then hold.
FLAG_VALUES: dict[str, tuple[list[str], object]] = {
    "--preset": (["refresh"], "refresh"), "--dataset": (["cora"], "cora"), "--data-root": (["/tmp/d"], "/tmp/d"),
    "--split": (["1"], 1), "--model": (["sage"], "sage"), "--engine": (["sample"], "sample"),
    "--layers": (["3", "--fanouts", "5,5,5"], 3), "--hidden": (["33"], 33), "--dropout": (["0.25"], 0.25),
    "--input-dropout": (["0.15"], 0.15), "--batch-norm": ([], True), "--lr": (["0.02"], 0.02),
    "--lr-schedule": (["cosine"], "cosine"), "--weight-decay": (["0.001"], 0.001), "--epochs": (["9"], 9),
    "--seed": (["4"], 4), "--device": (["cpu"], "cpu"), "--out": (["/tmp/o"], "/tmp/o"),
    "--checkpoint-every": (["2"], 2), "--no-progress": ([], False), "--precompute": (["off"], "off"),
    "--no-precompute": ([], "off"), "--precompute-dir": (["/tmp/p"], "/tmp/p"),
    "--precompute-dtype": (["float16"], "float16"), "--precompute-layout": (["split"], "split"), "--budget": (["0.35"], 0.35),
    "--cache-interval": (["7"], 7), "--tune-interval": (["4"], 4), "--switch-time": (["0.6"], 0.6),
    "--allocation": (["uniform"], "uniform"), "--selection": (["importance"], "importance"), "--step": (["0.05"], 0.05),
    "--warmup": (["3"], 3), "--val-guard": ([], True), "--fanouts": (["7,3"], [7, 3]), "--batch-size": (["77"], 77),
    "--cache-mb": (["3.5"], 3.5), "--policy": (["gas"], "gas"), "--rate": (["0.5"], 0.5), "--evict": ([], True),
    "--staleness": (["11"], 11), "--cached-layers": (["0"], [0]), "--embedding-share": (["0.3"], 0.3),
    "--history-switch-time": (["0.4"], 0.4), "--history-start-time": (["0.2"], 0.2),
    "--cached-value": (["aggregate", "--layers", "3", "--fanouts", "5,5,5"], "aggregate"),  # a hidden layer >= 1
    "--hit-fanout": (["2"], 2), "--hit-mix": (["0.3"], 0.3), "--control-variate": (["0.25"], 0.25),
    "--staleness-decay": (["1.5"], 1.5), "--refresh-every": (["4"], 4), "--refresh-rows": (["256"], 256),
    "--history-dtype": (["float16"], "float16"),
    "--eval-batch-size": (["999"], 999), "--eval-fanouts": (["9,4"], [9, 4]), "--eval-nodes": (["500"], 500),
    "--features-on-disk": ([], True), "--features-path": (["/tmp/x.npy"], "/tmp/x.npy"),
    "--feature-store": (["mmap"], "mmap"), "--no-prefetch": ([], False), "--nproc": (["2"], 2),
    "--backend": (["gloo"], "gloo"), "--dist-timeout": (["61"], 61.0), "--dist-eval": (["rank0"], "rank0"),
    "--threads": (["3"], 3), "--lookahead": (["2"], 2), "--lookahead-share": (["0.25"], 0.25),
}


@pytest.mark.parametrize("flag, dest", [(f, d) for f, d, _ in cli._TRAIN_FLAGS])
def test_every_train_flag_reaches_the_recorded_config(flag: str, dest: str) -> None:
    """Each flag alone (on a mini-batch SAGE base, where every group applies) changes exactly its
    own field of the config that result.json records (``TrainConfig.to_dict``), to its value."""
    assert set(FLAG_VALUES) == {f for f, _, _ in cli._TRAIN_FLAGS}, "a new flag needs a line in FLAG_VALUES"
    base = ["train", "--engine", "refresh", "--model", "sage"]
    args, expected = FLAG_VALUES[flag]
    if flag in ("--engine", "--model"):
        base = ["train"]
    plain = cli.config_from_args(cli.build_parser().parse_args(base)).to_dict()
    given = cli.config_from_args(cli.build_parser().parse_args(base + [flag, *args])).to_dict()

    def flat(d: dict) -> dict:  # {"history.staleness": 11, "lr": 0.02, ...}
        return {f"{g}.{k}" if isinstance(v, dict) else g: (v[k] if isinstance(v, dict) else v)
                for g, v in d.items() for k in (v if isinstance(v, dict) else [None])}

    given, plain = flat(given), flat(plain)
    assert given[dest] == expected != plain[dest]
    changed = {k for k in given if given[k] != plain[k]}
    allowed = {dest} | ({"layers", "minibatch.fanouts"} if flag in ("--layers", "--preset", "--cached-value") else set())
    if flag == "--preset":  # the preset's own values come with it
        from approxgnn.train.presets import PRESETS

        allowed |= set(flat(PRESETS["refresh"]))
    assert changed <= allowed, changed - allowed
