"""PyG ``Data`` in and out: from_pyg/to_pyg, ``train.run(cfg, data)``, ``--dataset file.pt``, and
the small conveniences (``python -m approxgnn``, one progress line per epoch off a terminal)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="torch_geometric not installed (pip install 'approxgnn[pyg]')")

from torch_geometric.data import Data  # noqa: E402

from approxgnn import cli  # noqa: E402
from approxgnn.datasets import DatasetError, load_dataset  # noqa: E402
from approxgnn.pyg import from_pyg, load_pt, to_pyg  # noqa: E402
from approxgnn.train import TrainConfig, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_nodes": 300, "num_features": 16, "avg_degree": 6}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic", **SMALL)


def exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:
        return 0 if e.code is None else int(e.code)


def test_to_pyg_and_back_keeps_every_field(ds) -> None:
    data = to_pyg(ds, undirected=False)
    assert isinstance(data, Data) and data.num_nodes == ds.num_nodes and data.num_classes == ds.num_classes
    back = from_pyg(data, name=ds.name)
    np.testing.assert_array_equal(back.x, ds.x)
    np.testing.assert_array_equal(back.y, ds.y)
    np.testing.assert_array_equal(back.edge_index, ds.edge_index)
    for k in ("train_mask", "val_mask", "test_mask"):
        np.testing.assert_array_equal(getattr(back, k), getattr(ds, k))
    assert (back.num_classes, back.metric) == (ds.num_classes, ds.metric)
    # The default gives PyG the graph the library trains on: both directions, no duplicates.
    ei = to_pyg(ds).edge_index
    pairs = set(map(tuple, ei.t().tolist()))
    assert len(pairs) == ei.size(1) and all((j, i) in pairs for i, j in pairs)
    assert all(i != j for i, j in pairs)


def test_from_pyg_reads_adj_t_column_splits_and_rejects_bad_fields(ds) -> None:
    from torch_geometric.utils import to_torch_csr_tensor

    data = to_pyg(ds)
    n = ds.num_nodes
    adj_t = to_torch_csr_tensor(data.edge_index.flip(0), size=(n, n))
    cols = torch.stack([data.train_mask, ~data.train_mask], 1)  # two splits, one per column
    d2 = Data(x=data.x, y=data.y.view(-1, 1), adj_t=adj_t, train_mask=cols, val_mask=data.val_mask,
              test_mask=data.test_mask)
    back = from_pyg(d2, split=1)
    np.testing.assert_array_equal(back.train_mask, ~ds.train_mask)
    assert set(map(tuple, back.edge_index.T.tolist())) == set(map(tuple, data.edge_index.t().tolist()))
    with pytest.raises(DatasetError, match="2 splits; split 2"):
        from_pyg(d2, split=2)
    with pytest.raises(DatasetError, match="no val_mask"):
        from_pyg(Data(x=data.x, y=data.y, edge_index=data.edge_index, train_mask=data.train_mask))
    with pytest.raises(DatasetError, match="edge_index must be integer"):
        from_pyg(Data(x=data.x, y=data.y, edge_index=data.edge_index.float(), train_mask=data.train_mask,
                      val_mask=data.val_mask, test_mask=data.test_mask))


def test_train_run_takes_a_pyg_data_and_trains_as_on_the_dataset(ds) -> None:
    cfg = dict(dataset=ds.name, engine="rsc", hidden=16, epochs=3, progress=False)
    a = run(TrainConfig(**cfg), to_pyg(ds, undirected=False))
    b = run(TrainConfig(**cfg), ds)
    assert a["dataset"] == ds.name and a["curve"][-1]["loss"] == pytest.approx(b["curve"][-1]["loss"], rel=1e-5)
    assert (a["val"], a["test"]) == pytest.approx((b["val"], b["test"]))


def test_cli_trains_on_a_saved_data_file(ds, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "mygraph.pt"
    torch.save(to_pyg(ds), path)
    assert load_pt(path).name == "mygraph"
    out = tmp_path / "run"
    code = exit_code(["train", "--dataset", str(path), "--hidden", "16", "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == str(path) and result["epochs"] == 3
    # Off a terminal (pytest captures stderr), progress is one line per epoch, no bar fragments.
    lines = [l for l in err.splitlines() if " epoch " in l]
    assert [l.split(" epoch ")[1].split()[0] for l in lines] == ["1/3", "2/3", "3/3"], err
    assert "\r" not in err and "val=" in lines[-1]


class NotData:  # a pickled Python object weights_only refuses to build
    pass


@pytest.mark.parametrize("content, message", [
    (NotData(), r"refused to load.*NotData"),
    (torch.zeros(3), "expected a torch_geometric Data, found Tensor"),
    (b"not a torch file", "malformed torch .pt file: torch.load cannot read it"),
])
def test_a_bad_pt_file_is_a_clear_run_failure(tmp_path: Path, capsys: pytest.CaptureFixture, content,
                                              message: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(DatasetError, match=message):
        load_pt(path)
    assert exit_code(["train", "--dataset", str(path), "--epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_a_missing_pt_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert exit_code(["train", "--dataset", "missing.pt", "--epochs", "1"]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "approxgnn", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: approxgnn") and "train" in proc.stdout


def test_the_readme_pyg_example_runs(capsys: pytest.CaptureFixture) -> None:
    """README's "RSC for your own PyG model" script, on a small generated graph for 3 epochs."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## RSC for your own PyG model"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python"))]
    small = code.replace('load_dataset("cora")', f"load_dataset('synthetic', **{SMALL!r})")
    small = small.replace("epochs = 200", "epochs = 3").replace("256, 2", "16, 2")
    assert small.count("synthetic") == 1 and "epochs = 3" in small and "16, 2" in small  # the edits applied
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)  # noqa: S102 -- the README's own example
    from approxgnn.pyg import engine_of

    assert engine_of(scope["model"]).stats()["epoch"] == 2
    assert capsys.readouterr().out.startswith("test accuracy ")
