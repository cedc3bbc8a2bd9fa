"""GCN, GraphSAGE and GCNII on the :class:`~approxgnn.nn.propagation.Propagation` interface.

Every model exposes ``norm`` (the adjacency normalisation it expects: ``"gcn"`` or ``"mean"``)
and :meth:`spmm_widths`, the width of each propagation whose backward product is computed —
what an approximate engine budgets for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import dropout
from .propagation import Propagation


@dataclass
class FirstHop:
    """Layer 0's input with its aggregation already done (:mod:`approxgnn.precompute`).

    ``agg``: layer 0's ``m`` targets' rows of the precomputed table -- GCN's ``[ÂX | Â1]``
    (``[m, F+1]``: the last column, ``Â1``, is what the bias needs), SAGE's neighbour mean
    (``[m, F]``); ``x [m, F]``: their own features (SAGE's self term; None for GCN). A model given
    one skips layer 0's propagation and computes the same function (input dropout must be 0: a
    dropped input would change ``ÂX``).
    """

    agg: Tensor
    x: Tensor | None = None

    @classmethod
    def from_rows(cls, rows: Tensor, norm: str, num_features: int) -> "FirstHop":
        """From rows of the table alone (GCN: ``[ÂX | Â1]``, ``F + 1`` columns) or of the joined
        store a SAGE mini-batch reads (``[X | mean]``, ``2F`` columns; the halves made contiguous,
        as a strided matrix slows both products of the linear map)."""
        if norm == "gcn":
            return cls(rows.contiguous())
        return cls(rows[:, num_features:].contiguous(), rows[:, :num_features].contiguous())


def _check(in_channels: int, hidden_channels: int, out_channels: int, num_layers: int, dropout: float,
           input_dropout: float = 0.0) -> None:
    for name, v in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                    ("out_channels", out_channels), ("num_layers", num_layers)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if input_dropout is None:  # None means "the engine family's default", a TrainConfig notion only
        raise ValueError("input_dropout must be a rate in [0, 1); a model takes no None (TrainConfig resolves its "
                         "None to the engine family's default before building the model)")
    if not 0.0 <= input_dropout < 1.0:
        raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")


def _linears(in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
             bias: bool = True) -> nn.ModuleList:
    """One linear map per layer: ``in → hidden → … → hidden → out``."""
    dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
    return nn.ModuleList(nn.Linear(dims[i], dims[i + 1], bias=bias) for i in range(num_layers))


class _Stack(nn.Module):
    """Shared parts: per-hidden-layer batch norm, activation, dropout, and the hidden hook.

    Two dropout rates: ``input_dropout`` on the raw input features (before the first linear map)
    and ``dropout`` on every hidden representation. Kipf & Welling's GCN drops both; PyG's
    ``BasicGNN`` only the hidden ones. ``input_dropout`` is a rate, default 0 (inputs untouched, the
    library's measured default); pass ``input_dropout=dropout`` for Kipf's choice. ``None`` has one
    meaning in the library, ":class:`~approxgnn.train.TrainConfig`'s engine-family default", and
    the config resolves it before it builds a model.
    """

    norm = "gcn"

    def __init__(self, num_hidden: int, hidden_channels: int, dropout: float, batch_norm: bool,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.bns = nn.ModuleList(nn.BatchNorm1d(hidden_channels) for _ in range(num_hidden)) if batch_norm else None

    def _activate(self, h: Tensor, layer: int, prop: Propagation) -> Tensor:
        if self.bns is not None:
            h = self.bns[layer](h)
        h = F.relu(h)
        return prop.hidden(h, layer)

    def _drop(self, x: Tensor) -> Tensor:
        return dropout(x, self.dropout, self.training)

    def _drop_input(self, x: Tensor) -> Tensor:
        return dropout(x, self.input_dropout, self.training)

    def _check_first_hop(self) -> None:
        if self.training and self.input_dropout > 0:
            raise ValueError(f"a precomputed first hop needs input dropout 0, this model drops inputs at "
                             f"{self.input_dropout} (the plain path applies it before aggregating)")

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()


class _LinearStack(_Stack):
    """GCN and SAGE: ``num_layers`` linear maps per set named in ``LINEARS`` (``{attribute: bias}``),
    ``in → hidden → … → hidden → out``, batch norm after every layer but the last."""

    LINEARS: dict[str, bool] = {}

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 2,
                 dropout: float = 0.5, batch_norm: bool = False, input_dropout: float = 0.0) -> None:
        _check(in_channels, hidden_channels, out_channels, num_layers, dropout, input_dropout)
        super().__init__(num_layers - 1, hidden_channels, dropout, batch_norm, input_dropout)
        for name, bias in self.LINEARS.items():  # in this order: the parameters' init order is fixed
            setattr(self, name, _linears(in_channels, hidden_channels, out_channels, num_layers, bias))


class GCN(_LinearStack):
    r"""Graph convolution (Kipf & Welling): :math:`H^{(l+1)} = \sigma(\hat A\, H^{(l)} W^{(l)})`,
    with :math:`\hat A = \tilde D^{-1/2}(A+I)\tilde D^{-1/2}`.

    The linear map runs *before* propagation, so the SpMM width of layer ``l`` is its output
    width. Shapes: ``x [N, in] → [N_targets, out]``.
    """

    norm = "gcn"
    LINEARS = {"lins": True}
    lins: nn.ModuleList

    def spmm_widths(self, first_hop: bool = False) -> dict[int, int]:
        """``{layer: width}`` of the propagations with a backward product (all, or all but layer 0
        when its aggregation is precomputed)."""
        return {i: lin.out_features for i, lin in enumerate(self.lins) if i > 0 or not first_hop}

    def forward(self, x: Tensor | FirstHop, prop: Propagation) -> Tensor:
        last = len(self.lins) - 1
        for i, lin in enumerate(self.lins):
            if i == 0 and isinstance(x, FirstHop):
                # Â(XW + 1bᵀ) = (ÂX)W + (Â1)bᵀ = [ÂX | Â1] [W | b]ᵀ: one product, whose backward
                # gives the gradients of W and b together (no [m, out] broadcast of the bias).
                self._check_first_hop()
                x = F.linear(x.agg, torch.cat([lin.weight, lin.bias[:, None]], 1))
            else:
                x = prop(lin(self._drop_input(x) if i == 0 else self._drop(x)), i)
            if i < last:
                x = self._activate(x, i, prop)
        return x


class SAGE(_LinearStack):
    r"""GraphSAGE with mean aggregation:
    :math:`h_i' = W_1 h_i + W_2 \operatorname{mean}_{j \in N(i)} h_j`.

    Propagation runs at the *input* width; layer 0's input (raw features) needs no gradient,
    so its SpMM has no backward and is left out of :meth:`spmm_widths`.
    """

    norm = "mean"
    LINEARS = {"lins_self": True, "lins_neigh": False}  # W_1 (with the bias), W_2
    lins_self: nn.ModuleList
    lins_neigh: nn.ModuleList

    def spmm_widths(self, first_hop: bool = False) -> dict[int, int]:
        """``{layer: width}`` of the propagations with a backward product (never layer 0's)."""
        return {i: lin.in_features for i, lin in enumerate(self.lins_neigh) if i > 0}

    def forward(self, x: Tensor | FirstHop, prop: Propagation) -> Tensor:
        last = len(self.lins_self) - 1
        for i, (ls, ln) in enumerate(zip(self.lins_self, self.lins_neigh)):
            if i == 0 and isinstance(x, FirstHop):
                self._check_first_hop()
                x = ls(x.x) + ln(x.agg)
            else:
                x = self._drop_input(x) if i == 0 else self._drop(x)
                x = ls(prop.targets(x, i)) + ln(prop(x, i))
            if i < last:
                x = self._activate(x, i, prop)
        return x


class GCNII(_Stack):
    r"""GCNII (Chen et al. 2020): initial residual and identity mapping,

    .. math::
        H^{(l+1)} = \sigma\big(((1-\alpha)\hat A H^{(l)} + \alpha H^{(0)})
                    ((1-\beta_l) I + \beta_l W^{(l)})\big),\quad \beta_l = \log(\theta / (l+1) + 1).

    Only ``Â H`` goes through the propagation operator; the residual and identity terms are exact.
    """

    norm = "gcn"

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 4,
                 dropout: float = 0.5, batch_norm: bool = False, alpha: float = 0.1, theta: float = 0.5,
                 input_dropout: float = 0.0) -> None:
        _check(in_channels, hidden_channels, out_channels, num_layers, dropout, input_dropout)
        super().__init__(num_layers, hidden_channels, dropout, batch_norm, input_dropout)
        self.alpha, self.theta = alpha, theta
        self.lin_in = nn.Linear(in_channels, hidden_channels)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(hidden_channels, hidden_channels))
                                        for _ in range(num_layers))
        self.lin_out = nn.Linear(hidden_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for w in self.weights:
            nn.init.xavier_uniform_(w)

    def spmm_widths(self, first_hop: bool = False) -> dict[int, int]:
        """``{layer: width}`` of every propagation (GCNII has no first hop to precompute)."""
        return {i: w.size(0) for i, w in enumerate(self.weights)}

    def forward(self, x: Tensor, prop: Propagation) -> Tensor:
        x = x0 = F.relu(self.lin_in(self._drop_input(x)))
        for i, w in enumerate(self.weights):
            beta = math.log(self.theta / (i + 1) + 1.0)
            h = (1.0 - self.alpha) * prop(self._drop(x), i) + self.alpha * prop.targets(x0, i)
            h = (1.0 - beta) * h + beta * (h @ w)
            x = self._activate(h, i, prop)
        return self.lin_out(self._drop(x))


MODELS: dict[str, type[_Stack]] = {"gcn": GCN, "sage": SAGE, "gcn2": GCNII}


def build_model(name: str, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                dropout: float, batch_norm: bool = False, input_dropout: float = 0.0) -> nn.Module:
    """Model by name (``gcn``, ``sage``, ``gcn2``); ``input_dropout``: the rate on the raw input
    features (a float; the trainers pass :meth:`TrainConfig.resolved_input_dropout`)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return cls(in_channels, hidden_channels, out_channels, num_layers, dropout, batch_norm,
               input_dropout=input_dropout)
