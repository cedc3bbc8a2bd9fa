"""Input dropout is its own knob: ``input_dropout`` acts on the raw features only, ``dropout`` on the
hidden representations only, and the per-engine default resolves in one place."""
from __future__ import annotations

import pytest
import torch

from approxgnn.graph import CSRGraph, normalize
from approxgnn.minibatch import MiniBatchConfig
from approxgnn.nn import GCN, GCNII, SAGE, ExactPropagation, build_model
from approxgnn.ops import SparseOperator
from approxgnn.train import TrainConfig, build_trainer, run

from helpers import planted_dataset

N, F_IN = 60, 32
FIRST_LAYER = {GCN: lambda m: m.lins[0], SAGE: lambda m: m.lins_self[0], GCNII: lambda m: m.lin_in}
SECOND_LAYER = {GCN: lambda m: m.lins[1], SAGE: lambda m: m.lins_self[1], GCNII: lambda m: m.lin_out}


def _prop(norm: str) -> ExactPropagation:
    ei = torch.randint(0, N, (2, 300), generator=torch.Generator().manual_seed(1))
    return ExactPropagation(SparseOperator.from_adjacency(normalize(CSRGraph.from_edge_index(ei, N), norm)))


def _inputs_seen(model: torch.nn.Module, cls: type, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the first linear map and a later one receive in one training-mode forward pass."""
    seen: list[torch.Tensor] = []
    hooks = [FIRST_LAYER[cls](model).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone())),
             SECOND_LAYER[cls](model).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))]
    model.train()
    model(x, _prop(model.norm))
    for h in hooks:
        h.remove()
    return seen[0], seen[-1]


@pytest.mark.parametrize("cls", [GCN, SAGE, GCNII])
def test_zero_input_dropout_leaves_features_untouched_while_hidden_dropout_acts(cls: type) -> None:
    torch.manual_seed(0)
    model = cls(F_IN, 64, 3, num_layers=2, dropout=0.5, input_dropout=0.0)
    x = torch.rand(N, F_IN) + 0.5  # no zeros of its own
    first, hidden = _inputs_seen(model, cls, x)
    assert torch.equal(first, x)
    # The hidden representation is dropped: about half of its non-zero entries (ReLU zeroes some
    # of its own) become zero; in GCN and SAGE the survivors are the undropped values times 2.
    # (GCNII also drops before each propagation, so there it is only the zero count.)
    model_off = cls(F_IN, 64, 3, num_layers=2, dropout=0.0, input_dropout=0.0)
    model_off.load_state_dict(model.state_dict())
    _, hidden_off = _inputs_seen(model_off, cls, x)
    kept = hidden != 0
    assert 0.3 < 1 - kept[hidden_off != 0].float().mean() < 0.7
    if cls is not GCNII:
        assert torch.allclose(hidden[kept], 2 * hidden_off[kept], atol=1e-5)


@pytest.mark.parametrize("cls", [GCN, SAGE, GCNII])
def test_input_dropout_drops_features_at_its_own_rate(cls: type) -> None:
    torch.manual_seed(0)
    model = cls(F_IN, 64, 3, num_layers=2, dropout=0.0, input_dropout=0.25)
    x = torch.rand(N, F_IN) + 0.5
    first, hidden = _inputs_seen(model, cls, x)
    dropped = first == 0
    assert 0.15 < dropped.float().mean() < 0.35
    assert torch.allclose(first[~dropped], x[~dropped] / 0.75)
    model.eval()  # evaluation never drops: two passes agree
    with torch.no_grad():
        a = model(x, _prop(model.norm))
        b = model(x, _prop(model.norm))
    assert torch.equal(a, b)


def test_a_model_takes_a_rate_none_is_the_configs_and_bad_values_are_refused() -> None:
    # None means one thing, TrainConfig's "engine family's default"; a model takes a float.
    assert GCN(4, 8, 2, dropout=0.3).input_dropout == 0.0  # inputs untouched unless asked
    assert GCN(4, 8, 2, dropout=0.3, input_dropout=0.3).input_dropout == 0.3  # Kipf's GCN, spelled out
    assert build_model("sage", 4, 8, 2, 2, 0.3, input_dropout=0.2).input_dropout == 0.2
    assert build_model("gcn2", 4, 8, 2, 2, 0.3).input_dropout == 0.0
    with pytest.raises(ValueError, match="TrainConfig resolves"):
        GCN(4, 8, 2, input_dropout=None)
    cfg = TrainConfig(dropout=0.3)
    assert cfg.input_dropout is None and isinstance(cfg.resolved_input_dropout(), float)
    with pytest.raises(ValueError, match="input_dropout"):
        SAGE(4, 8, 2, input_dropout=1.0)
    with pytest.raises(ValueError, match="input_dropout"):
        TrainConfig(input_dropout=-0.1)


@pytest.mark.parametrize("engine", ["exact", "rsc", "sample", "refresh"])
def test_engine_default_reaches_the_model(engine: str) -> None:
    # The measured choice (benchmarks/RESULTS.md, input dropout): every engine family leaves the
    # raw features untouched unless asked. Checked on the model each trainer builds and on the
    # recorded result, not against the table that encodes the choice.
    data = planted_dataset(n=120)
    kw = dict(dataset="planted", engine=engine, model="sage", dropout=0.4, epochs=1, progress=False, precompute="off")
    assert build_trainer(TrainConfig(**kw), data).model.input_dropout == 0.0
    assert build_trainer(TrainConfig(**kw, input_dropout=0.1), data).model.input_dropout == 0.1
    assert run(TrainConfig(**kw), data)["input_dropout"] == 0.0


def test_configs_recorded_before_the_knob_keep_dropping_inputs() -> None:
    # A checkpoint's config from before input_dropout existed: inputs were dropped at `dropout`.
    old = {k: v for k, v in TrainConfig(engine="sample", model="sage", dropout=0.4).to_dict().items()
           if k != "input_dropout"}
    assert TrainConfig.from_dict(old).resolved_input_dropout() == 0.4
    assert TrainConfig.from_dict({**old, "input_dropout": None}).input_dropout is None


@pytest.mark.parametrize("engine", ["exact", "sample"])
@pytest.mark.parametrize("input_dropout", [0.0, 0.3])
def test_training_with_dropout_on_over_several_epochs(engine: str, input_dropout: float) -> None:
    # Dropout on in both places the knobs reach, several optimiser steps over several epochs:
    # the model still learns, and the run records the rate it used.
    data = planted_dataset(n=300)
    cfg = TrainConfig(dataset="planted", model="sage", engine=engine, hidden=32, epochs=12, lr=0.02, dropout=0.5,
                      input_dropout=input_dropout, progress=False,
                      minibatch=MiniBatchConfig(fanouts=[5, 5], batch_size=40, eval_batch_size=64))
    result = run(cfg, data)
    assert result["input_dropout"] == input_dropout
    losses = [c["loss"] for c in result["curve"]]
    assert losses[-1] < losses[0] and result["test"] > 0.6
