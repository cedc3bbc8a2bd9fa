"""``set_threads``: a torch thread count that numba's thread pool starting does not undo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# A fresh process, so that numba's pool starts inside it: at a parallel sampler hop (>= 16384 targets).
SCRIPT = """
import numba, numpy as np, torch
from approxgnn import set_threads
from approxgnn.graph import CSRGraph
from approxgnn.minibatch import NeighborSampler
from approxgnn.minibatch.sampler import batch_key
{set_threads}(1)
g = CSRGraph.from_edge_index(np.random.default_rng(0).integers(0, 40000, (2, 200000)), 40000)
NeighborSampler(g, [3], "mean").sample(np.arange(20000), batch_key(0, 0, 0))
print(torch.get_num_threads(), numba.threading_layer())
"""


def _after_sampling(set_threads: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(set_threads=set_threads)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    threads, layer = out.stdout.split()[-2:]
    return int(threads), layer


def test_torch_threads_survive_numbas_pool() -> None:
    # With torch.set_num_threads(1) in place of set_threads, this prints 2 where numba's
    # layer is OpenMP (as here): the pool's start resets the count.
    assert _after_sampling("set_threads")[0] == 1

