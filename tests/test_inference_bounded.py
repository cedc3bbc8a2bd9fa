"""Exact inference in bounded memory: features read chunk by chunk through the store, hidden layers
written to disk and read back by row, the same logits as in memory, nothing left behind."""
import numpy as np
import pytest
import torch

from approxgnn.graph import CSRGraph
from approxgnn.minibatch import ArrayFeatureStore, DiskFeatureStore, NeighborSampler, layerwise_inference, write_features
from approxgnn.nn import build_model
from approxgnn.train import TrainConfig, build_trainer, fit
from approxgnn.train import memory

from helpers import planted_dataset


@pytest.mark.parametrize("model_name, layers", [("sage", 3), ("gcn", 3), ("sage", 2)])
def test_bounded_inference_equals_inference_in_memory(tmp_path, model_name, layers):
    data = planted_dataset(n=500, features=12)
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    torch.manual_seed(0)
    model = build_model(model_name, 12, 16, 3, layers, 0.5, True, 0.0)
    with torch.no_grad():  # batch norm with running statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    sampler = NeighborSampler(graph, [5] * layers, model.norm)
    ram = ArrayFeatureStore(data.x)
    disk = DiskFeatureStore(write_features(tmp_path / "x.npy", data.x).filename)
    nodes = np.flatnonzero(data.val_mask | data.test_mask)
    ref = layerwise_inference(model, sampler, ram, nodes, chunk_size=70)
    spill = tmp_path / "spill"
    got = layerwise_inference(model, sampler, disk, nodes, chunk_size=70, stream=True, spill_dir=spill)
    assert got.shape == ref.shape == (len(nodes), 3)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert spill.exists() and not any(spill.iterdir())  # the layer files are gone
    # The features were read through the store, chunk by chunk: no full scan of the table.
    assert 0 < disk.rows_read and disk.disk_bytes_read > 0
    with pytest.raises(ValueError, match="one process"):
        layerwise_inference(model, sampler, disk, nodes, spill_dir=spill, part=(0, 2), gather=lambda t, n: t)


def test_a_failure_midway_leaves_no_layer_files(tmp_path):
    data = planted_dataset(n=300, features=8)
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    model = build_model("sage", 8, 8, 3, 3, 0.0, False, 0.0)
    sampler = NeighborSampler(graph, [5, 5, 5], model.norm)

    class Failing(ArrayFeatureStore):
        def read(self, ids):
            if self.rows_read > 200:
                raise OSError(5, "Input/output error (simulated)")
            return super().read(ids)

    with pytest.raises(OSError, match="simulated"):
        layerwise_inference(model, sampler, Failing(data.x), np.arange(300), chunk_size=16, stream=True,
                            spill_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_trainer_evaluates_in_bounded_memory_when_the_plan_says_layers_do_not_fit(tmp_path, monkeypatch):
    data = planted_dataset(n=600, features=16)
    kw = dict(dataset="planted", model="sage", engine="refresh", layers=3, hidden=16, epochs=3, dropout=0.3,
              progress=False, seed=1)
    rc = {"fanouts": [5, 4, 3], "batch_size": 50, "cache_mb": 0.05, "eval_batch_size": 16, "features_on_disk": True}
    free = fit(build_trainer(TrainConfig.from_dict({**kw, "out": str(tmp_path / "a"), "refresh": rc}), data))
    assert free["evaluation"] == {"stream_features": False, "spill_layers": False}
    # Memory for training but not for two [N, hidden] layers, nor for the feature table.
    training = sum(v for k, v in memory.estimate_bytes(TrainConfig.from_dict({**kw, "refresh": rc}), data).items()
                   if k != "evaluation")
    monkeypatch.setattr(memory, "available_bytes", lambda: training + 1000)
    tight = fit(build_trainer(TrainConfig.from_dict({**kw, "out": str(tmp_path / "b"), "refresh": rc}), data))
    assert tight["evaluation"] == {"stream_features": True, "spill_layers": True}
    for a, b in zip(free["curve"], tight["curve"]):
        assert a["loss"] == b["loss"]
        assert a["val"] == pytest.approx(b["val"], abs=1e-9) and a["test"] == pytest.approx(b["test"], abs=1e-9)
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith("approxgnn-eval-")]


@pytest.mark.parametrize("model_name, first_hop", [("sage", False), ("gcn", False), ("sage", True)])
def test_sampled_inference_with_every_neighbour_is_exact_and_draws_the_same_batches(model_name, first_hop):
    from approxgnn.minibatch.inference import sampled_inference
    from approxgnn.minibatch.stores import first_hop_store
    from approxgnn.nn import FirstHop

    data = planted_dataset(n=400, features=12)
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    torch.manual_seed(0)
    model = build_model(model_name, 12, 16, 3, 3, 0.5, True, 0.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    store, hop = ArrayFeatureStore(data.x), None
    if first_hop:
        store, _ = first_hop_store(graph, store, model.norm)
        hop = lambda rows: FirstHop.from_rows(rows, model.norm, 12)  # noqa: E731
    nodes = np.flatnonzero(data.val_mask | data.test_mask)
    full = NeighborSampler(graph, [-1, -1, -1], model.norm, first_hop=first_hop)
    ref = layerwise_inference(model, full, store, nodes, chunk_size=70, first_hop=hop)
    got = sampled_inference(model, full, store, nodes, batch_size=37, key=5, first_hop=hop)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # Sampled: an estimate, drawn the same at every call with the same key, sharded by slices.
    few = NeighborSampler(graph, [3, 2, 2], model.norm, first_hop=first_hop)
    a = sampled_inference(model, few, store, nodes, batch_size=37, key=5, first_hop=hop)
    assert torch.equal(a, sampled_inference(model, few, store, nodes, batch_size=37, key=5, first_hop=hop))
    assert not torch.allclose(a, ref, atol=1e-3)
    halves = [sampled_inference(model, full, store, nodes, batch_size=37, key=5, first_hop=hop, part=(r, 2))
              for r in range(2)]
    torch.testing.assert_close(torch.cat(halves), ref, rtol=1e-5, atol=1e-5)  # each process its slice, in order


def test_the_trainer_evaluates_sampled_on_a_seeded_sample_of_each_split():
    data = planted_dataset(n=600, features=16)
    rc = {"fanouts": [5, 4, 3], "batch_size": 50, "cache_mb": 0.05}

    def cfg(**mb):
        return TrainConfig.from_dict({"dataset": "planted", "model": "sage", "engine": "refresh", "layers": 3,
                                      "hidden": 16, "epochs": 3, "dropout": 0.3, "progress": False, "seed": 1,
                                      "minibatch": {**rc, **mb}})

    exact = fit(build_trainer(cfg(), data))
    every = fit(build_trainer(cfg(eval_fanouts=[-1, -1, -1]), data))
    # Evaluation does not touch training; with every neighbour it is the exact evaluation.
    assert [c["loss"] for c in every["curve"]] == [c["loss"] for c in exact["curve"]]
    for a, b in zip(every["curve"], exact["curve"]):
        assert a["val"] == pytest.approx(b["val"], abs=1e-9) and a["test"] == pytest.approx(b["test"], abs=1e-9)
    sampled = build_trainer(cfg(eval_fanouts=[4, 3, 2], eval_nodes=25), data)
    assert sampled.eval_plan == {"stream_features": False, "spill_layers": False}
    fit(sampled)
    nodes = sampled.eval_nodes()
    assert np.array_equal(nodes, sampled.eval_nodes())  # the same sample at every evaluation
    for k, m in sampled.split_masks.items():
        assert np.isin(nodes, np.flatnonzero(m)).sum() == min(25, int(m.sum()))
    logits = sampled.infer(nodes)
    assert torch.equal(logits, sampled.infer(nodes)) and logits.shape[0] == len(nodes)
    res = sampled.metrics(logits, nodes)
    assert set(res) == {"train", "val", "test"} and all(0.0 <= v <= 1.0 for v in res.values())
    # The plan counts a sampled batch for evaluation, not two [N, hidden] layers: nothing beyond a
    # training batch when it samples no more, the excess when it samples more.
    assert memory.estimate_bytes(cfg(eval_fanouts=[5, 4, 3]), data)["evaluation"] == 0
    assert memory.estimate_bytes(cfg(), data)["evaluation"] == 2 * 600 * 16 * 4
    with pytest.raises(ValueError, match="eval fanouts"):
        cfg(eval_fanouts=[4, 3])
