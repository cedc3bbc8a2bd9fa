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
(:class:`~approxgnn.pyg.adjacency.GraphCache`), found again by content, so a graph rebuilt in
``forward`` reuses it. RSC binds an engine to every graph the model trains on in its first
training epoch (``DirGNNConv``'s two directions: two engines); a graph first met in a later
training epoch (mini-batches, say) runs exact, with a warning naming the layer.

**PyG's MessagePassing features.** While a layer is explained (``explain=True``, edge masks), has
propagate/message/aggregate hooks, ``decomposed_layers > 1``, an ``edge_weight`` (or sparse values)
that needs a gradient, an instance-level ``message``/``aggregate``/``update``, or runs under
``torch.compile``/TorchScript, its forward is PyG's own (``propagate``): exact, no RSC, counted in
``stats()["fallbacks"]``, and a training forward warns once. An ``_edge_mask`` an explainer left
behind (one that failed part-way) is explanation state, not weights: it stays out of
``state_dict`` and a strict load does not ask for it.
"""
from __future__ import annotations

import os
import sys
import warnings
import weakref
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.engine import Engine
from ..ops import spmm
from ..rsc import RSCConfig, SampledPropagation
from .adjacency import GraphCache, GraphEntry, Spec

_UNBOUNDED_EPOCHS = 1 << 62  # epochs=None: a schedule whose switch to exact never comes
# approximate()'s default RSCConfig.min_layer_flops: below about 4M multiply-adds a layer's backward
# SpMM takes well under a millisecond on a CPU core and scoring/sorting/slicing its rows costs more
# than sampling saves (measured: benchmarks/RESULTS.md, "PyG drop-in"). A drop-in should not be slower.
MIN_LAYER_FLOPS = 1 << 22
ATTR = "_approxgnn"


def _spec_name(spec: Spec) -> str:
    kind, fill, loops, flow = spec
    name = kind if kind != "gcn" else f"gcn(fill={fill:g},self_loops={loops})"
    return name if flow == "source_to_target" else f"{name},{flow}"


class PyGApproximation(Engine):
    """The RSC state of one approximated model: graph cache, one engine per trained graph, epoch count.

    It is an :class:`~approxgnn.nn.Engine`: :meth:`on_epoch_start` (an explicit per-epoch call,
    which turns the automatic count off), :meth:`on_epoch_end` (validation feedback for
    ``val_guard``), :meth:`stats` and :meth:`state_dict`. Get it with :func:`engine_of`.

    Copying a model (``copy.deepcopy``, ``pickle``, ``torch.save``) copies this state through
    :meth:`state_dict`: the copy rebuilds its operators on first use and shares nothing with the
    original (a torch sparse CSR operator can be neither deep-copied nor shared safely).
    """

    VERSION = 1

    def __init__(self, cfg: RSCConfig, epochs: int | None, precompute: bool = True) -> None:
        self.cfg, self.epochs, self.precompute = cfg, epochs, precompute
        # layer -> (weakref to its last input, that input's version, its graph, Â·input or None);
        # not part of the state: a copy or a resumed run rebuilds it in two forwards.
        self._first_hops: dict[int, tuple[Any, int, GraphEntry, Tensor | None]] = {}
        self.graphs = GraphCache()
        self.bound: dict[str, GraphEntry] = {}  # engine name -> its graph
        self.bind_epoch: int | None = None  # graphs are bound in the first training epoch only
        self.epoch = -1  # the epoch running now; -1 before the first training forward
        self.auto = True
        self.exact_layers: list[str] = []
        self.fallbacks: Counter[str] = Counter()
        self.unbound_forwards: Counter[str] = Counter()
        self._pending: dict[str, dict[str, Any]] = {}
        self._warned: set[str] = set()

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
        """``{"epoch", "exact_layers", "fallbacks", "unbound_forwards", "tune_time_s", "graph_builds",
        "engines": {name: SampledPropagation.stats()}}``; ``fallbacks`` counts forwards per
        ``"layer: reason"`` that ran PyG's own propagate, ``unbound_forwards`` training forwards
        per layer on a graph RSC was not bound to, ``tune_time_s`` the budget allocations' time."""
        engines = {name: e.engine.stats() for name, e in self.bound.items()}
        return {"epoch": self.epoch, "exact_layers": list(self.exact_layers), "fallbacks": dict(self.fallbacks),
                "unbound_forwards": dict(self.unbound_forwards), "graph_builds": self.graphs.builds,
                "tune_time_s": sum(e.engine.tune_time_s for e in self.bound.values()), "engines": engines}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "epoch": self.epoch, "auto": self.auto, "epochs": self.epochs,
                "engines": {**self._pending,
                            **{name: {"widths": dict(e.engine.widths), "state": e.engine.state_dict()}
                               for name, e in self.bound.items()}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the count and every engine; an engine whose graph was not seen yet is restored
        when its first training forward builds it."""
        if state.get("version") != self.VERSION:
            raise ValueError(f"unsupported approximate() state (version {state.get('version')!r})")
        self.epoch, self.auto, self.epochs = int(state["epoch"]), bool(state["auto"]), state["epochs"]
        self._pending = dict(state["engines"])
        for name, e in self.bound.items():
            self._restore(name, e.engine)

    # -- copies and pickles ---------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "epochs": self.epochs, "precompute": self.precompute, "state": self.state_dict(),
                "bind_epoch": self.bind_epoch,
                "exact_layers": self.exact_layers, "fallbacks": self.fallbacks,
                "unbound_forwards": self.unbound_forwards, "warned": self._warned}

    def __setstate__(self, s: dict[str, Any]) -> None:
        self.__init__(s["cfg"], s["epochs"], s.get("precompute", True))  # type: ignore[misc]
        self.load_state_dict(s["state"])
        self.bind_epoch, self.exact_layers = s["bind_epoch"], list(s["exact_layers"])
        self.fallbacks, self.unbound_forwards = Counter(s["fallbacks"]), Counter(s["unbound_forwards"])
        self._warned = set(s["warned"])

    # -- called by the model's forward pre-hook and by the convs ---------------------------------------
    def _start(self, epoch: int, num_epochs: int | None = None) -> None:
        if num_epochs is not None:
            self.epochs = num_epochs
        self.epoch = epoch
        for e in self.bound.values():
            e.engine.on_epoch_start(epoch, self.planned_epochs)

    def pre_forward(self, module: nn.Module, args: Any) -> None:
        """A training-mode forward with gradients starts the next epoch (unless counted by hand)."""
        if self.auto and module.training and torch.is_grad_enabled() and not _compiling():
            self._start(self.epoch + 1)

    def fallback_reason(self, conv: nn.Module, weight: Any) -> str | None:
        """Why ``conv`` must run PyG's own ``propagate`` now (None: the cached operator may serve)."""
        if _compiling():
            return "torch.compile/TorchScript"
        if getattr(conv, "explain", None):
            return "explain"
        hooks = [h for h in _PYG_HOOKS if getattr(conv, h, None)]
        if hooks:
            return "hooks (" + ", ".join(h.strip("_").replace("_forward", "") for h in hooks) + ")"
        if getattr(conv, "decomposed_layers", 1) != 1:
            return "decomposed_layers > 1"
        if isinstance(weight, Tensor) and weight.requires_grad:
            return "edge_weight requires grad"
        overridden = [f for f in _PYG_STAGES if f in conv.__dict__]
        if overridden:
            return "instance " + "/".join(overridden)
        return None

    def fell_back(self, conv: nn.Module, reason: str) -> None:
        name = getattr(conv, ATTR + "_name")
        self.fallbacks[f"{name}: {reason}"] += 1
        if conv.training and torch.is_grad_enabled() and f"{name}:{reason}" not in self._warned:
            self._warned.add(f"{name}:{reason}")
            _warn_user(f"approximate(): {name} ({_base_name(conv)}) runs PyG's own propagate while {reason} is "
                       "in use: exact, no RSC for this forward")

    def graph(self, conv: nn.Module, x: Any, adj: Any, weight: Tensor | None) -> GraphEntry | None:
        """The cached operator for ``adj`` as ``conv`` normalises it; None for an input left to PyG."""
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point() or not _square_input(adj, x.size(0)):
            self.fell_back(conv, "input other than x [N, F] with an [N, N] graph")
            return None
        if _needs_grad(adj):
            self.fell_back(conv, "adjacency values require grad")
            return None
        return self.graphs.get(adj, weight, x.size(0), x.dtype, getattr(conv, ATTR + "_spec"))

    def first_hop(self, conv: nn.Module, graph: GraphEntry, x: Tensor) -> Tensor | None:
        """``Â @ x`` computed once, for an input no gradient reaches that this layer saw in its
        previous forward too (the same tensor, unmodified: the model's raw features); else None
        and the layer aggregates as usual. A fresh input every call (e.g. one dropped out before
        the layer, or a hidden activation under ``no_grad``) never matches, so it costs nothing.
        From the second sight on the layer has no SpMM, so RSC stops budgeting it."""
        if not self.precompute or x.requires_grad:
            return None
        layer = getattr(conv, ATTR + "_layer")
        seen = self._first_hops.get(layer)
        if seen is None or seen[0]() is not x or seen[1] != x._version or seen[2] is not graph:
            self._first_hops[layer] = (weakref.ref(x), x._version, graph, None)
            return None
        if seen[3] is None:
            seen = self._first_hops[layer] = (*seen[:3], spmm(graph.op, x))
            if graph.engine is not None:
                graph.engine.remove_layer(layer)
        return seen[3]

    def propagate(self, conv: nn.Module, graph: GraphEntry, h: Tensor) -> Tensor:
        """``Â @ h``: through RSC in a training forward that needs the gradient, else exact."""
        if conv.training and torch.is_grad_enabled() and h.requires_grad:
            engine = self._engine(conv, graph)
            if engine is not None:
                layer = getattr(conv, ATTR + "_layer")
                engine.add_layer(layer, h.size(1))
                return engine(h, layer)
        return spmm(graph.op, h)

    def _engine(self, conv: nn.Module, graph: GraphEntry) -> SampledPropagation | None:
        if graph.engine is not None:
            return graph.engine
        spec = getattr(conv, ATTR + "_spec")
        same_spec = sum(1 for e in self.bound.values() if e.spec == spec)
        name = _spec_name(spec) + (f"/graph{same_spec}" if same_spec else "")
        if self.bind_epoch is not None and self.epoch != self.bind_epoch and name not in self._pending:
            layer = getattr(conv, ATTR + "_name")
            self.unbound_forwards[layer] += 1
            if f"unbound:{layer}" not in self._warned:
                self._warned.add(f"unbound:{layer}")
                _warn_user(f"approximate(): {layer} ({_base_name(conv)}) trains on a graph first seen after the "
                           f"first training epoch; RSC samples the graphs of epoch {self.bind_epoch} only, so this "
                           "layer runs exact on it")
            return None
        if self.bind_epoch is None:
            self.bind_epoch = self.epoch
        graph.spec, graph.name = spec, name
        graph.engine = SampledPropagation(graph.op, graph.row_norm, {}, self.cfg, epochs=self.planned_epochs)
        self.bound[name] = graph
        self._restore(name, graph.engine)
        graph.engine.on_epoch_start(max(self.epoch, 0), self.planned_epochs)
        return graph.engine

    def _restore(self, name: str, engine: SampledPropagation) -> None:
        saved = self._pending.pop(name, None)
        if saved is not None:
            for layer, width in saved["widths"].items():
                engine.add_layer(int(layer), int(width))
            engine.load_state_dict(saved["state"])


# PyG's hook registries on a MessagePassing layer, and the stages a user may replace on an instance.
_PYG_HOOKS = ("_propagate_forward_pre_hooks", "_propagate_forward_hooks", "_message_forward_pre_hooks",
              "_message_forward_hooks", "_aggregate_forward_pre_hooks", "_aggregate_forward_hooks",
              "_message_and_aggregate_forward_pre_hooks", "_message_and_aggregate_forward_hooks")
_PYG_STAGES = ("message", "aggregate", "message_and_aggregate", "update")


def _compiling() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing()


def _needs_grad(adj: Any) -> bool:
    from torch_geometric.typing import SparseTensor

    if isinstance(adj, SparseTensor):
        v = adj.storage.value()
        return v is not None and v.requires_grad
    return isinstance(adj, Tensor) and adj.requires_grad


def _base_name(conv: nn.Module) -> str:
    # the PyG class the approximated one derives from
    return next(c.__name__ for c in type(conv).__mro__ if c.__module__.startswith("torch_geometric."))


def _library_dirs() -> tuple[str, ...]:
    import torch_geometric

    import approxgnn

    return tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, torch_geometric, approxgnn))


def _warn_user(message: str) -> None:
    """Warn at the innermost frame outside torch, PyG and this library: the user's own line."""
    dirs = _library_dirs()
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(dirs):
        frame = frame.f_back
    g = frame.f_globals
    warnings.warn_explicit(message, UserWarning, frame.f_code.co_filename, frame.f_lineno, module=g.get("__name__"),
                           registry=g.setdefault("__warningregistry__", {}), module_globals=g)


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


def approximate(model: nn.Module, budget: float = RSCConfig.budget, epochs: int | None = None, *,
                precompute: bool = True, **rsc_options: Any) -> nn.Module:
    """Make ``model``'s ``GCNConv``/``SAGEConv`` (mean)/``GCN2Conv`` layers train with RSC; returns ``model``.

    Args:
        model: any ``nn.Module`` holding those PyG layers (hand-written, or PyG's ``GCN``,
            ``GraphSAGE``, ...). It is changed in place: the same parameters, the same
            ``state_dict`` keys, the same forward; the optimiser built on it stays valid.
        budget: RSC's ``C`` in (0, 1], the fraction of backward-SpMM FLOPs kept; ``1.0`` trains
            exactly as the plain model does.
        epochs: the epochs the loop will run (``E``), for the switch to exact at ``switch_time·E``.
        precompute: a ``GCNConv`` or mean ``SAGEConv`` (without ``project``) given the same
            input tensor again, one no gradient reaches (the raw features, with no dropout before
            the layer), aggregates it once and reuses ``Â @ x`` (:meth:`PyGApproximation.first_hop`;
            the same function, no SpMM in that layer from then on). ``False`` turns that off.
        **rsc_options: any other :class:`~approxgnn.rsc.RSCConfig` field (``switch_time``,
            ``warmup``, ``selection``, ``cache_interval``, ...). ``min_layer_flops`` defaults to
            :data:`MIN_LAYER_FLOPS` here (a layer with ``nnz(Â_off)·d`` below it stays exact);
            pass ``min_layer_flops=0`` to sample every layer.

    Other message-passing layers stay exact, with a warning naming them. ``model.eval()`` (and
    any forward under ``no_grad``) is exact.
    """
    from .convs import APPROX_CLASSES

    from torch_geometric.nn import MessagePassing

    cfg = _config(budget, {"min_layer_flops": MIN_LAYER_FLOPS, **rsc_options})
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer or None, got {epochs!r}")
    ctrl = PyGApproximation(cfg, epochs, precompute)
    layer = 0
    for name, m in model.named_modules():
        if type(m) in APPROX_CLASSES.values():
            raise ValueError(f"layer {name or '<model>'} has already been passed through approximate()")
        cls = APPROX_CLASSES.get(type(m))
        reason = cls.unsupported(m) if cls is not None else "not supported"
        if cls is not None and reason is None:
            setattr(m, ATTR + "_spec", cls.spec(m))
            setattr(m, ATTR + "_layer", layer)
            setattr(m, ATTR + "_name", name or "<model>")
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
