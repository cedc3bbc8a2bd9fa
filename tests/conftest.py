"""Shared pytest fixtures."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Once numba's OpenMP team has run a parallel kernel, its idle threads spin-wait, and on a busy
# 2-core machine every later small torch op waits for a core (measured: a 2708x32 dropout+relu
# went from 1.2 ms to 26 ms). Passive waiting must be chosen before libgomp loads, i.e. before torch
# is imported; tests check results, never speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets at ``../shared/data`` (relative to the repo root); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _torch_threads_for_tests() -> Iterator[None]:
    """The suite's graphs are tiny: one intra-op thread is faster than two that spin-wait on each
    other, and keeps the suite quick on a loaded CI machine. Tests check results, never speed."""
    import torch

    from approxgnn import set_threads  # numba's pool would otherwise reset it

    old = torch.get_num_threads()
    set_threads(1, numba_threads=False)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run a test with one torch thread: on a busy 2-core machine, tiny models run ~100x slower
    with two intra-op threads (they spin waiting for each other)."""
    import torch

    from approxgnn import set_threads  # numba's pool would otherwise reset it

    old = torch.get_num_threads()
    set_threads(1, numba_threads=False)
    yield
    torch.set_num_threads(old)
