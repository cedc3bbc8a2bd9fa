"""Input dropout on or off: which default should each engine family have?

    flock /tmp/approxgnn-bench.lock python benchmarks/input_dropout.py --json benchmarks/input_dropout.json

Kipf & Welling's GCN drops the raw input features at the hidden rate; PyG's ``BasicGNN`` drops only
hidden representations. For each engine family -- full batch (``exact`` GCN and SAGE) and mini-batch
(``sample`` SAGE) -- every dataset and seed is trained twice with the library's defaults otherwise:
``input_dropout`` equal to ``dropout`` (``same``) and ``input_dropout = 0`` (``zero``). The score is
the test metric at the best-validation epoch (accuracy; ROC-AUC on tolokers and twitch-de).

Every finished run is written to ``--json`` at once, and a rerun skips the runs already there, so an
interrupted sweep resumes. ``--report`` prints the table from the JSON without training.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import _common
import torch

import approxgnn.train.full_batch  # noqa: F401  imported now, not at the first run, so that a long
import approxgnn.train.minibatch  # noqa: F401   sweep runs one version of the code throughout
from approxgnn.train import TrainConfig, run
from approxgnn.train.config import engine_family
from approxgnn.train.results import format_table

# (engine, model): the engine family follows from the engine.
CASES = [("exact", "gcn"), ("exact", "sage"), ("sample", "sage")]
DATASETS = ["cora", "citeseer", "tolokers", "twitch-de"]
SETTINGS = ("same", "zero")


def run_key(engine: str, model: str, dataset: str, seed: int, setting: str) -> str:
    return f"{engine}/{model}/{dataset}/seed{seed}/{setting}"


def one_run(engine: str, model: str, dataset: str, seed: int, setting: str, args: argparse.Namespace) -> dict[str, Any]:
    epochs = args.epochs if engine_family(engine) == "full_batch" else args.minibatch_epochs
    dropout = TrainConfig().dropout  # the library's default hidden dropout
    cfg = TrainConfig(dataset=dataset, data_root=args.data_root, engine=engine, model=model, seed=seed,
                      epochs=epochs, dropout=dropout, input_dropout=dropout if setting == "same" else 0.0,
                      progress=False)
    r = run(cfg)  # loads the data as the CLI does: the seed also draws twitch-de's random split
    return {"engine": engine, "family": engine_family(engine), "model": model, "dataset": dataset, "seed": seed,
            "setting": setting, "input_dropout": cfg.input_dropout, "dropout": dropout, "epochs": epochs,
            "metric": r["metric"], "val": r["val"], "test": r["test"], "best_epoch": r["best_epoch"],
            "train_time_s": round(r["train_time_s"], 2)}


def report(runs: dict[str, dict[str, Any]]) -> str:
    """Per (engine, model, dataset): mean test over seeds for ``same`` and ``zero``; then each
    family's average over its (model, dataset) cells, which decides the default."""
    cells: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in runs.values():
        cell = cells.setdefault((r["engine"], r["model"], r["dataset"]), {s: [] for s in SETTINGS})
        cell[r["setting"]].append(r["test"])
    rows, by_family = [], {}
    for (engine, model, dataset), c in cells.items():
        if not all(c[s] for s in SETTINGS):
            continue
        same, zero = statistics.mean(c["same"]), statistics.mean(c["zero"])
        by_family.setdefault(engine_family(engine), []).append((same, zero))
        rows.append({"engine": engine, "model": model, "dataset": dataset, "seeds": f"{len(c['same'])}/{len(c['zero'])}",
                     "test same": f"{same:.4f} ± {statistics.pstdev(c['same']):.4f}",
                     "test zero": f"{zero:.4f} ± {statistics.pstdev(c['zero']):.4f}",
                     "zero − same (pp)": f"{100 * (zero - same):+.2f}"})
    for fam, pairs in by_family.items():
        same = statistics.mean(p[0] for p in pairs)
        zero = statistics.mean(p[1] for p in pairs)
        rows.append({"engine": f"{fam} average", "model": "", "dataset": f"{len(pairs)} cells", "seeds": "",
                     "test same": f"{same:.4f}", "test zero": f"{zero:.4f}", "zero − same (pp)": f"{100 * (zero - same):+.2f}"})
    return format_table(rows, ["engine", "model", "dataset", "seeds", "test same", "test zero", "zero − same (pp)"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50, help="full-batch epochs (a quarter of the default 200, to fit "
                                                            "72 runs on 2 cores; see RESULTS.md for the best epochs)")
    p.add_argument("--minibatch-epochs", type=int, default=20)
    p.add_argument("--data-root", help="default: $APPROXGNN_DATA")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core to the machine)")
    p.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    p.add_argument("--report", action="store_true", help="print the table from --json and exit")
    a = p.parse_args()
    path = Path(a.json)
    saved = json.loads(path.read_text()) if path.exists() else {}
    runs: dict[str, dict[str, Any]] = saved.get("runs", {})
    if not a.report:
        torch.set_num_threads(a.threads)
        seeds = [int(s) for s in a.seeds.split(",")]
        for dataset in a.datasets.split(","):
            for engine, model in CASES:
                for seed in seeds:
                    for setting in SETTINGS:
                        key = run_key(engine, model, dataset, seed, setting)
                        if key in runs:
                            continue
                        runs[key] = one_run(engine, model, dataset, seed, setting, a)
                        print(key, f"test={runs[key]['test']:.4f}", f"{runs[key]['train_time_s']}s", flush=True)
                        _common.write_json(str(path), {"args": {k: v for k, v in vars(a).items() if k != "report"},
                                                       "runs": runs})
    print(report(runs))


if __name__ == "__main__":
    main()
