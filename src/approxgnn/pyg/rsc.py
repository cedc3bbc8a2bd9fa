r"""RSC for a PyG user's own model: ``model = approximate(model, epochs=E)`` and nothing else changes.

>>> from torch_geometric.nn.models import GCN
>>> from approxgnn.pyg import approximate
>>> model = approximate(GCN(1433, 64, 2, 7), epochs=200)   # then the usual PyG training loop

Every ``GCNConv``, mean ``SAGEConv`` and ``GCN2Conv`` computes the same forward as before
(:mod:`~approxgnn.pyg.convs`), and its backward SpMM becomes RSC's sampled product under a FLOPs
budget ``C`` (:class:`~approxgnn.rsc.SampledPropagation`, spec: docs/rsc.md):

.. math:: \frac{\partial L}{\partial X} \approx \sum_{i \in S} s_i\,\hat A_{\mathrm{off}}[i,:]^\top G[i,:] + \mathrm{diag} \odot G.

**Epochs without a trainer.** A full-batch loop makes one training-mode forward (and backward) of
the model per epoch, so each such forward of the model passed to :func:`approximate` starts the
next epoch of RSC's schedule: ``warmup`` exact epochs, re-allocation every ``tune_interval``
epochs, exact from ``⌊switch_time·E⌋`` on. Forwards in ``eval()`` mode or under ``no_grad`` are
exact and do not count. Calling :meth:`PyGApproximation.on_epoch_start` yourself takes over the
count. With ``epochs=None`` the switch to exact never comes (it needs ``E``).

**Graphs.** The normalised operator is built once per input graph and cached
(:class:`~approxgnn.pyg.adjacency.GraphCache`); RSC binds to the first graph each normalisation
trains on, and any other training graph runs exact (with a warning).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.engine import Engine
from ..ops import spmm
from ..rsc import RSCConfig, SampledPropagation
from .adjacency import GraphCache, GraphEntry, Spec

_UNBOUNDED_EPOCHS = 1 << 62  # epochs=None: a schedule whose switch to exact never comes
ATTR = "_approxgnn"


def _spec_name(spec: Spec) -> str:
    kind, fill, loops, flow = spec
    name = kind if kind != "gcn" else f"gcn(fill={fill:g},self_loops={loops})"
    return name if flow == "source_to_target" else f"{name},{flow}"


class PyGApproximation(Engine):
    """The RSC state of one approximated model: graph cache, one engine per normalisation, epoch count.

    It is an :class:`~approxgnn.nn.Engine`: :meth:`on_epoch_start` (an explicit per-epoch call,
    which turns the automatic count off), :meth:`on_epoch_end` (validation feedback for
    ``val_guard``), :meth:`stats` and :meth:`state_dict`. Get it with :func:`engine_of`.
    """

    VERSION = 1

    def __init__(self, cfg: RSCConfig, epochs: int | None) -> None:
        self.cfg, self.epochs = cfg, epochs
        self.graphs = GraphCache()
        self.bound: dict[Spec, GraphEntry] = {}
        self.epoch = -1  # the epoch running now; -1 before the first training forward
        self.auto = True
        self.exact_layers: list[str] = []
        self._pending: dict[str, dict[str, Any]] = {}
        self._warned = False

    @property
    def planned_epochs(self) -> int:
        return _UNBOUNDED_EPOCHS if self.epochs is None else self.epochs

    # -- the Engine protocol -------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int | None = None) -> None:
        """Start epoch ``epoch`` (of ``num_epochs``, default the ``epochs`` given to approximate)."""
        self.auto = False
        self._start(epoch, num_epochs)

    def on_epoch_end(self, epoch: int, val_metric: float) -> None:
        for e in self.bound.values():
            e.engine.on_epoch_end(epoch, val_metric)

    def stats(self) -> dict[str, Any]:
        """``{"epoch", "exact_layers", "engines": {normalisation: SampledPropagation.stats()}}``."""
        return {"epoch": self.epoch, "exact_layers": list(self.exact_layers),
                "engines": {_spec_name(s): e.engine.stats() for s, e in self.bound.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "epoch": self.epoch, "auto": self.auto, "epochs": self.epochs,
                "engines": {_spec_name(s): {"widths": dict(e.engine.widths), "state": e.engine.state_dict()}
                            for s, e in self.bound.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the count and every engine; an engine whose graph was not seen yet is restored
        when its first training forward builds it."""
        if state.get("version") != self.VERSION:
            raise ValueError(f"unsupported approximate() state (version {state.get('version')!r})")
        self.epoch, self.auto, self.epochs = int(state["epoch"]), bool(state["auto"]), state["epochs"]
        self._pending = dict(state["engines"])
        for spec, e in self.bound.items():
            self._restore(spec, e.engine)

    # -- called by the model's forward pre-hook and by the convs ---------------------------------------
    def _start(self, epoch: int, num_epochs: int | None = None) -> None:
        if num_epochs is not None:
            self.epochs = num_epochs
        self.epoch = epoch
        for e in self.bound.values():
            e.engine.on_epoch_start(epoch, self.planned_epochs)

    def pre_forward(self, module: nn.Module, args: Any) -> None:
        """A training-mode forward with gradients starts the next epoch (unless counted by hand)."""
        if self.auto and module.training and torch.is_grad_enabled():
            self._start(self.epoch + 1)

    def graph(self, conv: nn.Module, x: Any, adj: Any, weight: Tensor | None) -> GraphEntry | None:
        """The cached operator for ``adj`` as ``conv`` normalises it; None for an input left to PyG."""
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point() or not _square_input(adj, x.size(0)):
            return None
        return self.graphs.get(adj, weight, x.size(0), x.dtype, getattr(conv, ATTR + "_spec"))

    def propagate(self, conv: nn.Module, graph: GraphEntry, h: Tensor) -> Tensor:
        """``Â @ h``: through RSC in a training forward that needs the gradient, else exact."""
        if conv.training and torch.is_grad_enabled() and h.requires_grad:
            engine = self._engine(getattr(conv, ATTR + "_spec"), graph)
            if engine is not None:
                layer = getattr(conv, ATTR + "_layer")
                engine.add_layer(layer, h.size(1))
                return engine(h, layer)
        return spmm(graph.op, h)

    def _engine(self, spec: Spec, graph: GraphEntry) -> SampledPropagation | None:
        bound = self.bound.get(spec)
        if bound is None:
            bound = self.bound[spec] = graph
            graph.engine = SampledPropagation(graph.op, graph.row_norm, {}, self.cfg, epochs=self.planned_epochs)
            self._restore(spec, graph.engine)
            graph.engine.on_epoch_start(max(self.epoch, 0), self.planned_epochs)
        if bound is not graph:
            if not self._warned:
                warnings.warn("approximate(): RSC samples the first graph the model trained on; training "
                              "forwards on another graph run exact", stacklevel=4)
                self._warned = True
            return None
        return bound.engine

    def _restore(self, spec: Spec, engine: SampledPropagation) -> None:
        saved = self._pending.pop(_spec_name(spec), None)
        if saved is not None:
            for layer, width in saved["widths"].items():
                engine.add_layer(int(layer), int(width))
            engine.load_state_dict(saved["state"])


def _square_input(adj: Any, n: int) -> bool:
    """An ``edge_index [2, E]`` of integers, or an ``[n, n]`` torch sparse (COO/CSR) or SparseTensor."""
    from torch_geometric.typing import SparseTensor

    if isinstance(adj, SparseTensor):
        return tuple(adj.sizes()) == (n, n)
    if not isinstance(adj, Tensor):
        return False
    if adj.layout in (torch.sparse_coo, torch.sparse_csr):
        return tuple(adj.shape) == (n, n)
    return adj.layout == torch.strided and adj.dim() == 2 and adj.size(0) == 2 and not adj.is_floating_point()


def approximate(model: nn.Module, budget: float = RSCConfig.budget, epochs: int | None = None,
                **rsc_options: Any) -> nn.Module:
    """Make ``model``'s ``GCNConv``/``SAGEConv`` (mean)/``GCN2Conv`` layers train with RSC; returns ``model``.

    Args:
        model: any ``nn.Module`` holding those PyG layers (hand-written, or PyG's ``GCN``,
            ``GraphSAGE``, ...). It is changed in place: the same parameters, the same
            ``state_dict`` keys, the same forward; the optimiser built on it stays valid.
        budget: RSC's ``C`` in (0, 1], the fraction of backward-SpMM FLOPs kept; ``1.0`` trains
            exactly as the plain model does.
        epochs: the epochs the loop will run (``E``), for the switch to exact at ``switch_time·E``.
        **rsc_options: any other :class:`~approxgnn.rsc.RSCConfig` field (``switch_time``,
            ``warmup``, ``selection``, ``cache_interval``, ...).

    Other message-passing layers stay exact, with a warning naming them. ``model.eval()`` (and
    any forward under ``no_grad``) is exact.
    """
    from .convs import APPROX_CLASSES

    from torch_geometric.nn import MessagePassing

    cfg = _config(budget, rsc_options)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer or None, got {epochs!r}")
    ctrl = PyGApproximation(cfg, epochs)
    layer = 0
    for name, m in model.named_modules():
        if type(m) in APPROX_CLASSES.values():
            raise ValueError(f"layer {name or '<model>'} has already been passed through approximate()")
        cls = APPROX_CLASSES.get(type(m))
        reason = cls.unsupported(m) if cls is not None else "not supported"
        if cls is not None and reason is None:
            setattr(m, ATTR + "_spec", cls.spec(m))
            setattr(m, ATTR + "_layer", layer)
            m.__class__ = cls
            setattr(m, ATTR, ctrl)
            layer += 1
        elif isinstance(m, MessagePassing):
            ctrl.exact_layers.append(f"{name or '<model>'} ({type(m).__name__}: {reason})")
    if ctrl.exact_layers:
        warnings.warn("approximate(): these layers stay exact: " + "; ".join(ctrl.exact_layers), stacklevel=2)
    if layer == 0:
        warnings.warn("approximate(): the model holds no GCNConv, mean SAGEConv or GCN2Conv; it is unchanged",
                      stacklevel=2)
        return model
    setattr(model, ATTR, ctrl)
    model.register_forward_pre_hook(ctrl.pre_forward)
    return model


def _config(budget: float, options: dict[str, Any]) -> RSCConfig:
    try:
        return RSCConfig(budget=budget, **options)
    except TypeError:
        valid = sorted(f for f in RSCConfig.__dataclass_fields__ if f != "budget")
        unknown = sorted(set(options) - set(valid))
        raise TypeError(f"approximate(): unknown RSC option(s) {unknown}; valid: {', '.join(valid)}") from None


def engine_of(model: nn.Module) -> PyGApproximation:
    """The RSC state of a model returned by :func:`approximate` (stats, explicit epochs, state_dict)."""
    ctrl = getattr(model, ATTR, None)
    if ctrl is None:
        raise ValueError("this model was not passed through approximate()")
    return ctrl
