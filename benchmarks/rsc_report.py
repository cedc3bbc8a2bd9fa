"""Markdown tables for the RSC sections of RESULTS.md, from the benchmarks' ``--json`` files.

    python benchmarks/rsc_report.py --op rsc_op.json --e2e rsc_e2e.json --ablation rsc_ablation.json \
        --profile rsc_profile_gcn.json [--profile rsc_profile_sage.json ...]

Prints the tables; nothing is measured here.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rsc_e2e import tta_speedup


def _load(path: str | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path else None


def _f(x, nd=1, pct=False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.{nd}f}" if pct else f"{x:.{nd}f}"


def op_table(d: dict) -> str:
    out = ["| graph | d | C | rows kept | nnz kept | exact ms | kernel-matched exact ms | sampled ms (cache warm) "
           "| torch-path sampled ms | resample ms | speedup vs exact | vs kernel-matched | amortised (R=10) | rel. error "
           "| others' CPU |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        out.append(f"| {r['graph']} | {r['d']} | {r['C']} | {_f(r['rows_kept'], 1, True)}% | "
                   f"{_f(r['nnz_kept'], 1, True)}% | {r['exact_ms']:.0f} | {r['kexact_ms']:.0f} | "
                   f"{r['sampled_ms']:.1f} | {r['torch_sampled_ms']:.1f} | {r['resample_ms']:.0f} | "
                   f"**{r['speedup']:.1f}x** | {r['speedup_kernel_matched']:.1f}x | {r['amortised']:.1f}x | "
                   f"{r['rel_err']:.2f} | {r['others_cpu']:.2f} |")
    return "\n".join(out)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def e2e_table(d: dict, variants: list[str] | None = None) -> str:
    runs = d["runs"]
    variants = variants or sorted({r["variant"] for r in runs} - {"exact"}, key=lambda v: (v != "rsc", v))
    out = ["| dataset | model | variant | metric | seeds | exact train s | RSC train s | speedup | time-to-acc. speedup "
           "| reached | exact test | RSC test | Δ test (pp) | FLOPs kept | grad. error | others' CPU (max) |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    # grouped by dataset, then model, each in order of first appearance (runs may be merged files)
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    models = list(dict.fromkeys(r["model"] for r in runs))
    keys = sorted(dict.fromkeys((r["dataset"], r["model"]) for r in runs),
                  key=lambda k: (datasets.index(k[0]), models.index(k[1])))
    for ds, model in keys:
        ex = [r for r in runs if r["dataset"] == ds and r["model"] == model and r["variant"] == "exact"]
        if not ex:
            continue
        for v in variants:
            rs = [r for r in runs if r["dataset"] == ds and r["model"] == model and r["variant"] == v]
            if not rs:
                continue
            # Compare with the exact runs of the same seeds only (a variant may cover fewer).
            seeds = {r["seed"] for r in rs}
            ex_s = [r for r in ex if r["seed"] in seeds] or ex
            et, ets = _mean_std([r["train_time_s"] for r in ex_s])
            em, ems = _mean_std([100 * r["test"] for r in ex_s])
            t, ts = _mean_std([r["train_time_s"] for r in rs])
            m, ms = _mean_std([100 * r["test"] for r in rs])
            kept = [r["flops_kept_approx"] for r in rs if r.get("flops_kept_approx") is not None]
            ge = [r["grad_err"] for r in rs if r.get("grad_err") is not None]
            busy = max([r.get("others_cpu", 0.0) for r in rs + ex_s])
            by_seed = {r["seed"]: r for r in ex_s}
            tta = [tta_speedup(by_seed[r["seed"]], r) for r in rs if r["seed"] in by_seed]
            hit = [x for x in tta if isinstance(x, float)]  # "not reached" or None otherwise
            tta_s = f"{statistics.median(hit):.2f}x" if hit else "not reached"
            out.append(f"| {ds} | {model} | {v} | {rs[0]['metric']} | {len(rs)} | {et:.1f} ± {ets:.1f} | {t:.1f} ± {ts:.1f} | "
                       f"**{et / t:.2f}x** | {tta_s} | {len(hit)}/{len(tta)} | {em:.2f} ± {ems:.2f} | {m:.2f} ± {ms:.2f} | "
                       f"{m - em:+.2f} | "
                       f"{_f(statistics.fmean(kept), 1, True) + '%' if kept else '–'} | "
                       f"{_f(statistics.fmean(ge), 2) if ge else '–'} | {busy:.2f} |")
    return "\n".join(out)


def profile_table(ds: list[dict]) -> str:
    out = ["| dataset | model | engine | s/step | forward SpMM | backward SpMM | linear | dropout | other "
           "| speedup | others' CPU |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in ds:
        for r in d["rows"]:
            out.append(f"| {d['dataset']} | {d['model']} | {r['engine']} | {r['step_s']:.2f} | {r['spmm_fwd']:.2f} | "
                       f"{r['spmm_bwd']:.2f} | {r['linear']:.2f} | {r['dropout']:.2f} | {r['other']:.2f} | "
                       f"{r['speedup']:.2f}x | {r['others_cpu']:.2f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op")
    p.add_argument("--e2e", action="append", default=[], help="rsc_e2e.py --json files (merged)")
    p.add_argument("--ablation")
    p.add_argument("--profile", action="append", default=[])
    a = p.parse_args()
    if a.op:
        print(op_table(_load(a.op)), end="\n\n")
    if a.e2e:
        print(e2e_table({"runs": [r for path in a.e2e for r in _load(path)["runs"]]}), end="\n\n")
    if a.ablation:
        print(e2e_table(_load(a.ablation)), end="\n\n")
    if a.profile:
        print(profile_table([_load(x) for x in a.profile]), end="\n\n")


if __name__ == "__main__":
    main()
