"""Mini-batch trainer: exactness against full batch, evaluation, pruning, determinism, resume, CLI."""
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from approxgnn.cli import main
from approxgnn.graph import CSRGraph, normalize
from approxgnn.history import HistoryEngine
from approxgnn.history.cache import HistoryCache
from approxgnn.minibatch import ArrayFeatureStore, BatchLoader, BlockPropagation, NeighborSampler
from approxgnn.nn import ExactPropagation
from approxgnn.ops import SparseOperator
from approxgnn.train import TrainConfig, build_trainer, fit, read_checkpoint, run

from helpers import planted_dataset


def config(**kw) -> TrainConfig:
    rc = {"fanouts": [5, 4], "batch_size": 40, "cache_mb": 0.02, "policy": "refresh", "eval_batch_size": 64}
    rc.update(kw.pop("refresh", {}))
    # The plain path (every hop sampled, rows of X only): these tests count its batches and reads.
    base = {"dataset": "planted", "model": "sage", "engine": "refresh", "layers": 2, "hidden": 16, "epochs": 3,
            "dropout": 0.0, "lr": 0.01, "progress": False, "precompute": "off"}
    base.update(kw)
    return TrainConfig.from_dict({**base, "refresh": rc})  # the pre-split group, mapped by from_dict


def full_batch_reference(trainer, data):
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    op = SparseOperator.from_adjacency(normalize(graph, trainer.model.norm))
    return torch.as_tensor(data.x), ExactPropagation(op)


@pytest.mark.parametrize("model", ["sage", "gcn"])
def test_all_neighbours_without_cache_is_exactly_full_batch(model):
    data = planted_dataset(n=200)
    trainer = build_trainer(config(model=model, layers=3, refresh={"fanouts": [-1, -1, -1], "policy": "none"}), data)
    x, exact = full_batch_reference(trainer, data)
    seeds = np.flatnonzero(data.train_mask)
    batch = trainer.loader.load(seeds, 0, 0)
    trainer.model.train()
    out = trainer.model(batch.x, BlockPropagation(batch.ops))
    F.cross_entropy(out, trainer.y[seeds]).backward()
    grads = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad()
    ref = trainer.model(x, exact)[torch.from_numpy(seeds)]
    F.cross_entropy(ref, trainer.y[seeds]).backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for g, p in zip(grads, trainer.model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)
    # Layer-wise chunked inference (3 chunks per layer) equals the full-batch forward pass.
    trainer.model.eval()
    assert torch.allclose(trainer.infer(), trainer.model(x, exact), atol=1e-5)


def test_batch_norm_model_runs_on_blocks_and_infers_exactly():
    data = planted_dataset(n=200)
    trainer = build_trainer(config(batch_norm=True, dropout=0.1, layers=3, refresh={"fanouts": [4, 3, 2]}), data)
    fit(trainer)
    x, exact = full_batch_reference(trainer, data)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(trainer.infer(), trainer.model(x, exact), atol=1e-4)


def test_evaluation_never_reads_the_history_cache():
    data = planted_dataset(n=300)
    trainer = build_trainer(config(refresh={"cache_mb": 0.05}), data)
    fit(trainer)
    cache = trainer.history.cache
    assert cache.entries > 0
    before = trainer.evaluate()
    lo = cache.max_slots - cache.claimed
    cache.table[lo:] = float("nan")  # poison every stored embedding
    cache.read = None  # and make any read attempt fail
    assert trainer.evaluate() == before


def test_pruned_nodes_are_not_gathered():
    data = planted_dataset(n=300)
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    sampler = NeighborSampler(graph, [6, 4, 3])
    seeds = np.arange(20)
    store = ArrayFeatureStore(data.x)
    plain = BatchLoader(sampler, store, None, torch.device("cpu")).load(seeds, 5, 0)
    bytes_plain = store.bytes_read
    assert bytes_plain == len(plain.sample.input_nodes) * store.row_bytes
    cache = HistoryCache(data.num_nodes, [1], 8, torch.zeros(400 * 8), None, staleness=10)
    one_hop = plain.sample.layer_nodes[1][len(seeds):]
    cache.admit(1, one_hop, torch.randn(len(one_hop), 8), now=0)  # every one-hop node is a fresh hit
    pruned = BatchLoader(sampler, store, HistoryEngine(cache), torch.device("cpu")).load(seeds, 5, 1)
    read = store.bytes_read - bytes_plain
    assert set(pruned.sample.hits(1)) == set(one_hop)
    assert pruned.sample.num_computed[1] == len(seeds) and pruned.served[1].shape == (len(one_hop), 8)
    assert read == len(pruned.sample.input_nodes) * store.row_bytes < bytes_plain
    # Only the seeds' own two-hop tree is gathered: nodes reached only through hits are not.
    assert len(pruned.sample.input_nodes) < len(plain.sample.input_nodes)


def _watch_loads(trainer) -> list:
    """Record every batch the trainer's loader builds, with the thread that built it."""
    seen, load = [], trainer.loader.load

    def watched(*args):
        batch = load(*args)
        seen.append((batch, threading.current_thread()))
        return batch

    trainer.loader.load = watched
    return seen


def _watch_store_reads(store) -> list:
    """Record the ids of every read of ``store`` (a cache's misses, refills, ...)."""
    reads, read = [], store.read

    def watched(ids):
        reads.append(len(ids))
        return read(ids)

    store.read = watched
    return reads


def test_training_writes_refresh_figures(tmp_path):
    """The per-epoch figures equal counts made here, from the batches and the store's reads."""
    data = planted_dataset(n=400)
    trainer = build_trainer(config(epochs=8, batch_norm=True, out=str(tmp_path), refresh={"cache_mb": 0.01}), data)
    seen, reads = _watch_loads(trainer), _watch_store_reads(trainer.store)
    expected = []
    for epoch in range(trainer.cfg.epochs):
        del seen[:], reads[:]
        rec = trainer.train_epoch(epoch)
        samples = [b.sample for b, _ in seen]
        layers = trainer.history.cached_layers
        hits = sum(len(s.hits(l)) for s in samples for l in layers)
        nonseed = sum(len(s.layer_nodes[l]) - len(s.seeds) for s in samples for l in layers)
        expected.append({"hit_rate": hits / nonseed, "feature_rows_read": sum(reads),
                         "feature_bytes_read": sum(reads) * data.num_features * 4, "batches": len(samples),
                         "sampled_nodes_per_hop": np.mean([s.nodes_per_hop() for s in samples], axis=0).round(1).tolist()})
        hops = expected[-1].pop("sampled_nodes_per_hop")
        assert rec["sampled_nodes_per_hop"] == hops
        assert {k: rec[k] for k in expected[-1]} == pytest.approx(expected[-1]), epoch
    assert any(e["hit_rate"] > 0 for e in expected)
    # The run's result repeats them: the curve per epoch, the medians over epochs.
    result = fit(build_trainer(config(epochs=8, batch_norm=True, out=str(tmp_path / "run"),
                                      refresh={"cache_mb": 0.01}), data))
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [c["hit_rate"] for c in saved["curve"]] == pytest.approx([e["hit_rate"] for e in expected])
    assert saved["feature_bytes_read"] == np.median([e["feature_bytes_read"] for e in expected])
    assert saved["hit_rate"] == pytest.approx(np.median([e["hit_rate"] for e in expected]))
    assert result["test"] > 0.6 and saved["engine_stats"]["hit_rate"] == pytest.approx(expected[-1]["hit_rate"])


@pytest.mark.parametrize("policy", ["none", "feature", "gas", "refresh"])
def test_prefetch_changes_nothing_and_runs_repeat(policy):
    """Loading one batch ahead in a worker thread trains exactly as loading inline does; the
    batches were really built on the worker (all but none of them) or inline (all of them)."""
    data = planted_dataset(n=300)
    curves, threads = [], []
    for prefetch in (True, False, True):
        trainer = build_trainer(config(refresh={"policy": policy, "prefetch": prefetch}), data)
        seen = _watch_loads(trainer)
        result = fit(trainer)
        curves.append([(c["loss"], c["val"], c["feature_bytes_read"]) for c in result["curve"]])
        threads.append({t.name.split("_")[0] for _, t in seen})
    assert curves[0] == curves[1] == curves[2]
    assert threads == [{"approxgnn-prefetch"}, {threading.main_thread().name}, {"approxgnn-prefetch"}]


@pytest.mark.parametrize("engine, policy, evict", [
    ("refresh", "refresh", False), ("refresh", "refresh", True), ("refresh", "gas", False),
    ("refresh", "feature", False), ("refresh", "none", False), ("sample", "none", False), ("sample", "feature", False)])
def test_resume_is_exact(tmp_path, engine, policy, evict):
    data = planted_dataset(n=300)
    kw = dict(engine=engine, batch_norm=True, dropout=0.2, refresh={"policy": policy, "evict": evict})
    straight = run(config(epochs=4, **kw), data)
    cfg = config(epochs=2, out=str(tmp_path), checkpoint_every=2, **kw)
    run(cfg, data)
    state = read_checkpoint(tmp_path)
    cfg = config(epochs=4, out=str(tmp_path), checkpoint_every=2, **kw)
    resumed = run(cfg, data, resume_state=state)
    keys = ("loss", "val", "feature_bytes_read", "feature_cache_rows_served", "hit_rate", "occupancy")
    assert [[c.get(k) for k in keys] for c in straight["curve"]] == [[c.get(k) for k in keys] for c in resumed["curve"]]
    if policy in ("gas", "refresh") and engine == "refresh":
        assert straight["curve"][-1]["hit_rate"] > 0


def test_engine_sample_has_no_history_and_bad_setups_fail_clearly():
    data = planted_dataset(n=100)
    trainer = build_trainer(config(engine="sample"), data)
    assert trainer.history is None and trainer.policy == "none"
    with pytest.raises(ValueError, match="fanouts"):
        config(layers=3)  # two fanouts for three layers
    with pytest.raises(ValueError, match="mini-batch"):
        build_trainer(config(model="gcn2"), data)
    with pytest.raises(ValueError, match="hidden layers"):
        build_trainer(config(layers=1, refresh={"fanouts": [3]}), data)


def test_cli_prepare_then_train_from_the_memmap(tmp_path, capsys, shared_data):
    path = tmp_path / "cora.npy"
    assert main(["prepare", "--dataset", "cora", "--data-root", str(shared_data), "--out", str(path)]) == 0
    assert np.load(path, mmap_mode="r").shape == (2708, 1433)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "cora", "--data-root", str(shared_data), "--model", "sage", "--engine", "refresh", "--layers", "2",
                 "--fanouts", "5,5", "--batch-size", "64", "--cache-mb", "1", "--epochs", "2", "--hidden", "16",
                 "--features-path", str(path), "--no-progress", "--out", str(out)])
    assert code == 0
    saved = json.loads((out / "result.json").read_text())
    # auto: a features file that fits in memory is memory-mapped
    assert saved["feature_store"] == "memmap" and saved["policy"] == "refresh"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--engine", "refresh", "--batch-size", "0", "--no-progress"])
    assert exit_.value.code == 2 and "batch_size must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["sample", "refresh"])
def test_minibatch_step_is_guarded_against_nan(engine):
    # The mini-batch trainer takes its steps through the trainer base's guarded step: a NaN loss
    # stops the run before the optimiser touches the parameters.
    from approxgnn.train import TrainingDiverged

    data = planted_dataset(n=200)
    trainer = build_trainer(config(engine=engine), data)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        trainer.train_epoch(0)
    after = list(trainer.model.parameters())
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(before, after))
