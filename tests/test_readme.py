"""Every ``approxgnn`` command shown in README.md's code blocks runs and exits 0.

The commands are read from the README itself, so a command that stops working -- or a new one that
never worked -- fails here. Each runs in-process through :func:`approxgnn.cli.main`, in one shared
working directory and in README order, so that chains work (``prepare --out tolokers.npy`` then
``--features-path tolokers.npy``; ``--out runs/big`` then ``--resume runs/big``).

To keep the file within about a minute on 2 CPU cores, each command is changed in these ways, and
only these (see ``adapt``):

* ``train``: ``--epochs 2 --hidden 16 --no-progress`` appended (argparse keeps the last value, so
  these override the README's), plus ``--checkpoint-every 1`` where the command writes checkpoints
  (its ``--resume`` follow-up then has one), and ``--out`` into the working directory where the
  command has none, so that ``result.json`` can be checked. ``--resume`` takes no other flag, so it
  gets only ``--no-progress``.
* dataset names: ``synthetic-1m`` and ``synthetic-2m`` become ``synthetic-20k`` (the same generator
  and knobs, 20k nodes); ``/path/to/graph.npz``, the README's placeholder for the user's own file,
  becomes a small heterophilous-layout npz written by this test, and ``/path/to/graph.pt`` a small
  PyG ``Data`` saved with ``torch.save`` (skipped without torch_geometric).
* ``bench spmm``: ``--nodes 5000 --repeats 1`` appended.

Commands that read ``../shared/data`` (any dataset but the synthetic ones and the placeholder npz,
and ``datasets``) are skipped with a message when that directory is absent, and so is a ``report``
(or ``--resume``) of run directories that such a skipped command would have written. ``make demo`` and
``make test`` are not ``approxgnn`` lines and are not run here.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from approxgnn import cli

from helpers import planted_dataset

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()  # where the Makefile points APPROXGNN_DATA

SUBSTITUTIONS = {"synthetic-1m": "synthetic-20k", "synthetic-2m": "synthetic-20k"}
PLACEHOLDER_NPZ = "/path/to/graph.npz"
PLACEHOLDER_PT = "/path/to/graph.pt"
TRAIN_OVERRIDES = ["--epochs", "2", "--hidden", "16", "--no-progress"]
BENCH_OVERRIDES = {"spmm": ["--nodes", "5000", "--repeats", "1"]}


def readme_commands(text: str) -> list[str]:
    """The ``approxgnn`` command lines of the fenced code blocks, continuations joined, comments cut."""
    commands, in_block, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        elif not re.match(r"(\.venv/bin/)?approxgnn(\s|$)", line):
            continue
        code = re.split(r"\s#", line, maxsplit=1)[0].rstrip()
        if code.endswith("\\"):
            pending = code[:-1].rstrip()
            continue
        commands.append(code)
    return commands


COMMANDS = readme_commands(README.read_text())


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def needs_shared_data(argv: list[str]) -> bool:
    if argv[0] == "datasets":
        return True
    dataset = _value(argv, "--dataset")
    return dataset is not None and not dataset.startswith("synthetic") and dataset not in (PLACEHOLDER_NPZ, PLACEHOLDER_PT)


def adapt(argv: list[str], index: int, workdir: Path) -> list[str]:
    """The README command ``argv`` (without the program name) with the documented changes."""
    argv = [SUBSTITUTIONS.get(a, a) for a in argv]
    if PLACEHOLDER_NPZ in argv:
        argv[argv.index(PLACEHOLDER_NPZ)] = str(_own_npz(workdir))
    if PLACEHOLDER_PT in argv:
        argv[argv.index(PLACEHOLDER_PT)] = str(_own_pt(workdir))
    if argv[0] == "train" and "--resume" in argv:
        return argv + ["--no-progress"]
    if argv[0] == "train":
        argv = argv + TRAIN_OVERRIDES
        if "--checkpoint-every" in argv:
            argv += ["--checkpoint-every", "1"]
        if "--out" not in argv:
            argv += ["--out", f"readme-run-{index}"]
    if argv[0] == "bench":
        argv = argv + BENCH_OVERRIDES.get(argv[1], [])
    return argv


def _own_npz(workdir: Path) -> Path:
    """A user's graph in the heterophilous npz layout, with three splits (the README uses --split 2)."""
    path = workdir / "graph.npz"
    if not path.exists():
        d = planted_dataset(n=200)
        masks = [np.stack([m] * 3) for m in (d.train_mask, d.val_mask, d.test_mask)]
        np.savez(path, node_features=d.x, node_labels=d.y, edges=d.edge_index.T, train_masks=masks[0],
                 val_masks=masks[1], test_masks=masks[2])
    return path


def _own_pt(workdir: Path) -> Path:
    """A user's PyG ``Data``, saved with ``torch.save``."""
    pytest.importorskip("torch_geometric", reason="a .pt Data needs torch_geometric")
    import torch

    from approxgnn.pyg import to_pyg

    path = workdir / "graph.pt"
    if not path.exists():
        torch.save(to_pyg(planted_dataset(n=200)), path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for all the commands, so that a command can use what an earlier one wrote."""
    return tmp_path_factory.mktemp("readme")


def test_every_command_line_of_the_readme_is_extracted() -> None:
    # A second, plainer reading of the README: each line that starts an approxgnn command (code
    # blocks are the only place such lines stand) begins one extracted command, in order, and the
    # continued one carries its next line. A command the extraction misses would go untested.
    lines = README.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"(\.venv/bin/)?approxgnn (train|demo|datasets|prepare|bench|report) ", line)]
    assert len(starts) == len(COMMANDS) >= 10
    for i, command in zip(starts, COMMANDS):
        first = lines[i].split(" #")[0].rstrip().rstrip("\\").rstrip()
        assert command.startswith(first), (first, command)
        if lines[i].rstrip().endswith("\\"):
            assert lines[i + 1].split(" #")[0].strip() in command


@pytest.mark.parametrize("index, command", list(enumerate(COMMANDS)), ids=COMMANDS)
def test_readme_command_runs(index: int, command: str, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture, one_torch_thread: None) -> None:
    argv = shlex.split(command)[1:]  # drop `approxgnn` / `.venv/bin/approxgnn`
    if needs_shared_data(argv):
        if not SHARED_DATA.is_dir():
            pytest.skip(f"needs the real datasets at {SHARED_DATA}, which is absent: {command}")
        monkeypatch.setenv("APPROXGNN_DATA", str(SHARED_DATA))
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # `bench` sets sys.argv and sys.path for its script
    monkeypatch.setattr(sys, "path", list(sys.path))
    resume = _value(argv, "--resume")
    if resume is not None and not (workdir / resume / "checkpoint.pt").exists():
        pytest.skip(f"{command}: the command that writes {resume} did not run (skipped or failed above)")
    runs = argv[1 : argv.index("--out") if "--out" in argv else len(argv)] if argv[0] == "report" else []
    unwritten = [r for r in runs if not (workdir / r / "result.json").exists()]
    if unwritten:
        pytest.skip(f"{command}: the commands that write {', '.join(unwritten)} did not run (skipped or failed above)")
    argv = adapt(argv, index, workdir)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # usage errors exit through SystemExit(2)
        code = e.code
    captured = capsys.readouterr()
    assert code == 0, f"`approxgnn {' '.join(argv)}` exited {code}:\n{captured.err[-2000:]}"
    if argv[0] == "train":
        out = resume or _value(argv, "--out")
        assert (workdir / out / "result.json").exists(), f"no result.json in {out}"
    if argv[0] == "report":
        out = _value(argv, "--out") or "report"
        assert (workdir / out / "report.md").exists(), f"no report.md in {out}"
