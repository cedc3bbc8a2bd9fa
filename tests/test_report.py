"""``approxgnn report`` on small real runs of ``approxgnn train``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from approxgnn import cli
from approxgnn.report import COLUMNS, TTA_MARGIN
from approxgnn.train import time_to_reach

from helpers import planted_dataset

# (run directory, train flags): one baseline per family, and a run of another seed with none.
RUNS = {
    "gcn-exact": ["--model", "gcn", "--engine", "exact"],
    "gcn-rsc": ["--model", "gcn", "--engine", "rsc", "--budget", "0.3"],
    "gcn-rsc-seed1": ["--model", "gcn", "--engine", "rsc", "--budget", "0.3", "--seed", "1"],
    "sage-sample": ["--model", "sage", "--engine", "sample", "--batch-size", "64"],
    "sage-refresh": ["--model", "sage", "--engine", "refresh", "--batch-size", "64", "--cache-mb", "0.05",
                     "--staleness", "2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    d = planted_dataset(n=400)
    npz = root / "graph.npz"
    np.savez(npz, node_features=d.x, node_labels=d.y, edges=d.edge_index.T, train_masks=d.train_mask[None],
             val_masks=d.val_mask[None], test_masks=d.test_mask[None])
    for name, flags in RUNS.items():
        argv = ["train", "--dataset", str(npz), "--epochs", "4", "--hidden", "16", "--no-progress",
                "--out", str(root / name), *flags]
        assert cli.main(argv) == 0, name
    return root


def _table(md: str) -> list[dict[str, str]]:
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[1:]]


def test_report_table_and_plot(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                               one_torch_thread: None) -> None:
    dirs = [str(runs / name) for name in RUNS]
    out = tmp_path / "rep"
    assert cli.main(["report", *dirs, "--out", str(out)]) == 0
    assert "| run |" in capsys.readouterr().out
    rows = _table((out / "report.md").read_text())
    assert [r["run"] for r in rows] == list(RUNS) and list(rows[0]) == COLUMNS
    res = {name: json.loads((runs / name / "result.json").read_text()) for name in RUNS}
    base_of = {"gcn-exact": "gcn-exact", "gcn-rsc": "gcn-exact", "sage-sample": "sage-sample",
               "sage-refresh": "sage-sample"}
    for row in rows:
        r = res[row["run"]]
        assert row["test"] == f"{r['test']:.4f}" and row["engine"] == r["engine"]
        base = res.get(base_of.get(row["run"], ""))
        if base is None:  # seed 1 has no baseline among the runs
            assert row["Δtest_pp"] == row["speedup"] == row["tta_speedup"] == "–"
            continue
        assert float(row["Δtest_pp"]) == pytest.approx(100 * (r["test"] - base["test"]), abs=0.006)
        assert float(row["speedup"]) == pytest.approx(base["train_time_s"] / r["train_time_s"], rel=0.01)
        level = base["val"] - TTA_MARGIN
        t_base, t_run = time_to_reach(base["curve"], level), time_to_reach(r["curve"], level)
        if t_run is None:
            assert row["tta_speedup"] == "not reached"
        else:
            assert float(row["tta_speedup"]) == pytest.approx(t_base / t_run, rel=0.01)
    for row in rows:  # bytes read: mini-batch runs only
        mb = res[row["run"]].get("feature_bytes_read")
        assert row["MB_read"] == ("–" if mb is None else f"{mb / 2**20:.3g}")
    assert rows[0]["Δtest_pp"] == "+0.00" and rows[0]["speedup"] == "1"
    import matplotlib.pyplot as plt

    png = out / "curves_graph.png"
    img = plt.imread(png)  # a valid PNG with the curves drawn
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    assert "![curves_graph](curves_graph.png)" in (out / "report.md").read_text()


def test_report_names_a_directory_without_result(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        cli.main(["report", str(runs / "gcn-exact"), str(empty), "--out", str(tmp_path / "rep")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{empty}: no result.json" in err
    assert not (tmp_path / "rep").exists()  # nothing written


def test_tta_speedup_cases() -> None:
    from approxgnn.report import tta_speedup

    def run(vals: list[float], dt: float) -> dict:
        return {"val": max(vals), "curve": [{"time_s": dt * (i + 1), "val": v} for i, v in enumerate(vals)]}

    base = run([0.5, 0.7, 0.8], dt=2.0)  # reaches 0.8 - 0.005 at 6 s
    assert tta_speedup(base, run([0.6, 0.8, 0.8], dt=1.0)) == pytest.approx(3.0)  # there at 2 s
    assert tta_speedup(base, run([0.6, 0.79, 0.79], dt=1.0)) == "not reached"
    assert tta_speedup(base, run([0.6, 0.79], dt=1.0), margin=0.02) == pytest.approx(3.0)
    cut = {"val": 0.9, "curve": base["curve"]}  # its best epoch is not in the curve
    assert tta_speedup(cut, run([0.9], dt=1.0)) is None
