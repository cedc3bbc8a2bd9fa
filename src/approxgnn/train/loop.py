"""The epoch loop every trainer shares: evaluation, best-validation selection, progress bar,
NaN guard, checkpoints and ``result.json``.

A trainer (full-batch or mini-batch, on the :class:`~.base.Trainer` base) supplies ``train_epoch``
and ``evaluate``; :func:`fit` does the rest, so every engine gets the same bookkeeping and the same
resume semantics, and is driven through the one :class:`~approxgnn.nn.engine.Engine` protocol.
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT_NAME, atomic_write_bytes, load_latest_checkpoint, rng_state, set_rng_state
from ..state import check_version
from .base import Trainer, TrainingDiverged

RESULT_NAME = "result.json"
# Levels below the run's best validation metric at which ``result.json`` records the training time
# first reached (``time_to_val``); other levels, e.g. another run's best, come from ``time_to_reach``.
TIME_TO_VAL_MARGINS = (0.0, 0.005, 0.01, 0.02, 0.05)


def time_to_reach(curve: list[dict[str, Any]], level: float) -> float | None:
    """Training time (s, evaluation excluded) after which the validation metric first reached
    ``level``; ``None`` if it never did. ``curve`` is ``result["curve"]``."""
    for point in curve:
        if point["val"] >= level:
            return float(point["time_s"])
    return None


def time_to_within(curve: list[dict[str, Any]], best: float, margin: float) -> float | None:
    """Training time after which the validation metric first came within ``margin`` of ``best``
    (reached ``best − margin``, less 1e-12 so that a curve's own best counts at margin 0 whatever
    the float rounding of the subtraction); None if it never did."""
    return time_to_reach(curve, best - margin - 1e-12)


def time_to_val(curve: list[dict[str, Any]], best: float) -> dict[str, float | None]:
    """``{"best-0.005": seconds, ...}`` for each margin in :data:`TIME_TO_VAL_MARGINS`."""
    return {f"best-{m:g}": time_to_within(curve, best, m) for m in TIME_TO_VAL_MARGINS}


def interactive() -> bool:
    """Whether progress goes to a terminal. Elsewhere (a log file, CI) bars are not drawn: their
    redraws would fill the log with fragments; :func:`fit` prints one plain line per epoch instead."""
    return sys.stderr.isatty()


def check_out_dir(out: str | os.PathLike | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory."""
    if out is None or resume:
        return
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} exists and is not a directory")
    if not overwrite and ((p / RESULT_NAME).exists() or (p / CHECKPOINT_NAME).exists()):
        raise ValueError(f"--out {p} holds another run; pass --resume {p} to continue it or --overwrite to replace it")


CHECKPOINT_VERSION = 1  # of the checkpoint file's layout (config, model, optimiser, trainer, loop, rng)


def fit(trainer: Trainer, *, resume_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train for ``cfg.epochs`` epochs (continuing ``resume_state`` if given); return the result:
    what ``result.json`` holds, plus ``best_model`` (the best epoch's state dict, not in the JSON)."""
    cfg = trainer.cfg
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    s = _restore(trainer, resume_state) if resume_state is not None else _fresh_loop_state()
    progress = _Progress(cfg, s["epoch"])
    for epoch in progress.bar:
        rec, ev = _train_and_evaluate(trainer, epoch, s, out)
        progress.show(epoch, rec, ev, trainer.stats())
        if out is not None and cfg.checkpoint_every and s["epoch"] % cfg.checkpoint_every == 0:
            t0 = time.perf_counter()
            trainer.write_checkpoint(out, _checkpoint(trainer, s))
            s["checkpoint_time_s"].append(time.perf_counter() - t0)
    progress.bar.close()
    result = _result(trainer, s)
    if out is not None and trainer.is_main:  # in a data-parallel run, rank 0 alone
        atomic_write_bytes(out / RESULT_NAME, json.dumps(result, indent=2, default=_json_default).encode())
    return {**result, "best_model": s["best_model"]}


def _fresh_loop_state() -> dict[str, Any]:
    """The loop's own state (checkpointed as ``loop``): next epoch, best so far, curve, times."""
    return {"epoch": 0, "best_val": -math.inf, "best_test": float("nan"), "best_epoch": -1, "best_model": None,
            "curve": [], "train_time_s": 0.0, "eval_time_s": 0.0, "checkpoint_time_s": []}


def _restore(trainer: Trainer, state: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint into ``trainer`` (model, optimiser, scheduler, trainer, RNGs); return the loop state."""
    check_version(state, CHECKPOINT_VERSION, "checkpoint", absent=1)  # absent: written before the key
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None:  # its epoch count; the current lr is in the optimizer's state
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.load_state_dict(state["trainer"])
    set_rng_state(state["rng"])
    return {**_fresh_loop_state(), **state["loop"]}


def _train_and_evaluate(trainer: Trainer, epoch: int, s: dict[str, Any],
                        out: Path | None) -> tuple[dict[str, Any], dict[str, float]]:
    """One epoch: train (a divergence names the checkpoint kept), step the schedule, evaluate,
    feed the engine, keep the best model; appends to the curve in ``s``."""
    lr = trainer.optimizer.param_groups[0]["lr"]
    try:
        rec = trainer.train_epoch(epoch)
    except TrainingDiverged as e:
        ckpt = out / CHECKPOINT_NAME if out is not None else None
        kept = (f"the last good checkpoint is {ckpt}" if ckpt is not None and ckpt.exists()
                else "no checkpoint was written (use --checkpoint-every N)")
        raise TrainingDiverged(f"{e} at epoch {epoch}; {kept}; try a lower --lr") from None
    rec = {**rec, "lr": lr}
    if trainer.scheduler is not None:  # before the checkpoint, which must hold the next epoch's lr
        trainer.scheduler.step()
    s["train_time_s"] += rec["step_time_s"]
    t0 = time.perf_counter()
    ev = trainer.evaluate()
    s["eval_time_s"] += time.perf_counter() - t0
    trainer.engine.on_epoch_end(epoch, ev["val"])
    if ev["val"] > s["best_val"]:
        s.update(best_val=ev["val"], best_test=ev["test"], best_epoch=epoch,
                 best_model=copy.deepcopy(trainer.model.state_dict()))
    s["curve"].append({"epoch": epoch, "time_s": s["train_time_s"], **rec, **ev})
    s["epoch"] = epoch + 1
    return rec, ev


class _Progress:
    """The epoch bar on a terminal; elsewhere one plain line per epoch (:func:`interactive`)."""

    def __init__(self, cfg: Any, start: int) -> None:
        self.cfg, self.desc = cfg, f"{cfg.engine}:{cfg.model}:{cfg.dataset}"
        self.lines = cfg.progress and not interactive()
        self.bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs,
                        disable=not cfg.progress or self.lines, desc=self.desc, dynamic_ncols=True, leave=False)

    def show(self, epoch: int, rec: dict[str, Any], ev: dict[str, float], stats: dict[str, Any]) -> None:
        post = _postfix(rec, ev, stats)
        self.bar.set_postfix(post, refresh=False)
        if self.lines:
            fields = " ".join(f"{k}={v}" for k, v in post.items())
            print(f"{self.desc} epoch {epoch + 1}/{self.cfg.epochs} {fields}", file=sys.stderr, flush=True)


def _result(trainer: Trainer, s: dict[str, Any]) -> dict[str, Any]:
    """What ``result.json`` records: the best epoch's metrics, times, figures, config and curve."""
    cfg = trainer.cfg
    step_times = [r["step_time_s"] for r in s["curve"]]
    return {
        "dataset": cfg.dataset, "model": cfg.model, "engine": cfg.engine, "metric": trainer.metric,
        "val": s["best_val"], "test": s["best_test"], "best_epoch": s["best_epoch"], "epochs": cfg.epochs,
        "train_time_s": s["train_time_s"], "eval_time_s": s["eval_time_s"],
        "epoch_time_median_s": statistics.median(step_times) if step_times else float("nan"),
        "checkpoint_time_median_s": statistics.median(s["checkpoint_time_s"]) if s["checkpoint_time_s"] else None,
        "time_to_val": time_to_val(s["curve"], s["best_val"]),
        "final": s["curve"][-1] if s["curve"] else None,
        "engine_stats": trainer.stats(),
        **trainer.run_info(),
        "config": cfg.to_dict(),
        "curve": s["curve"],
    }


def _checkpoint(trainer: Trainer, s: dict[str, Any]) -> dict[str, Any]:
    return {"version": CHECKPOINT_VERSION, "config": trainer.cfg.to_dict(), "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            "trainer": trainer.state_dict(),
            "loop": dict(s), "rng": rng_state()}


def read_checkpoint(out: str | os.PathLike) -> dict[str, Any]:
    """The newest readable checkpoint in run directory ``out``."""
    state, path = load_latest_checkpoint(out)
    if path.name != CHECKPOINT_NAME:
        warnings.warn(f"{Path(out) / CHECKPOINT_NAME} is unreadable; resuming from {path}", stacklevel=2)
    return state


def _postfix(rec: dict[str, float], ev: dict[str, float], stats: dict[str, Any]) -> dict[str, str]:
    p = {"loss": f"{rec['loss']:.4f}", "val": f"{ev['val']:.4f}"}
    for k, v in stats.items():
        if isinstance(v, float):
            p[k] = f"{v:.3g}"
        elif isinstance(v, (int, str)):
            p[k] = str(v)
    return p


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
