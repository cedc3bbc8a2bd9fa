r"""PyG's ``GCNConv``, ``SAGEConv`` (mean) and ``GCN2Conv`` with the library's propagation.

:func:`~approxgnn.pyg.approximate` swaps a layer's class for the matching subclass here (as
``torch.nn.utils.parametrize`` does): parameters, buffers, hooks and ``state_dict`` keys stay
those of the PyG layer, ``isinstance(conv, GCNConv)`` still holds, and only ``forward`` changes.
Each forward computes the same function as PyG's,

* ``GCNConv``:  :math:`\hat A (X W) + b`;
* ``SAGEConv``: :math:`W_l\,\mathrm{mean}_{j\to i} x_j + W_r x_i` (optionally projected first and
  L2-normalised after, as PyG's ``project`` and ``normalize``);
* ``GCN2Conv``: :math:`((1-\alpha)\hat A X + \alpha X_0)((1-\beta) I + \beta W)` (or the
  ``shared_weights=False`` form),

but the aggregation ``Â @ ·`` runs on the cached normalised operator of
:mod:`~approxgnn.pyg.adjacency`, and in training through RSC's sampled backward
(:class:`~approxgnn.rsc.SampledPropagation`). An input the adapter does not take (a bipartite pair
of node sets, a CSC matrix, ...) goes to PyG's own forward, unchanged, and so does every forward
that uses a feature of PyG's ``propagate`` (explain mode, hooks, ``decomposed_layers``,
``torch.compile``; :meth:`~approxgnn.pyg.rsc.PyGApproximation.fallback_reason`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GCN2Conv, GCNConv, SAGEConv
from torch_geometric.nn.aggr import MeanAggregation, SumAggregation

from .adjacency import Spec


def _common_reason(conv: Any, aggregation: type) -> str | None:
    if not isinstance(conv.aggr_module, aggregation):
        return f"aggr={conv.aggr!r}"
    if conv.node_dim not in (0, -2):
        return f"node_dim={conv.node_dim}"
    return None


_MASK = "_edge_mask"


class _Approx:
    """What every approximated conv shares: the fallback test and ``state_dict`` hygiene.

    PyG's explainers register ``_edge_mask`` as a parameter of each layer and remove it when they
    finish; one that fails part-way leaves it, and then the layer's ``state_dict`` no longer loads
    strictly into the plain model (or the plain one into it). The mask is explanation state, not
    weights: it is left out of ``state_dict`` and not asked for by a load.
    """

    def _fallback(self, weight: Any) -> bool:
        if torch.compiler.is_compiling():  # PyG's forward is what gets compiled; no Python bookkeeping
            return True                    # (it would break the graph and count once per compile)
        reason = self._approxgnn.fallback_reason(self, weight)
        if reason is not None:
            self._approxgnn.fell_back(self, reason)
        return reason is not None

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        destination.pop(prefix + _MASK, None)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        registered = _MASK in self._parameters
        mask = self._parameters.pop(_MASK, None)
        state_dict.pop(prefix + _MASK, None)
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,  # type: ignore[misc]
                                          missing_keys, unexpected_keys, error_msgs)
        finally:
            if registered:
                self._parameters[_MASK] = mask


def _gcn_spec(conv: Any, improved: bool) -> Spec:
    if conv.normalize:
        return ("gcn", 2.0 if improved else 1.0, bool(conv.add_self_loops), conv.flow)
    return ("sum", 0.0, False, conv.flow)


class ApproxGCNConv(_Approx, GCNConv):
    """``GCNConv`` whose aggregation runs on the cached operator (RSC backward in training)."""

    @staticmethod
    def unsupported(conv: GCNConv) -> str | None:
        return _common_reason(conv, SumAggregation)

    @staticmethod
    def spec(conv: GCNConv) -> Spec:
        return _gcn_spec(conv, conv.improved)

    def forward(self, x: Tensor, edge_index: Any, edge_weight: Tensor | None = None) -> Tensor:
        graph = None if self._fallback(edge_weight) else self._approxgnn.graph(self, x, edge_index, edge_weight)
        if graph is None:
            return super().forward(x, edge_index, edge_weight)
        table = self._approxgnn.first_hop(self, graph, x)  # Â(XW) = (ÂX)W: lin has no bias
        out = self.lin(table) if table is not None else self._approxgnn.propagate(self, graph, self.lin(x))
        return out if self.bias is None else out + self.bias


class ApproxSAGEConv(_Approx, SAGEConv):
    """``SAGEConv`` (mean aggregation) whose aggregation runs on the cached operator."""

    @staticmethod
    def unsupported(conv: SAGEConv) -> str | None:
        return _common_reason(conv, MeanAggregation)

    @staticmethod
    def spec(conv: SAGEConv) -> Spec:
        return ("mean", 0.0, False, conv.flow)

    def forward(self, x: Any, edge_index: Any, size: Any = None) -> Tensor:
        if size is not None:
            self._approxgnn.fell_back(self, "size=")
        graph = None if size is not None or self._fallback(None) else self._approxgnn.graph(self, x, edge_index, None)
        if graph is None:
            return super().forward(x, edge_index, size)
        project = self.project and hasattr(self, "lin")
        table = None if project else self._approxgnn.first_hop(self, graph, x)  # mean of x, computed once
        h = self.lin(x).relu() if project else x
        out = self.lin_l(table if table is not None else self._approxgnn.propagate(self, graph, h))
        if self.root_weight:
            out = out + self.lin_r(x)
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out


class ApproxGCN2Conv(_Approx, GCN2Conv):
    """``GCN2Conv`` whose aggregation ``Â X`` runs on the cached operator."""

    @staticmethod
    def unsupported(conv: GCN2Conv) -> str | None:
        return _common_reason(conv, SumAggregation)

    @staticmethod
    def spec(conv: GCN2Conv) -> Spec:
        return _gcn_spec(conv, False)

    def forward(self, x: Tensor, x_0: Tensor, edge_index: Any, edge_weight: Tensor | None = None) -> Tensor:
        graph = None if self._fallback(edge_weight) else self._approxgnn.graph(self, x, edge_index, edge_weight)
        if graph is None:
            return super().forward(x, x_0, edge_index, edge_weight)
        h = self._approxgnn.propagate(self, graph, x).mul_(1.0 - self.alpha)
        x_0 = self.alpha * x_0[: h.size(0)]
        if self.weight2 is None:
            out = h.add_(x_0)
            return torch.addmm(out, out, self.weight1, beta=1.0 - self.beta, alpha=self.beta)
        out = torch.addmm(h, h, self.weight1, beta=1.0 - self.beta, alpha=self.beta)
        return out + torch.addmm(x_0, x_0, self.weight2, beta=1.0 - self.beta, alpha=self.beta)


# Exact classes only: a user's subclass may change the message or the normalisation.
APPROX_CLASSES: dict[type, type] = {GCNConv: ApproxGCNConv, SAGEConv: ApproxSAGEConv, GCN2Conv: ApproxGCN2Conv}
