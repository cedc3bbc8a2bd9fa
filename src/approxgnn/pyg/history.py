"""ReFresh's history cache in a PyG training loop, on a PyG ``GraphSAGE`` / ``GCN`` model.

:class:`PropagationGNN` runs an unmodified PyG ``BasicGNN`` (its convolutions, norms, activation
and dropout, with its parameters) on approxgnn's :class:`~approxgnn.nn.propagation.Propagation`
interface. Layer ``i`` of a ``SAGEConv`` (mean aggregation) or ``GCNConv`` stack computes

.. math::
    \\text{SAGE: } h_i' = W_l \\operatorname{mean}_{j} h_j + b + W_r h_i
    \\qquad \\text{GCN: } H' = \\hat A (H W) + b,

with the aggregation (``prop(·, i)``) and the target rows (``prop.targets``) supplied by the
propagation, so that the same model runs on sampled blocks with cache hits (training) and on
full neighbourhoods, layer by layer (:func:`~approxgnn.minibatch.layerwise_inference`, exact).
``Â`` is approxgnn's: global degrees, an unbiased rescaling of a sampled row, the self-loop an
exact diagonal (what ``GCNConv`` with its default ``normalize``/``add_self_loops`` computes on a
full neighbourhood). After every hidden layer ``i`` (convolution, norm, activation) the hook
``prop.hidden`` appends the cached rows of layer ``i``'s hits, *before* dropout, as
:class:`~approxgnn.nn.models.SAGE` does.

:class:`HistoryGNN` owns a :class:`~approxgnn.history.HistoryEngine` (the same cache, policies
and byte budget as ``approxgnn train --engine refresh``) and plugs it into a
:class:`~approxgnn.pyg.loader.NeighborBatchLoader` (pruning and serving) and into the model
(pull after the cached layer; :meth:`HistoryGNN.push` admits after the optimiser step).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._hash import mix_key
from ..history import HistoryConfig, HistoryEngine
from ..history.caches import build_caches
from ..minibatch import BlockPropagation, layerwise_inference
from ..minibatch.sampler import PruneTest, SampledBatch
from ..nn.models import FirstHop
from ..nn.propagation import Propagation
from ..state import check_version
from .loader import NeighborBatchLoader


def _conv_kind(conv: nn.Module) -> str:
    """``"mean"`` for a plain mean-aggregating ``SAGEConv``, ``"gcn"`` for a default ``GCNConv``."""
    from torch_geometric.nn import GCNConv, SAGEConv

    if isinstance(conv, SAGEConv):
        if str(conv.aggr) != "mean" or conv.project or conv.normalize or not conv.root_weight:
            raise ValueError("SAGEConv is supported with aggr='mean', root_weight=True, project=False, normalize=False")
        return "mean"
    if isinstance(conv, GCNConv):
        if not (conv.normalize and conv.add_self_loops) or conv.improved:
            raise ValueError("GCNConv is supported with normalize=True, add_self_loops=True, improved=False")
        return "gcn"
    raise ValueError(f"unsupported layer {type(conv).__name__}: PropagationGNN runs SAGEConv and GCNConv stacks")


def _node_ids(nodes: Any, num_nodes: int) -> np.ndarray:
    """``None`` (every node), a bool mask or ids (numpy or torch) → int64 ids."""
    if nodes is None:
        return np.arange(num_nodes, dtype=np.int64)
    ids = np.asarray(nodes.cpu() if isinstance(nodes, Tensor) else nodes)
    return np.flatnonzero(ids) if ids.dtype == np.bool_ else ids.astype(np.int64).ravel()


class PropagationGNN(nn.Module):
    """A PyG ``BasicGNN`` (``GraphSAGE`` or ``GCN``, ``jk=None``) called as ``model(x, prop)``.

    ``norm`` (``"mean"`` or ``"gcn"``) is the block normalisation it needs from a sampler.
    Shapes: ``x [n_0, F]`` (layer 0's sources) → ``[m_{L-1}, C]`` (the last layer's targets).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if getattr(model, "jk_mode", None) is not None or not hasattr(model, "convs"):
            raise ValueError("expected a torch_geometric BasicGNN (GraphSAGE or GCN) built with jk=None")
        kinds = {_conv_kind(c) for c in model.convs}
        if len(kinds) != 1:
            raise ValueError("the model mixes SAGEConv and GCNConv layers")
        self.model, self.norm = model, kinds.pop()

    @property
    def num_layers(self) -> int:
        return len(self.model.convs)

    def forward(self, x: Tensor | FirstHop, prop: Propagation) -> Tensor:
        m = self.model
        last = len(m.convs) - 1
        for i, conv in enumerate(m.convs):
            if i == 0 and isinstance(x, FirstHop):  # layer 0's aggregation precomputed
                # SAGE: W_l mean_j x_j + W_r x_i. GCN: Â(XW) + b = (ÂX)W + b (GCNConv's lin has no bias
                # and adds b after aggregating), so the table's Â1 column gets a zero weight.
                if self.norm == "mean":
                    x = conv.lin_l(x.agg) + conv.lin_r(x.x)
                else:
                    w = conv.lin.weight
                    x = torch.nn.functional.linear(x.agg, torch.cat([w, w.new_zeros(w.size(0), 1)], 1))
                if self.norm == "gcn" and conv.bias is not None:
                    x = x + conv.bias
            elif self.norm == "mean":
                x = conv.lin_l(prop(x, i)) + conv.lin_r(prop.targets(x, i))
            else:
                x = prop(conv.lin(x), i)
                x = x + conv.bias if conv.bias is not None else x
            if i < last:  # BasicGNN's order: [act], norm, [act]; then our hook; then dropout
                if m.act is not None and m.act_first:
                    x = m.act(x)
                x = m.norms[i](x, None, None) if m.supports_norm_batch else m.norms[i](x)
                if m.act is not None and not m.act_first:
                    x = m.act(x)
                x = m.dropout(prop.hidden(x, i))
        return x


class HistoryGNN(nn.Module):
    """``model`` (a PyG ``GraphSAGE``/``GCN``) with a history cache, trained on ``loader``'s batches.

    ``policy``: ``refresh`` (gradient admission, entries expire after ``staleness`` iterations),
    ``gas`` (push everything, never stale), ``feature`` (only a feature cache) or ``none``.
    ``cache_mb``: one byte budget for the feature cache and the history (metadata included).
    ``cached_layers``: hidden layers whose outputs are cached (default the second-to-last).
    ``embedding_share``: the most of the arena embeddings may take from feature rows (default:
    the policy's). ``switch_time`` < 1 trains exactly (no history, the whole budget back to
    feature rows) from epoch ``⌊switch_time · epochs⌋`` of the loader on, and ``start_time`` > 0
    keeps the history idle before epoch ``⌊start_time · epochs⌋`` (a warm start); both need
    ``epochs``, the run's length. What a hit holds and how it is corrected -- ``cached_value``,
    ``hit_fanout``/``hit_mix`` (LMC), ``control_variate`` (VR-GCN), ``staleness_decay`` (VISAGNN),
    ``refresh_every``/``refresh_rows`` (REST) -- and how an entry is stored (``entry_dtype``) are
    :class:`~approxgnn.history.HistoryConfig`'s knobs, the same as ``approxgnn train``'s flags. The
    cache is built as ``approxgnn train --engine refresh`` builds it
    (:func:`~approxgnn.history.caches.build_caches`).

    Its parameters are ``model``'s own (optimise ``model.parameters()``, save ``model.state_dict()``).
    In the loop: ``out = wrapped(batch)[:batch.batch_size]``, ``loss.backward()``,
    ``opt.step()``, then ``wrapped.push(batch)``. Evaluate with :meth:`inference` (exact, layer
    by layer over full neighbourhoods; it never reads the history). To resume, save
    :meth:`history_state_dict` next to the model's and the optimiser's.
    """

    VERSION = 1  # of history_state_dict()

    def __init__(self, model: nn.Module, loader: NeighborBatchLoader, *, cache_mb: float = 64.0,
                 policy: str = "refresh", rate: float = 0.9, staleness: int = 200, evict: bool = False,
                 cached_layers: list[int] | None = None, embedding_share: float | None = None,
                 switch_time: float = 1.0, epochs: int | None = None, start_time: float = 0.0,
                 cached_value: str = "auto", hit_fanout: int | None = None, hit_mix: float = 0.5,
                 control_variate: float | None = None, staleness_decay: float = 0.0,
                 refresh_every: int | None = None, refresh_rows: int = 1024, entry_dtype: str = "float32") -> None:
        super().__init__()
        self.gnn = PropagationGNN(model)
        if loader.sampler.norm != self.gnn.norm:
            raise ValueError(f"the model needs {self.gnn.norm!r} blocks; build the loader with norm={self.gnn.norm!r}")
        if loader.sampler.num_layers != self.gnn.num_layers:
            raise ValueError(f"the loader samples {loader.sampler.num_layers} hop(s) (num_neighbors), "
                             f"the model has {self.gnn.num_layers} layers")
        cfg = HistoryConfig(policy=policy, rate=rate, evict=evict, staleness=staleness, cached_layers=cached_layers,
                            embedding_share=embedding_share, switch_time=switch_time, start_time=start_time,
                            cached_value=cached_value, hit_fanout=hit_fanout, hit_mix=hit_mix,
                            control_variate=control_variate, staleness_decay=staleness_decay,
                            refresh_every=refresh_every, refresh_rows=refresh_rows, entry_dtype=entry_dtype)
        cfg.check_depth(self.gnn.num_layers)
        cfg.cached_value = cfg.resolved_cached_value(self.gnn.norm == "mean", self.gnn.num_layers)
        if cached_value == "aggregate" and self.gnn.norm != "mean":
            raise ValueError("cached_value 'aggregate' caches SAGE's neighbour mean: the model must be GraphSAGE")
        if (switch_time < 1.0 or start_time > 0.0) and (epochs is None or epochs < 1):
            raise ValueError(f"switch_time {switch_time} / start_time {start_time} are fractions of the run: "
                             "give epochs (>= 1)")
        self.loader, self.policy, self.epochs, self.iteration = loader, policy, epochs, 0
        self._pending: tuple[Any, BlockPropagation] | None = None
        self.caches = build_caches(cfg, loader.store, loader.sampler.rowptr, loader.sampler.deg, self.gnn.num_layers,
                                   model.hidden_channels, cache_mb, loader.device, sampler=loader.sampler)
        self.engine: HistoryEngine | None = self.caches.history
        loader.attach(self if self.engine is not None else None, self.caches.features)

    # ---- what the loader asks (the HistoryServer protocol, at this wrapper's iteration) ----
    def prune_tests(self, now: int) -> dict[int, PruneTest]:
        return self.engine.prune_tests(now)

    def serve(self, batch: SampledBatch, now: int, device: torch.device) -> dict[int, Tensor]:
        return self.engine.serve(batch, now, device)

    def on_epoch_start(self, epoch: int) -> None:
        """The loader's call before epoch ``epoch``: per-epoch figures, and the switch to exact."""
        # Without ``epochs`` the switch time is 1 (checked above): the run never switches, and
        # ``epoch + 1`` (the run lasts at least this long) is as good a length as any.
        self.engine.on_epoch_start(epoch, self.epochs if self.epochs is not None else epoch + 1)

    # ---- the training loop -------------------------------------------------------------------
    def forward(self, batch: Any) -> Tensor:
        """Logits ``[batch.batch_size, C]`` of the seeds of a :class:`NeighborBatchLoader` batch:
        layer ``l`` aggregates over its own hop's edges, cached rows join after the cached layers."""
        b = batch.sampled_batch
        record = self.engine is not None and self.training
        prop = self.engine.propagation(b.sample, b.ops, b.served, record) if self.engine is not None \
            else BlockPropagation(b.ops)
        out = self.gnn(self._input(b.x), prop)
        self._pending = (b, prop) if record else None
        return out

    def _input(self, rows: Tensor) -> Tensor | FirstHop:
        """Layer 0's input from the rows the loader read (a :class:`FirstHop` under ``precompute``)."""
        if not self.loader.precompute:
            return rows
        return FirstHop.from_rows(rows, self.gnn.norm, self.loader.num_features)

    def push(self, batch: Any) -> None:
        """After ``optimizer.step()``: admit (and evict) ``batch``'s embeddings under the policy,
        then advance the iteration the next batch is loaded at."""
        if self.engine is not None:
            if self._pending is None or self._pending[0] is not batch.sampled_batch:
                raise RuntimeError("push(batch) must follow a training-mode forward of that same batch")
            b, prop = self._pending
            self.engine.update(b.sample, prop.recorded, b.served, self.iteration)
            self._pending = None
            # REST's forward-only refresh when one is due (the model as the loop trains it)
            self.caches.after_step(self.gnn, self._input, self.iteration, mix_key(self.iteration, 0x5E),
                                   self.loader.device)
        self.iteration += 1

    @torch.no_grad()
    def inference(self, nodes: Any = None, chunk_size: int = 65536, progress: bool = False) -> Tensor:
        """Exact logits ``[len(nodes), C]`` (all nodes by default) over full neighbourhoods, one
        layer at a time, ``chunk_size`` targets per block; the history is never read."""
        loader = self.loader
        ids = _node_ids(nodes, loader.graph.num_nodes)
        was_training = self.training
        try:
            return layerwise_inference(self.gnn, loader.sampler, loader.store, ids, features=loader.features,
                                       chunk_size=chunk_size, device=loader.device, progress=progress,
                                       first_hop=self._input if loader.precompute else None)
        finally:
            self.train(was_training)

    def history_state_dict(self) -> dict[str, Any]:
        """What resuming needs besides the model and optimiser: the cache (or feature cache), the
        iteration and the loader's epoch (its next epoch's batches and samples follow from it)."""
        state: dict[str, Any] = {"version": self.VERSION, "iteration": self.iteration, "epoch": self.loader.epoch,
                                 **self.caches.state_dict()}
        if self.engine is not None:
            state["engine"] = self.engine.state_dict()
        return state

    def load_history_state_dict(self, state: dict[str, Any]) -> None:
        check_version(state, self.VERSION, "HistoryGNN")
        if ("engine" in state) != (self.engine is not None):
            raise ValueError(f"the state was saved with another cache policy than {self.policy!r}")
        if "features" in state:  # the feature cache's key until the caches were built in one place
            state = {**{k: v for k, v in state.items() if k != "features"}, "feature_cache": state["features"]}
        self.iteration, self.loader.epoch = int(state["iteration"]), int(state["epoch"])
        if self.engine is not None:
            self.engine.load_state_dict(state["engine"])
        self.caches.load_state_dict(state)

    def stats(self) -> dict[str, Any]:
        """The history's figures since the epoch began (hit rate, mean age, occupancy, …)."""
        return self.engine.stats() if self.engine is not None else {}
