"""Train/val/test masks: the one stratified random splitter every random-split loader shares.

Semantics of the sizes (chosen to cover the conventions in the literature with one function):

* ``train``: an ``int`` is a count *per class* (the Planetoid / Shchur et al. convention of
  "20 labelled nodes per class"; a class smaller than that contributes all its nodes); a
  ``float`` is a fraction of every class.
* ``val``, ``test``: an ``int`` is a total count, a ``float`` a fraction of all candidate
  nodes, ``None`` (test only) means "every candidate node left".

Val and test are drawn *stratified*: candidates are put in an order where every prefix holds
the classes in (almost exactly, +-1 node) the proportions of the whole, so a total count is
allocated to classes proportionally without any rounding bookkeeping.
"""
from __future__ import annotations

import numpy as np

from .base import DatasetError

Size = int | float


def index_to_mask(index: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of length ``n`` that is True at ``index``."""
    mask = np.zeros(n, dtype=bool)
    mask[index] = True
    return mask


def split_rng(seed: int, split: int, stream: int = 0) -> np.random.Generator:
    """Generator for random split number ``split`` of seed ``seed``.

    Different ``split`` values give independent splits; ``stream`` separates independent uses
    of one seed (e.g. the synthetic graph versus its split).
    """
    if split < 0:
        raise DatasetError(f"split must be >= 0, got {split}")
    return np.random.default_rng([int(seed), int(split), int(stream), 0x5917])


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random order of the nodes in which every prefix is stratified by class.

    Each node gets a random rank within its class; sorting by ``(rank + jitter) / class_size``
    interleaves the classes proportionally. Returns ``(order, rank_within_class)``.
    """
    n = y.shape[0]
    perm = rng.permutation(n)
    by_class = perm[np.argsort(y[perm], kind="stable")]  # classes grouped, random inside
    counts = np.bincount(y, minlength=int(y.max()) + 1 if n else 0)
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    key = (rank + rng.random(n)) / counts[y]
    return np.argsort(key, kind="stable"), rank


def _count(size: Size | None, available: int, total: int, name: str, where: str) -> int:
    """Number of nodes a size asks for: an int as is, a float as a fraction of ``total``."""
    if size is None:
        return available
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise DatasetError(f"{where}: {name} size must be an int or a float, got {size!r}")
    fraction = isinstance(size, (float, np.floating))
    if (fraction and not 0.0 <= size <= 1.0) or size < 0:
        raise DatasetError(f"{where}: {name} size must be a count >= 0 or a fraction in [0, 1], got {size}")
    k = int(round(float(size) * total)) if fraction else int(size)
    if fraction and k == available + 1:
        k = available  # fractions that sum to 1 can overshoot by one node through rounding
    if k > available:
        raise DatasetError(f"{where}: {name} split needs {k} nodes but only {available} remain")
    return k


def stratified_split(
    y: np.ndarray,
    rng: np.random.Generator,
    *,
    train: Size,
    val: Size,
    test: Size | None = None,
    candidates: np.ndarray | None = None,
    where: str = "split",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random stratified ``(train_mask, val_mask, test_mask)`` over the nodes of ``y``.

    ``candidates`` (bool ``[N]``) restricts the split to some nodes, e.g. the labelled ones;
    others end up in no mask. See the module docstring for the meaning of the sizes.
    """
    n = y.shape[0]
    pool = np.arange(n) if candidates is None else np.flatnonzero(candidates)
    if pool.size == 0:
        raise DatasetError(f"{where}: no node to split")
    order, rank = _stratified_order(y[pool], rng)
    if isinstance(train, (int, np.integer)) and not isinstance(train, bool):
        if train < 1:
            raise DatasetError(f"{where}: train size per class must be >= 1, got {train}")
        is_train = rank < train  # `train` nodes of each class (all of a smaller class)
        train_idx, rest = pool[order[is_train[order]]], order[~is_train[order]]
    else:
        k = _count(train, pool.size, pool.size, "train", where)
        train_idx, rest = pool[order[:k]], order[k:]
    k_val = _count(val, rest.size, pool.size, "val", where)
    k_test = _count(test, rest.size - k_val, pool.size, "test", where)
    val_idx = pool[rest[:k_val]]
    test_idx = pool[rest[k_val : k_val + k_test]]
    return index_to_mask(train_idx, n), index_to_mask(val_idx, n), index_to_mask(test_idx, n)
