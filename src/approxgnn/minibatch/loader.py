"""Turning seed ids into a ready batch, and doing it one batch ahead in a worker thread.

:meth:`BatchLoader.load` samples (pruning with a history's fresh hits), reads the input
features through a :class:`~.stores.FeatureStore` (a cache over the counted store, or the store
itself), copies the hits' cached rows and builds the block operators. The history is anything with
:class:`HistoryServer`'s two methods, so this package never imports an engine.
:class:`Prefetcher` runs the next batch's ``load`` in one worker thread while the
current batch trains: numba kernels and torch ops release the GIL, so the two overlap.

The trainer keeps the result independent of timing: batch ``b+1`` is loaded against the cache
state after batch ``b-1``'s admission, and batch ``b``'s admission waits until that load is done.
With prefetching off the same loads run inline at the same points, so both give identical runs.

With a :class:`~.lookahead.LookaheadCache` (``lookahead``, ``depth = K``) the loader also keeps
its window: :meth:`BatchLoader.begin_epoch` is told the epoch's batches and draws the first ``K``
ahead; each :meth:`~BatchLoader.load` of batch ``b`` reads through the cache, then draws batch
``b+K`` (pruned by the history as it is now) and lets the cache prefetch batch ``b+1``'s misses.
A prediction is only a forecast of which rows will be read: the batch itself is drawn when it is
loaded, against the history as it is then, exactly as without the look-ahead (a prediction drawn
without pruning *is* that batch, so it is reused). Training is therefore identical with the
look-ahead on or off; only where rows come from changes.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from ..ops import SparseOperator
from .lookahead import LookaheadCache
from .sampler import NeighborSampler, PruneTest, SampledBatch
from .stores import FeatureStore


def epoch_permutation(ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``ids`` in epoch ``epoch``'s order: a permutation drawn from ``(seed, epoch)`` alone, so that
    a resumed run, and every rank of a multi-process run, redraws it exactly."""
    return np.random.default_rng([seed, epoch]).permutation(ids)


def epoch_seeds(ids: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The seed batches of epoch ``epoch``: :func:`epoch_permutation` cut into chunks of
    ``batch_size`` (the last may be shorter)."""
    perm = epoch_permutation(ids, seed, epoch)
    return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]


class HistoryServer(Protocol):
    """What the loader asks of a history cache (e.g. :class:`approxgnn.history.HistoryEngine`)."""

    def prune_tests(self, now: int) -> dict[int, PruneTest]:
        """Per cached layer, the fresh-hit test the sampler prunes with at iteration ``now``."""
        ...

    def serve(self, batch: SampledBatch, now: int, device: torch.device) -> dict[int, Tensor]:
        """Per cached layer, ``[k_l, d]`` copies of the hits' rows on ``device``."""
        ...


@dataclass
class Batch:
    """A sampled batch with everything its forward pass reads, on the compute device."""

    sample: SampledBatch
    x: Tensor  # [len(input_nodes), F] raw features of layer 0's sources
    ops: list[SparseOperator | None]  # per layer (layer 0's None when its aggregation is precomputed)
    served: dict[int, Tensor]  # per cached layer: [k_l, d] rows of the hits (sample.hits(l)) from the cache
    times: dict[str, float] = field(default_factory=dict)


class BatchLoader:
    """``load(seeds, key, now)`` → :class:`Batch` (see the module docstring).

    ``lookahead``: a look-ahead cache in the chain under ``features``, planned ``depth`` batches
    ahead; ``upstream(ids)`` gives the ids among ``ids`` that reach it (those a cache above it
    does not serve; default: all).
    """

    def __init__(self, sampler: NeighborSampler, features: FeatureStore, history: HistoryServer | None,
                 device: torch.device, *, lookahead: LookaheadCache | None = None, depth: int = 0,
                 upstream: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.sampler, self.features, self.history, self.device = sampler, features, history, device
        self.times = {"sample_s": 0.0, "gather_s": 0.0, "serve_s": 0.0, "blocks_s": 0.0, "ahead_s": 0.0}
        self.window = _Window(sampler, lookahead, depth, upstream) if lookahead is not None and depth > 0 else None

    def _prune(self, now: int) -> dict[int, PruneTest] | None:
        return self.history.prune_tests(now) if self.history is not None else None

    def begin_epoch(self, jobs: list[tuple[np.ndarray, int]], now: int) -> None:
        """The epoch's batches as ``(seeds, key)``, in the order they will be loaded (only needed
        with a look-ahead: it draws the first ``depth`` of them and prefetches the first's rows)."""
        if self.window is not None:
            t0 = time.perf_counter()
            self.window.begin(jobs, self._prune(now))
            self.times["ahead_s"] += time.perf_counter() - t0

    def load(self, seeds: np.ndarray, key: int, now: int) -> Batch:
        """Batch of ``seeds`` drawn with ``key`` against the history as of iteration ``now``."""
        t0 = time.perf_counter()
        prune = self._prune(now)
        sample = self.window.take(key, prune) if self.window is not None else None
        if sample is None:
            sample = self.sampler.sample(seeds, key, prune)
        t1 = time.perf_counter()
        x = self.features.read(sample.input_nodes).to(self.device, non_blocking=True)
        t2 = time.perf_counter()
        if self.window is not None:
            self.window.advance(prune)  # draw batch b+K, prefetch batch b+1's misses
        t3 = time.perf_counter()
        served = self.history.serve(sample, now, self.device) if self.history is not None else {}
        t4 = time.perf_counter()
        ops = [None if b is None else b.operator(self.device) for b in sample.blocks]  # None: precomputed
        t5 = time.perf_counter()
        for k, dt in (("sample_s", t1 - t0), ("gather_s", t2 - t1), ("ahead_s", t3 - t2), ("serve_s", t4 - t3),
                      ("blocks_s", t5 - t4)):
            self.times[k] += dt
        return Batch(sample, x, ops, served)

    def reset_times(self) -> None:
        for k in self.times:
            self.times[k] = 0.0


class _Window:
    """The predicted batches of one epoch, feeding a :class:`LookaheadCache` (module docstring)."""

    def __init__(self, sampler: NeighborSampler, cache: LookaheadCache, depth: int,
                 upstream: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.sampler, self.cache, self.depth, self.upstream = sampler, cache, depth, upstream
        self.jobs: list[tuple[np.ndarray, int]] = []
        self.pos = 0
        self.drawn: dict[int, SampledBatch] = {}  # unpruned predictions: the batches themselves

    def begin(self, jobs: list[tuple[np.ndarray, int]], prune: dict[int, PruneTest] | None) -> None:
        self.jobs, self.pos, self.drawn = list(jobs), 0, {}
        self.cache.start([self._predict(j, prune) for j in range(min(self.depth, len(self.jobs)))])

    def _predict(self, j: int, prune: dict[int, PruneTest] | None) -> np.ndarray:
        seeds, key = self.jobs[j]
        sample = self.sampler.sample(seeds, key, prune)
        if not prune:  # a pure function of the key: batch j itself, if it is loaded unpruned too
            self.drawn[j] = sample
        ids = sample.input_nodes
        return self.upstream(ids) if self.upstream is not None else ids

    def take(self, key: int, prune: dict[int, PruneTest] | None) -> SampledBatch | None:
        """Batch ``pos``'s sample if it was drawn ahead as it must be drawn now, else None."""
        if self.pos >= len(self.jobs) or self.jobs[self.pos][1] != key:
            raise RuntimeError("a look-ahead loader must load the batches given to begin_epoch, in order")
        sample = self.drawn.pop(self.pos, None)
        return sample if not prune else None

    def advance(self, prune: dict[int, PruneTest] | None) -> None:
        j = self.pos + self.depth
        self.cache.advance(self._predict(j, prune) if j < len(self.jobs) else None)
        self.pos += 1


class _Done:
    """An already computed result with the ``Future.result()`` interface."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class Prefetcher:
    """Runs submitted calls in one worker thread (``enabled``) or inline; use as a context manager."""

    def __init__(self, enabled: bool = True) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="approxgnn-prefetch") if enabled else None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | _Done:
        if self._pool is None:
            return _Done(fn(*args))
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
