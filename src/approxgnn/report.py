"""``approxgnn report RUN_DIR… [--out DIR]``: one Markdown table and validation curves for runs.

Each run directory holds the ``result.json`` that ``approxgnn train --out`` writes. Every run is
compared with its *baseline*: the run of the same dataset, model and seed on the exact engine of
its family -- ``exact`` for the full-batch engines, the cache-less mini-batch run (``sample``, or
any mini-batch run whose cache policy is ``none``) for the mini-batch ones. Columns:

* ``test``: the test metric at the best validation epoch; ``Δtest_pp`` = ``100·(test − test_base)``;
* ``train_s``: training time (evaluation excluded); ``speedup`` = ``train_s_base / train_s``;
* ``tta_speedup``: time to accuracy, ``t_base / t_run`` where ``t`` is the training time after
  which the validation metric first reached ``val_best_base − 0.5 pp``
  (:func:`~approxgnn.train.time_to_reach`); ``not reached`` when the run never got there;
* ``MB_read``: MiB of input features read from the feature store per epoch (median; mini-batch).

A run without a baseline among the given directories gets ``–`` in the comparison columns. The
plots (``curves_<dataset>.png``) show validation metric against training time, one line per run.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .train import time_to_reach
from .train.config import FULL_BATCH_ENGINES
from .train.loop import RESULT_NAME
from .train.results import plot_curves

TTA_MARGIN = 0.005  # time to accuracy: time to reach the baseline's best validation metric minus 0.5 pp
COLUMNS = ["run", "dataset", "model", "engine", "seed", "metric", "test", "Δtest_pp", "train_s", "speedup",
           "tta_speedup", "MB_read"]


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``result.json`` of ``run_dir`` (ValueError naming the directory when there is none)."""
    path = Path(run_dir) / RESULT_NAME
    if not Path(run_dir).is_dir():
        raise ValueError(f"{run_dir}: not a directory (expected a run directory from `approxgnn train --out`)")
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {RESULT_NAME} (not a finished `approxgnn train --out` run)")
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    missing = [k for k in ("dataset", "model", "engine", "metric", "val", "test", "train_time_s", "curve", "config")
               if k not in result]
    if missing:
        raise ValueError(f"{path}: not an approxgnn result (missing {', '.join(missing)})")
    result["run"] = Path(run_dir).name or str(run_dir)
    return result


def _family(r: dict[str, Any]) -> str:
    return "full-batch" if r["engine"] in FULL_BATCH_ENGINES else "mini-batch"


def _is_baseline(r: dict[str, Any]) -> bool:
    return r["engine"] == "exact" if _family(r) == "full-batch" else r.get("policy", "none") == "none"


OWN_POLICY = {"sample": "none", "refresh": "refresh"}  # the cache policy an engine runs unless told


def engine_label(r: dict[str, Any]) -> str:
    """The engine, with the cache policy when it is not the engine's own (``refresh/gas``)."""
    policy = r.get("policy")
    return r["engine"] if policy in (None, OWN_POLICY.get(r["engine"])) else f"{r['engine']}/{policy}"


def find_baseline(r: dict[str, Any], runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first run of ``runs`` that is ``r``'s baseline (module docstring), or None."""
    key = (r["dataset"], r["model"], r["config"].get("seed"), _family(r))
    for b in runs:
        if _is_baseline(b) and (b["dataset"], b["model"], b["config"].get("seed"), _family(b)) == key:
            return b
    return None


def report_row(r: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """One table row for run ``r`` against ``base`` (module docstring)."""
    row: dict[str, Any] = {"run": r["run"], "dataset": r["dataset"], "model": r["model"], "engine": engine_label(r),
                           "seed": r["config"].get("seed"), "metric": r["metric"], "test": r["test"],
                           "Δtest_pp": None, "train_s": r["train_time_s"], "speedup": None, "tta_speedup": None,
                           "MB_read": r["feature_bytes_read"] / 2**20 if "feature_bytes_read" in r else None}
    if base is None:
        return row
    row["Δtest_pp"] = 100.0 * (r["test"] - base["test"])
    row["speedup"] = base["train_time_s"] / r["train_time_s"] if r["train_time_s"] > 0 else None
    row["tta_speedup"] = tta_speedup(base, r)
    return row


def tta_speedup(base: dict[str, Any], r: dict[str, Any], margin: float = TTA_MARGIN) -> float | str | None:
    """Time-to-accuracy speed-up of run ``r`` over ``base`` (both with ``val``, the best validation
    metric, and ``curve``, rows with cumulative training ``time_s`` and ``val``):

    .. math:: \\frac{t_\\text{base}(\\ell)}{t_r(\\ell)}, \\qquad \\ell = \\text{val}_\\text{base} - \\text{margin},

    where :math:`t(\\ell)` is the training time after which the curve first reaches ``ℓ``
    (:func:`~approxgnn.train.time_to_reach`). ``"not reached"`` when ``r`` never got there, None
    when ``base``'s own curve does not (a curve cut short of its best epoch)."""
    level = base["val"] - margin
    t_base, t_run = time_to_reach(base["curve"], level), time_to_reach(r["curve"], level)
    if t_run is None:
        return "not reached"
    return None if t_base is None else t_base / max(t_run, 1e-9)


def _cell(v: Any, column: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if column == "Δtest_pp":
            return f"{v:+.2f}"
        if column == "test":
            return f"{v:.4f}"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (``–`` for a missing value; floats to 3 significant
    digits, ``test`` to 4 decimals, ``Δtest_pp`` signed to 2)."""
    cols = list(columns if columns is not None else (rows[0] if rows else []))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def build_report(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table rows of ``runs`` (each a :func:`load_run` result), in the given order."""
    return [report_row(r, find_baseline(r, runs)) for r in runs]


def plot_runs(runs: Sequence[dict[str, Any]], out: str | os.PathLike) -> list[Path]:
    """``curves_<dataset>.png`` in ``out``: validation metric against training time, one line per run."""
    paths = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        group = [{**r, "label": f"{r['run']} ({engine_label(r)})"} for r in runs if r["dataset"] == dataset]
        name = Path(dataset).stem if os.sep in dataset else dataset  # a dataset given by path: its file name
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        path = Path(out) / f"curves_{safe}.png"
        plot_curves(group, path, title=dataset)
        paths.append(path)
    return paths


def render(runs: Sequence[dict[str, Any]], out: str | os.PathLike) -> tuple[Path, str]:
    """Write ``report.md`` and the plots of ``runs`` (:func:`load_run` results) into ``out``;
    return the Markdown path and the table."""
    Path(out).mkdir(parents=True, exist_ok=True)
    plots = plot_runs(runs, out)
    table = markdown_table(build_report(runs), COLUMNS)
    text = ["# approxgnn report", "", table, "",
            f"Δtest_pp, speedup and tta_speedup are against the run of the same dataset, model and seed on "
            f"`exact` (full batch) or without a cache (mini-batch); tta: time to reach that run's best "
            f"validation metric − {100 * TTA_MARGIN:g} pp. MB_read: feature MiB read per epoch.", ""]
    text += [f"![{p.stem}]({p.name})" for p in plots]
    md = Path(out) / "report.md"
    md.write_text("\n".join(text) + "\n")
    return md, table


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Read ``run_dirs``, write ``report.md`` and the plots into ``out``; return the Markdown path."""
    return render([load_run(d) for d in run_dirs], out)[0]


def prepare(ns: argparse.Namespace) -> Callable[[], int]:
    """The CLI's ``report`` command (``ns.runs``, ``ns.out``): every run is read now, so that a
    directory without ``result.json`` is a usage error (ValueError) before anything is written."""
    runs = [load_run(d) for d in ns.runs]

    def job() -> int:
        md, table = render(runs, ns.out)
        print(table)
        print(f"wrote {md} and the validation curves of {len(runs)} run(s) in {ns.out}")
        return 0

    return job
