"""Multi-process mini-batch training (train/ddp.py): 2 ranks, gloo, loopback, bounded in time.

Worker functions run in spawned ranks (:func:`approxgnn.train.distributed.launch`, with a
deadline so that nothing can hang the suite) and report through a JSON file per rank; the CLI
tests run ``approxgnn train --nproc 2`` and ``torchrun`` as subprocesses with timeouts.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from approxgnn.datasets import Dataset
from approxgnn.datasets.layout_write import write_layout
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
BIG_NODES, BIG_DIM = 80_000, 4_096  # 1.3 GB of float32 in a sparse file: only touched pages cost


def _dataset(spec: dict | None) -> Dataset | None:
    if spec is None:  # the configuration's own data set, loaded by run_rank
        return None
    if spec["kind"] == "planted":
        return planted_dataset(n=spec["n"])
    if spec["kind"] == "big":
        return _big_features_dataset(Path(spec["path"]))
    from approxgnn.datasets import load_dataset

    if spec["kind"] == "layout":
        return load_dataset(spec["path"])

    return load_dataset(spec["kind"], root=spec["root"])


def _big_features_dataset(path: Path) -> Dataset:
    """80k nodes whose features are a 1.3 GB memory-mapped file; 128 nodes in the splits."""
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
        store = self.store.parts[0] if hasattr(self.store, "parts") else self.store  # X, under a joined first hop
        seen["store"] = {"memmap": isinstance(store.x, np.memmap), "file": str(store.x.filename)}
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
                        world_size=result["world_size"], per_rank=result["per_rank"], final=_final(result),
                        last_epoch=result["curve"][-1])
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
                       dist=kw.pop("dist", DistConfig(nproc=2, timeout_s=60)), **{**base, **kw})


# The command line's runs (`--nproc 2`; killed and resumed; torchrun) all train this.
CLI_ARGS = ["train", "--dataset", "synthetic-3k", "--engine", "refresh", "--model", "sage", "--layers", "2",
            "--hidden", "16", "--fanouts", "4,4", "--batch-size", "64", "--cache-mb", "1", "--epochs", "10",
            "--seed", "5", "--no-progress", "--dist-timeout", "60"]


def _cli_config() -> TrainConfig:
    from approxgnn.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(CLI_ARGS + ["--nproc", "2"]))


# Per rank batch size B; one process runs 2B. 600 planted nodes have 200 training nodes: three
# global batches of 64 and one of 8 (4 per rank). `feature`: a raw-feature cache on, no history.
EQUIVALENT = {"sample": ("sample", "none"), "refresh-feature-cache": ("refresh", "feature"),
              "sample-precomputed-first-hop": ("sample", "none")}
EQUIVALENT_KW = {"sample-precomputed-first-hop": {"precompute": "on"}}  # rank 0 builds the table, rank 1 finds it
CORA = dict(dataset="cora", epochs=15, hidden=32, minibatch={"cache_mb": 2.0})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path | None]:
    """One 2-rank launch running every worker job; the shared data's directory if present."""
    tmp = tmp_path_factory.mktemp("ddp")
    big = tmp / "x.npy"
    np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(BIG_NODES, BIG_DIM))  # all holes
    jobs = [{"name": "big", "cfg": _config("refresh", 16, dataset="big", epochs=1, minibatch={"cache_mb": 1.0}),
             "spec": {"kind": "big", "path": str(big)}}]
    jobs += [{"name": name, "cfg": _config(engine, 32, policy=policy, minibatch={"cache_mb": 1.0},
                                           **EQUIVALENT_KW.get(name, {})),
              "spec": {"kind": "planted", "n": 600}} for name, (engine, policy) in EQUIVALENT.items()]
    jobs.append({"name": "sample-rank0-eval", "cfg": _config("sample", 32, policy="none", minibatch={"cache_mb": 1.0},
                                                              dist=DistConfig(nproc=2, timeout_s=60, eval="rank0")),
                 "spec": {"kind": "planted", "n": 600}})
    layout = tmp / "layout"
    write_layout(planted_dataset(n=600), layout)
    jobs.append({"name": "layout-disk", "cfg": _layout_config(layout, 32), "spec": {"kind": "layout", "path": str(layout)}})
    jobs.append({"name": "nan", "cfg": _config("sample", 32, policy="none"), "spec": {"kind": "planted", "n": 600},
                 "nan_rank": 1})
    jobs.append({"name": "cli", "cfg": _cli_config(), "spec": None})  # the uninterrupted --nproc 2 run
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
    cfg = _config(engine, 64, policy=policy, minibatch={"cache_mb": 1.0}, **EQUIVALENT_KW.get(name, {}))
    one = run(cfg, planted_dataset(n=600))
    assert one["precompute"]["path"] == ("precomputed" if cfg.first_hop_path()[0] else "plain")
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
    # The run's counted figures are the sums of the ranks' own (with the feature cache on, the
    # 600 planted nodes fit in it and nothing is read from the store after the first epoch).
    last = ranks[0]["last_epoch"]
    for key in ("feature_bytes_read", "feature_rows_read"):
        assert last[key] == sum(p[key] for p in last["per_rank"])
    if policy == "none":
        assert 0 < last["per_rank"][0]["feature_rows_read"] < last["feature_rows_read"]


def _layout_config(layout: Path, batch_size: int) -> TrainConfig:
    """An on-disk layout read through the disk store, each rank with its own feature cache and look-ahead."""
    return _config("refresh", batch_size, policy="feature", dataset=str(layout),
                   minibatch={"cache_mb": 0.05, "feature_store": "disk", "lookahead": 2})


def test_ranks_train_an_on_disk_layout_through_their_own_disk_stores_and_caches(two_ranks, tmp_path, one_torch_thread):
    from approxgnn.datasets import load_dataset

    ranks = [r["layout-disk"] for r in two_ranks[0]]
    layout = Path(ranks[0]["store"]["file"]).parent
    one = run(_layout_config(layout, 64), load_dataset(str(layout)))
    for r in ranks:
        assert "error" not in r, r.get("error")
        assert max(r["param_diffs"]) == 0.0
        # Both ranks read one file of the layout: the [X | mean] rows rank 0 packed beside x.npy
        # (the first hop is on, --precompute-layout auto), or x.npy itself where it is off.
        assert r["store"]["file"] == ranks[0]["store"]["file"]
        assert Path(r["store"]["file"]).name in ("x.npy", Path(one["precompute"].get("packed_file", "x.npy")).name)
    np.testing.assert_allclose(ranks[0]["loss"], [c["loss"] for c in one["curve"]], rtol=2e-5)
    # Each rank reads pages from disk (pread) and serves rows from its own feature cache and
    # look-ahead buffer; the run's counts are the sums of the ranks'.
    last = ranks[0]["last_epoch"]
    for key in ("feature_rows_read", "disk_bytes_read", "feature_cache_rows_served", "lookahead_rows_served"):
        assert all(p[key] > 0 for p in last["per_rank"]), (key, last["per_rank"])
        assert last[key] == sum(p[key] for p in last["per_rank"])


def test_evaluation_on_rank0_equals_the_sharded_one(two_ranks):
    sharded, rank0 = two_ranks[0][0]["sample"], two_ranks[0][0]["sample-rank0-eval"]
    assert "error" not in rank0, rank0.get("error")
    assert rank0["loss"] == sharded["loss"]  # the same training; only the evaluation differs
    assert (rank0["val"], rank0["test"]) == pytest.approx((sharded["val"], sharded["test"]), abs=1e-6)
    assert two_ranks[0][1]["sample-rank0-eval"]["test"] == rank0["test"]  # broadcast to every rank


def test_history_cache_per_rank_keeps_the_metric_on_cora(two_ranks, one_torch_thread):
    if two_ranks[1] is None:
        pytest.skip("needs the real datasets at ../shared/data")
    from approxgnn.datasets import load_dataset

    ranks = [r["cora"] for r in two_ranks[0]]
    one = run(_config("refresh", 70, **CORA), load_dataset("cora", root=two_ranks[1]))
    assert "error" not in ranks[0], ranks[0].get("error")
    assert max(ranks[0]["param_diffs"]) == 0.0
    assert all(p["hit_rate"] > 0 for p in ranks[0]["per_rank"]), "each rank's cache must serve hits"
    rates = [p["hit_rate"] for p in ranks[0]["last_epoch"]["per_rank"]]
    assert min(rates) <= ranks[0]["last_epoch"]["hit_rate"] <= max(rates)  # from the summed counts
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
def _final(result: dict) -> list:
    return [result["val"], result["test"], result["best_epoch"], result["curve"][-1]["loss"], result["world_size"]]


def _cli(args: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = (launcher or [sys.executable, "-m", "approxgnn"]) + args
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: _stderr can end all of it


def _stderr(p: subprocess.Popen, timeout: float) -> str:
    """``p``'s stderr once it exits; past ``timeout`` its whole process group is killed and the
    test fails (nothing it started outlives the test)."""
    try:
        return p.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"{p.args} did not exit within {timeout} s")


def _result(run_dir: Path) -> list:
    return _final(json.loads((run_dir / "result.json").read_text()))


def _ranks(parent: int) -> list[int]:
    """The ranks ``--nproc`` started: the children of the launcher's children (its fork server)."""
    def children(pid: int) -> list[int]:
        try:
            return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
        except OSError:
            return []

    return [g for c in children(parent) for g in children(c)]


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory) -> tuple[Path, int, str, float]:
    """A ``--nproc 2`` run with a rank SIGKILLed after its second checkpoint, then ``--resume``d:
    the run directory, the killed pid, the killed run's stderr and the seconds it took to exit."""
    out = tmp_path_factory.mktemp("ddp-cli") / "killed"
    p = _cli(CLI_ARGS + ["--nproc", "2", "--out", str(out), "--checkpoint-every", "2"])
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not (out / "checkpoint.prev.pt").exists():
            assert p.poll() is None, "the run ended before it could be killed: make it longer"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ranks = _ranks(p.pid)
        assert len(ranks) == 2, ranks
    except AssertionError:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    victim = max(ranks)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    err = _stderr(p, 90)  # bounded: the collective timeout (60 s) is the worst case
    elapsed = time.monotonic() - t0
    assert p.returncode != 0 and not (out / "result.json").exists(), err
    resumed = _cli(["train", "--resume", str(out), "--no-progress"])
    rerr = _stderr(resumed, DEADLINE_S)
    assert resumed.returncode == 0, rerr
    return out, victim, err, elapsed


def test_killed_rank_stops_the_survivor_then_resume_matches(two_ranks, killed_then_resumed):
    out, victim, err, elapsed = killed_then_resumed
    lost = re.search(rf"rank (\d) \(pid {victim}\) was killed by SIGKILL", err)
    assert lost, err[-2000:]  # the launcher names the rank it lost
    dead = int(lost.group(1))
    assert f"rank {1 - dead}: RankLost: lost rank {dead}" in err, err[-2000:]  # and so does the survivor
    assert elapsed < 60, "the survivor must stop within the collective timeout"
    # Resumed from the last complete checkpoint, the run ends where an uninterrupted one does.
    assert _result(out) == two_ranks[0][0]["cli"]["final"]
    written = json.loads((out / "result.json").read_text())  # by rank 0, with every rank's figures
    assert written["world_size"] == 2 and [p["rank"] for p in written["per_rank"]] == [0, 1]
    assert len(list(out.glob("checkpoint.e*.rank*.pt"))) <= 4  # only the shards of the last two checkpoints


def test_torchrun_gives_the_nproc_result(tmp_path, two_ranks):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this interpreter")
    out = tmp_path / "torchrun"
    p = _cli(["-m", "approxgnn"] + CLI_ARGS + ["--out", str(out)],
             launcher=[str(torchrun), "--standalone", "--nproc-per-node", "2"])
    err = _stderr(p, DEADLINE_S)
    assert p.returncode == 0, err
    assert _result(out) == two_ranks[0][0]["cli"]["final"]  # the uninterrupted --nproc 2 run's


def _usage_error(args: list[str], capsys) -> str:
    from approxgnn.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_resume_with_another_world_size_is_a_usage_error(killed_then_resumed, capsys, monkeypatch):
    out = str(killed_then_resumed[0])
    assert "checkpointed by 2 process(es)" in _usage_error(["train", "--resume", out, "--nproc", "3"], capsys)
    assert "checkpointed by 2 process(es)" in _usage_error(["train", "--resume", out, "--nproc", "1"], capsys)
    # Under torchrun the world size is the launcher's.
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "cannot be resumed by 4" in _usage_error(["train", "--resume", out], capsys)


def test_nproc_with_a_full_batch_engine_is_a_usage_error(capsys, monkeypatch):
    for engine in ("exact", "rsc"):
        assert "mini-batch engines" in _usage_error(["train", "--dataset", "synthetic", "--engine", engine,
                                                     "--nproc", "2"], capsys)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "mini-batch engines" in _usage_error(["train", "--dataset", "synthetic", "--engine", "rsc"], capsys)


def test_more_processes_than_gpus_is_a_usage_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = ["train", "--dataset", "synthetic", "--engine", "sample", "--nproc", "2"]
    assert "but 1 GPU(s)" in _usage_error(args + ["--device", "cuda"], capsys)
    assert "NCCL cannot run 2 processes on one GPU" in _usage_error(args + ["--device", "cuda:0"], capsys)


# ---- collectives stay in the loop -----------------------------------------------------------------
class _CountingContext:
    """A one-rank group (collectives are the identity) that records each collective with the
    function that called it, so that a collective hidden in a helper shows up by name."""

    def __init__(self, device):
        from approxgnn.train.context import LocalContext

        self._local, self.calls = LocalContext(device), []
        self.rank, self.world_size, self.device, self.is_main = 0, 1, device, True
        self.backend, self.threads, self.distributed = "gloo", 1, True

    def __getattr__(self, name):
        import inspect

        method = getattr(self._local, name)

        def call(*args, **kw):
            self.calls.append((name, inspect.stack()[1].function))
            return method(*args, **kw)

        return call


def test_no_collective_hides_outside_the_training_loop(tmp_path) -> None:
    """Every rank must make the same collectives in the same order. The data-parallel trainer's
    collectives per epoch are the loss check of each step and one gather of the epoch's records,
    both called from the loop; building the record, merging the ranks' records, the figures and
    the run facts communicate nothing (rank 0 alone calls some of them). The merged hit rate
    is the engine's own rate of the gathered counts."""
    import torch
    import torch.distributed as dist

    from approxgnn.history import HistoryEngine
    from approxgnn.train.checkpoint import seed_everything
    from approxgnn.train.ddp import DistributedMiniBatchTrainer

    cfg = _config("refresh", 32, dist=DistConfig(nproc=1), epochs=2, dropout=0.3)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        seed_everything(cfg.seed)
        ctx = _CountingContext(torch.device("cpu"))
        trainer = DistributedMiniBatchTrainer(cfg, planted_dataset(n=600), ctx)
        ctx.calls.clear()  # opening the shared feature file broadcast its path
        for epoch in range(cfg.epochs):
            rec = trainer.train_epoch(epoch)
            counts = dict(trainer.history.counts)
            assert rec["hit_rate"] == HistoryEngine.rates(counts)["hit_rate"] and counts["served"] > 0
            steps = rec["batches"]
            assert sorted(ctx.calls) == sorted([("all_values", "finite_guard")] * steps
                                               + [("gather_objects", "train_epoch")])
            ctx.calls.clear()
        trainer.stats(), trainer.run_info(), trainer.merge_ranks([rec], [counts])
        assert ctx.calls == [] and "per_rank" in rec
    finally:
        dist.destroy_process_group()
