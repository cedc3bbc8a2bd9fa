"""Multi-process mini-batch training (train/ddp.py): 2 ranks, gloo, loopback, bounded in time.

Worker functions run in spawned ranks (:func:`approxgnn.train.distributed.launch`, with a
deadline so that nothing can hang the suite) and report through a JSON file per rank; the CLI
tests run ``approxgnn train --nproc 2`` and ``torchrun`` as subprocesses with timeouts.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from approxgnn.datasets import Dataset
from approxgnn.history import HistoryConfig
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.train import TrainConfig, run
from approxgnn.train.config import DistConfig
from approxgnn.train.distributed import launch, shard_batches

from helpers import planted_dataset

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 150  # per launch; a healthy one takes seconds


# ---- shards -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, batch, world", [(200, 32, 2), (201, 32, 2), (129, 64, 2), (65, 32, 2), (10, 4, 3),
                                             (3, 8, 3), (1000, 7, 4)])
def test_shards_disjoint_cover_and_equal(n: int, batch: int, world: int) -> None:
    perm = np.random.default_rng(n).permutation(n)
    shards = [shard_batches(perm, batch, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every rank must run the same number of batches"
    seen = np.concatenate([b for s in shards for b in s])
    assert len(seen) == n and set(seen.tolist()) == set(perm.tolist())  # disjoint and covering
    assert all(len(b) >= 1 for s in shards for b in s)
    # Global batch b is one process's batch b at batch size world*batch (except a merged tail).
    for b in range(len(shards[0]) - 1):
        joined = np.concatenate([shards[r][b] for r in range(world)])
        assert np.array_equal(joined, perm[b * batch * world : (b + 1) * batch * world])


def test_shards_refuse_fewer_seeds_than_ranks() -> None:
    with pytest.raises(ValueError, match="cannot be shared"):
        shard_batches(np.arange(2), 4, 0, 3)


# ---- workers (run inside the spawned ranks) --------------------------------------------------
BIG_NODES, BIG_DIM = 20_000, 16_384  # 1.3 GB of float32 in a sparse file: only touched pages cost


def _dataset(spec: dict) -> Dataset:
    if spec["kind"] == "planted":
        return planted_dataset(n=spec["n"])
    if spec["kind"] == "big":
        return _big_features_dataset(Path(spec["path"]))
    from approxgnn.datasets import load_dataset

    return load_dataset(spec["kind"], root=spec["root"])


def _big_features_dataset(path: Path) -> Dataset:
    """20k nodes whose features are a 1.3 GB memory-mapped file; 128 nodes in the splits."""
    rng = np.random.default_rng(0)
    n = BIG_NODES
    src, dst = rng.integers(0, n, 3 * n), rng.integers(0, n, 3 * n)
    masks = [np.zeros(n, bool) for _ in range(3)]
    chosen = rng.choice(n, 128, replace=False)
    masks[0][chosen[:64]], masks[1][chosen[64:96]], masks[2][chosen[96:]] = True, True, True
    return Dataset("big", np.load(path, mmap_mode="r"), rng.integers(0, 3, n), np.stack([src, dst]), *masks,
                   num_classes=3)


def _worker(jobs: list[dict], report: str) -> int:
    """Run ``jobs`` one after the other as one rank of one process group; for each, record the
    result, the parameter agreement after every step, the feature store and the memory use."""
    import torch
    import torch.distributed as dist

    from approxgnn.train import ddp
    from approxgnn.train.distributed import DistContext

    rank = int(os.environ["RANK"])
    ctx = DistContext.from_env(DistConfig(timeout_s=60), torch.device("cpu"))
    step, forward = ddp.DistributedMiniBatchTrainer.step, ddp.DistributedMiniBatchTrainer._forward
    seen: dict = {}

    def checked_step(self, loss):
        norm = step(self, loss)
        flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        every = [torch.empty_like(flat) for _ in range(self.ctx.world_size)]
        dist.all_gather(every, flat)
        seen["param_diffs"].append(float(max((e - flat).abs().max() for e in every)))
        seen["store"] = {"memmap": isinstance(self.store.x, np.memmap), "file": str(self.store.x.filename)}
        return norm

    def poisoned_forward(self, batch):
        loss, prop = forward(self, batch)
        return (loss * float("nan") if self.iteration >= 3 else loss), prop

    ddp.DistributedMiniBatchTrainer.step = checked_step
    out = {}
    for job in jobs:
        seen = {"param_diffs": []}
        ddp.DistributedMiniBatchTrainer._forward = poisoned_forward if job.get("nan_rank") == rank else forward
        try:
            result = ddp.run_rank(job["cfg"], _dataset(job["spec"]), ctx=ctx)
            seen.update(loss=[c["loss"] for c in result["curve"]], val=result["val"], test=result["test"],
                        world_size=result["world_size"], per_rank=result["per_rank"])
        except Exception as e:  # noqa: BLE001 - reported to the test
            seen["error"] = f"{type(e).__name__}: {e}"
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        seen["rss"] = {k: int(status[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}
        out[job["name"]] = seen
    ctx.close()
    Path(report.format(rank=rank)).write_text(json.dumps(out))
    return 0


def _config(engine: str, batch_size: int, **kw) -> TrainConfig:
    mb = kw.pop("minibatch", {})
    base = dict(dataset="planted", model="sage", layers=2, hidden=16, epochs=3, lr=0.01, dropout=0.0,
                progress=False, seed=3)
    return TrainConfig(engine=engine, minibatch=MiniBatchConfig(fanouts=[4, 4], batch_size=batch_size, **mb),
                       history=HistoryConfig(policy=kw.pop("policy", "refresh"), staleness=4),
                       dist=DistConfig(nproc=2, timeout_s=60), **{**base, **kw})


# Per rank batch size B; one process runs 2B. 600 planted nodes have 200 training nodes: three
# global batches of 64 and one of 8 (4 per rank). `feature`: a raw-feature cache on, no history.
EQUIVALENT = {"sample": ("sample", "none"), "refresh-feature-cache": ("refresh", "feature")}
CORA = dict(dataset="cora", epochs=15, hidden=32, minibatch={"cache_mb": 2.0})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path | None]:
    """One 2-rank launch running every worker job; the shared data's directory if present."""
    tmp = tmp_path_factory.mktemp("ddp")
    big = tmp / "x.npy"
    np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(BIG_NODES, BIG_DIM))  # all holes
    jobs = [{"name": "big", "cfg": _config("refresh", 16, dataset="big", epochs=1, minibatch={"cache_mb": 1.0}),
             "spec": {"kind": "big", "path": str(big)}}]
    jobs += [{"name": name, "cfg": _config(engine, 32, policy=policy, minibatch={"cache_mb": 1.0}),
              "spec": {"kind": "planted", "n": 600}} for name, (engine, policy) in EQUIVALENT.items()]
    jobs.append({"name": "nan", "cfg": _config("sample", 32, policy="none"), "spec": {"kind": "planted", "n": 600},
                 "nan_rank": 1})
    data_dir = (ROOT / ".." / "shared" / "data").resolve()
    if data_dir.is_dir():
        jobs.append({"name": "cora", "cfg": _config("refresh", 35, **CORA), "spec": {"kind": "cora", "root": str(data_dir)}})
    report = str(tmp / "rank{rank}.json")
    code = launch(_worker, 2, (jobs, report), deadline_s=DEADLINE_S)
    assert code == 0, f"launch exited {code}"
    return [json.loads(Path(report.format(rank=r)).read_text()) for r in range(2)], \
        (data_dir if data_dir.is_dir() else None)


@pytest.mark.parametrize("name", list(EQUIVALENT))
def test_two_processes_trace_one_process_at_the_same_global_batch(two_ranks, name, one_torch_thread):
    ranks = [r[name] for r in two_ranks[0]]
    engine, policy = EQUIVALENT[name]
    one = run(_config(engine, 64, policy=policy, minibatch={"cache_mb": 1.0}), planted_dataset(n=600))
    for r in ranks:
        assert "error" not in r, r.get("error")
        assert r["world_size"] == 2
        assert len(r["param_diffs"]) == 3 * 4  # 4 batches per rank and epoch
        assert max(r["param_diffs"]) == 0.0, "parameters differ between the ranks after a step"
        # The features: one memory-mapped file, written by rank 0, opened by both.
        assert r["store"]["memmap"] and r["store"]["file"] == ranks[0]["store"]["file"]
    np.testing.assert_allclose(ranks[0]["loss"], [c["loss"] for c in one["curve"]], rtol=2e-5)
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert abs(ranks[0]["test"] - one["test"]) < 0.01


def test_history_cache_per_rank_keeps_the_metric_on_cora(two_ranks, one_torch_thread):
    if two_ranks[1] is None:
        pytest.skip("needs the real datasets at ../shared/data")
    from approxgnn.datasets import load_dataset

    ranks = [r["cora"] for r in two_ranks[0]]
    one = run(_config("refresh", 70, **CORA), load_dataset("cora", root=two_ranks[1]))
    assert "error" not in ranks[0], ranks[0].get("error")
    assert max(ranks[0]["param_diffs"]) == 0.0
    assert all(p["hit_rate"] > 0 for p in ranks[0]["per_rank"]), "each rank's cache must serve hits"
    assert abs(ranks[0]["test"] - one["test"]) <= 0.01, (ranks[0]["test"], one["test"])


def test_nan_on_one_rank_stops_both_naming_it(two_ranks):
    for r in two_ranks[0]:
        assert r["nan"].get("error", "").startswith("TrainingDiverged: loss became nan on rank 1"), r["nan"]


def test_feature_file_is_mapped_not_copied(two_ranks):
    feature_bytes = BIG_NODES * BIG_DIM * 4
    for r in (ranks["big"] for ranks in two_ranks[0]):
        assert "error" not in r, r.get("error")
        assert r["store"]["memmap"] and r["store"]["file"].endswith("x.npy")
        # Mapped pages are shared page cache (RssFile, stored once however many ranks map them);
        # a private copy of the features would be anonymous memory of at least the feature size.
        assert r["rss"]["RssAnon"] < 0.5 * feature_bytes, r["rss"]


# ---- the command line: faults, resume, torchrun --------------------------------------------------
CLI_ARGS = ["train", "--dataset", "synthetic-3k", "--engine", "refresh", "--model", "sage", "--layers", "2",
            "--hidden", "16", "--fanouts", "4,4", "--batch-size", "64", "--cache-mb", "1", "--epochs", "10",
            "--seed", "5", "--no-progress", "--dist-timeout", "60"]


def _cli(args: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = (launcher or [sys.executable, "-m", "approxgnn"]) + args
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final(run_dir: Path) -> tuple:
    r = json.loads((run_dir / "result.json").read_text())
    return r["val"], r["test"], r["best_epoch"], r["curve"][-1]["loss"], r["world_size"]


def _rank_pid(parent: int, rank: int) -> int | None:
    """The spawned child of ``parent`` started with ``RANK=rank`` in its environment (not the
    multiprocessing resource tracker, which may have inherited the variable)."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and b"spawn_main" in cmd:
                return int(pid)
    return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-cli") / "full"
    p = _cli(CLI_ARGS + ["--nproc", "2", "--out", str(out), "--checkpoint-every", "8"])
    _, err = p.communicate(timeout=DEADLINE_S)
    assert p.returncode == 0, err
    return out


def test_killed_rank_stops_the_survivor_then_resume_matches(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    p = _cli(CLI_ARGS + ["--nproc", "2", "--out", str(out), "--checkpoint-every", "2"])
    deadline = time.monotonic() + DEADLINE_S
    while not (out / "checkpoint.prev.pt").exists():
        assert p.poll() is None, "the run ended before it could be killed: make it longer"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim = _rank_pid(p.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    _, err = p.communicate(timeout=90)  # bounded: the collective timeout (60 s) is the worst case
    assert p.returncode != 0
    assert "rank 0: RankLost: lost rank 1" in err, err[-2000:]
    assert time.monotonic() - t0 < 60
    assert not (out / "result.json").exists()

    resumed = _cli(["train", "--resume", str(out), "--no-progress"])
    _, err = resumed.communicate(timeout=DEADLINE_S)
    assert resumed.returncode == 0, err
    assert _final(out) == _final(uninterrupted)
    assert len(list(out.glob("checkpoint.e*.rank*.pt"))) <= 4  # only the shards of the last two checkpoints


def test_torchrun_gives_the_nproc_result(tmp_path, uninterrupted):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this interpreter")
    out = tmp_path / "torchrun"
    p = _cli(["-m", "approxgnn"] + CLI_ARGS + ["--out", str(out)],
             launcher=[str(torchrun), "--standalone", "--nproc-per-node", "2"])
    _, err = p.communicate(timeout=DEADLINE_S)
    assert p.returncode == 0, err
    assert _final(out) == _final(uninterrupted)


def test_resume_with_another_world_size_is_a_usage_error(tmp_path, uninterrupted):
    run_dir = tmp_path / "copy"
    shutil.copytree(uninterrupted, run_dir)
    if not (run_dir / "checkpoint.pt").exists():
        pytest.skip("the uninterrupted run wrote no checkpoint")
    p = _cli(["train", "--resume", str(run_dir), "--nproc", "3"])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "checkpointed by 2 process(es)" in err, err


def test_nproc_with_a_full_batch_engine_is_a_usage_error():
    p = _cli(["train", "--dataset", "synthetic", "--engine", "rsc", "--nproc", "2"])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "mini-batch engines" in err, err
