"""Small graphs built in code for unit tests."""
from __future__ import annotations

import numpy as np

from approxgnn.datasets import Dataset


def planted_dataset(n: int = 300, classes: int = 3, features: int = 16, degree: int = 6, seed: int = 0,
                    metric: str = "acc") -> Dataset:
    """A homophilous graph whose labels the features and the structure both predict."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    src = rng.integers(0, n, n * degree)
    # 80% of edges stay within the class: pick a random node of the same class.
    by_class = [np.flatnonzero(y == c) for c in range(classes)]
    same = rng.random(src.size) < 0.8
    dst = rng.integers(0, n, src.size)
    for c in range(classes):
        pick = same & (y[src] == c)
        dst[pick] = rng.choice(by_class[c], pick.sum())
    centers = rng.normal(size=(classes, features))
    x = (centers[y] * 0.5 + rng.normal(size=(n, features))).astype(np.float32)
    perm = rng.permutation(n)
    masks = [np.zeros(n, bool) for _ in range(3)]
    masks[0][perm[: n // 3]] = True
    masks[1][perm[n // 3: 2 * n // 3]] = True
    masks[2][perm[2 * n // 3:]] = True
    return Dataset("planted", x, y.astype(np.int64), np.stack([src, dst]).astype(np.int64), *masks,
                   num_classes=classes, metric=metric)
