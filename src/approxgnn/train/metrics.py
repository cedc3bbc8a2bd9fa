"""Classification metrics: accuracy and binary ROC-AUC (rank formulation, ties averaged)."""
from __future__ import annotations

import torch
from torch import Tensor


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose argmax equals the label; ``logits [n, C]``, ``y [n]``."""
    if y.numel() == 0:
        return float("nan")
    return float((logits.argmax(-1) == y).float().mean())


def roc_auc(scores: Tensor, y: Tensor) -> float:
    r"""Area under the ROC curve for binary ``y`` ∈ {0,1} and real ``scores``:

    :math:`\mathrm{AUC} = (R_+ - n_+(n_+ + 1)/2) / (n_+ n_-)`, with :math:`R_+` the sum of the
    positives' ranks (average ranks for ties). NaN when one class is absent.
    """
    scores, y = scores.detach().double().cpu(), y.cpu()
    n_pos = int((y == 1).sum())
    n_neg = int(y.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    s = scores[order]
    ranks = torch.empty_like(s)
    # Average ranks over runs of equal scores.
    uniq, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    r_pos = ranks[y == 1].sum().item()
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def evaluate_logits(logits: Tensor, y: Tensor, metric: str) -> float:
    """The task's headline metric (``acc`` or ``auc``) on the given rows."""
    if metric == "acc":
        return accuracy(logits, y)
    if metric == "auc":
        return roc_auc(torch.softmax(logits.float(), -1)[:, 1], y)
    raise ValueError(f"unknown metric {metric!r}")
