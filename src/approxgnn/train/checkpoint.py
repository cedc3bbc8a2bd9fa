"""Atomic checkpoints: write to a temp file, fsync, rename; the previous file survives a crash.

A run directory holds ``checkpoint.pt`` and the one before it, ``checkpoint.prev.pt``. Loading
takes the newest file that reads back whole, so even a torn ``checkpoint.pt`` (a filesystem
that lost the rename's ordering) costs one checkpoint interval, not the run.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that readers see either the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically, keeping the previous one as ``checkpoint.prev.pt``."""
    run_dir = Path(run_dir)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = run_dir / CHECKPOINT_NAME
    if path.exists():
        os.replace(path, run_dir / PREVIOUS_NAME)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_latest_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The newest checkpoint in ``run_dir`` that loads, and its path."""
    run_dir = Path(run_dir)
    candidates = [p for p in (run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME) if p.exists()]
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {run_dir}: was the run started with --checkpoint-every N?")
    errors = []
    for path in candidates:
        try:
            return load_checkpoint(path), path
        except RuntimeError as e:
            errors.append(str(e))
    raise RuntimeError("no readable checkpoint: " + "; ".join(errors))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors, numbers, strings, dicts only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises a zoo of types for truncated/corrupt files
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e


def rng_state() -> dict[str, Any]:
    """Every global RNG a run draws from, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_parse_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _parse_python_state(text: str) -> tuple:
    import ast

    return ast.literal_eval(text)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
