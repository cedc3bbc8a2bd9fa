"""Run configuration: one dataclass per concern, composed into :class:`TrainConfig`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..history.config import HistoryConfig
from ..minibatch.config import MiniBatchConfig, default_fanouts
from ..nn.models import MODELS
from ..precompute import FIRST_HOP_LAYOUTS, TABLE_DTYPES, first_hop_norm
from ..rsc.config import RSCConfig
from .presets import PRESETS, apply_preset
from .schedule import LR_SCHEDULES

ENGINES = ("exact", "rsc", "sample", "refresh")
BACKENDS = ("gloo", "nccl")
DIST_EVAL_MODES = ("sharded", "rank0")
PRECOMPUTE_MODES = ("auto", "on", "off")
PRECOMPUTE_DTYPES = ("auto", *TABLE_DTYPES)
# ``--precompute auto`` takes the precomputed first hop wherever it applies, on every engine.
# Full batch: the same function to float rounding (tests/test_precompute.py). ``sample``: the last
# hop becomes the exact mean instead of a sample, which scored +1.25 pp test on synthetic-hard-1m
# over 3 seeds with 1.4-1.5x faster epochs from page-cached features. ``refresh``: on the same
# graph (seed 0) it raised test accuracy by 0.8-1.1 pp for no cache, output caching and the
# aggregate cache alike, and an aggregate hit then costs two rows. benchmarks/RESULTS.md
# ("Precomputed first hop", "History cache defaults") has the measurements.
FULL_BATCH_ENGINES = ("exact", "rsc")
MINI_BATCH_ENGINES = ("sample", "refresh")

# Input dropout when ``TrainConfig.input_dropout`` is None, per engine family: True drops the raw
# features at the hidden rate ``dropout`` (Kipf's GCN), False leaves them untouched (PyG's
# BasicGNN). Chosen by measurement (benchmarks/input_dropout.py, table in benchmarks/RESULTS.md):
# over cora, citeseer, twitch-de and tolokers, 3 seeds, untouched inputs scored +0.41 pp (full
# batch, GCN and SAGE) and +0.40 pp (mini-batch SAGE) on average, mostly from tolokers' 10 features.
INPUT_DROPOUT_FOLLOWS_DROPOUT = {"full_batch": False, "mini_batch": False}
# The precomputed table's storage under ``precompute_dtype="auto"``, per engine family. Mini-batch
# reads the table row by row, so float16 halves those bytes; over 3 seeds on synthetic-hard-1m it
# trained as the float32 table did (benchmarks/RESULTS.md, "Precomputed first hop"). Full batch
# reads it once into memory: float32, the same function as the plain path to float rounding.
TABLE_DTYPE_AUTO = {"full_batch": "float32", "mini_batch": "float16"}


def engine_family(engine: str) -> str:
    """``"full_batch"`` (``exact``, ``rsc``) or ``"mini_batch"`` (``sample``, ``refresh``)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    return "full_batch" if engine in FULL_BATCH_ENGINES else "mini_batch"


@dataclass
class DistConfig:
    """Multi-process (data-parallel) training of the mini-batch engines (``train/ddp.py``).

    * ``nproc``: processes; ``approxgnn train --nproc N`` spawns them locally, ``torchrun`` sets
      the world size itself (and the run records it here).
    * ``backend``: ``gloo`` (CPU) or ``nccl`` (CUDA); None picks by device.
    * ``timeout_s``: bound on every collective (a rank waiting for a lost or stuck peer stops
      with an error after at most this long; evaluation on rank 0 must fit in it).
    * ``eval``: exact evaluation ``sharded`` across ranks and gathered (default), or done on
      ``rank0`` while the others wait.
    * ``threads``: torch (and numba) threads per rank; None: the cores divided by the local ranks.
    """

    nproc: int = 1
    backend: str | None = None
    timeout_s: float = 300.0
    eval: str = "sharded"
    threads: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"nproc must be >= 1, got {self.nproc}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"dist timeout must be positive seconds, got {self.timeout_s}")
        if self.eval not in DIST_EVAL_MODES:
            raise ValueError(f"dist eval must be one of {DIST_EVAL_MODES}, got {self.eval!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass
class TrainConfig:
    """Everything a run needs; recorded in full in ``result.json`` and every checkpoint."""

    preset: str | None = None  # name of the preset the values were laid over (train/presets.py), recorded
    dataset: str = "synthetic"
    data_root: str | None = None
    split: int = 0
    model: str = "gcn"
    engine: str = "exact"
    layers: int = 2
    hidden: int = 256
    dropout: float = 0.5
    input_dropout: float | None = None  # None: the engine family's default (see resolved_input_dropout)
    batch_norm: bool = False
    lr: float = 0.01
    lr_schedule: str = "constant"  # or "cosine": annealed to 0 over `epochs`, stepped per epoch
    weight_decay: float = 5e-4
    epochs: int = 200
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    checkpoint_every: int = 0
    progress: bool = True
    rsc: RSCConfig = field(default_factory=RSCConfig)  # --engine rsc
    minibatch: MiniBatchConfig = field(default_factory=MiniBatchConfig)  # --engine sample and refresh
    history: HistoryConfig = field(default_factory=HistoryConfig)  # --engine refresh
    dist: DistConfig = field(default_factory=DistConfig)  # --nproc N / torchrun (mini-batch engines)
    # The first aggregation computed once before training (approxgnn.precompute): auto (where it
    # is the default and applies), on (required: an error where it cannot apply), off.
    precompute: str = "auto"
    precompute_dir: str | None = None  # where tables are kept and found again (None: RAM, or beside on-disk X)
    # How the table is stored: float32, float16 (half the bytes per table row; the full-batch
    # engines widen it to float32 once, in memory), or auto (TABLE_DTYPE_AUTO, per engine family).
    precompute_dtype: str = "auto"
    # SAGE's [X | mean] rows on disk: packed (one file of side-by-side records, one read a row),
    # split (X and the table, two reads), auto (packed where the disk store reads them and the
    # disk has room: reads bound an epoch there, and packing halved them, benchmarks/RESULTS.md).
    precompute_layout: str = "auto"

    def __post_init__(self) -> None:
        if self.minibatch.fanouts is None and self.layers >= 1:
            # Fanouts the user left out follow --layers (one per layer). A copy, so that a
            # MiniBatchConfig shared by several configs is not pinned to the first one's depth;
            # the resolved list is what result.json records.
            self.minibatch = replace(self.minibatch, fanouts=default_fanouts(self.layers))
        self.validate()

    def validate(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {list(ENGINES)}")
        if self.split < 0:
            raise ValueError(f"split must be >= 0, got {self.split}")
        if not 0 <= self.seed < 2**32:  # numpy's global seed takes [0, 2**32)
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be 'auto' or a torch device such as cpu, cuda, cuda:1; "
                                 f"got {self.device!r}") from None
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_dropout is not None and not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        if not self.lr > 0:  # written so that NaN fails too
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.engine in MINI_BATCH_ENGINES and len(self.minibatch.fanouts) != self.layers:
            raise ValueError(f"{len(self.minibatch.fanouts)} fanouts given for {self.layers} layers; "
                             "give one fanout per layer (or leave --fanouts out to get one per layer)")
        if self.engine in MINI_BATCH_ENGINES and self.minibatch.eval_fanouts is not None \
                and len(self.minibatch.eval_fanouts) != self.layers:
            raise ValueError(f"{len(self.minibatch.eval_fanouts)} eval fanouts given for {self.layers} layers; "
                             "give one per layer")
        if self.dist.nproc > 1 and self.engine in FULL_BATCH_ENGINES:
            raise ValueError(f"{self.dist.nproc} processes (--nproc, or a launcher's WORLD_SIZE): multi-process "
                             "training runs the mini-batch engines (sample, refresh); "
                             f"--engine {self.engine} is full-batch and runs in one process")
        if self.precompute not in PRECOMPUTE_MODES:
            raise ValueError(f"precompute must be one of {PRECOMPUTE_MODES}, got {self.precompute!r}")
        if self.precompute_dtype not in PRECOMPUTE_DTYPES:
            raise ValueError(f"precompute_dtype must be one of {PRECOMPUTE_DTYPES}, got {self.precompute_dtype!r}")
        if self.precompute_layout not in FIRST_HOP_LAYOUTS:
            raise ValueError(f"precompute_layout must be one of {FIRST_HOP_LAYOUTS}, got {self.precompute_layout!r}")
        if self.precompute_layout == "packed" and (self.model != "sage" or self.engine in FULL_BATCH_ENGINES):
            raise ValueError("--precompute-layout packed applies to mini-batch SAGE (its [X | mean] rows); "
                             f"got --model {self.model} --engine {self.engine}")
        if self.precompute == "on":
            use, why = self.first_hop_path()
            if not use:
                raise ValueError(f"--precompute on cannot apply: {why}")
        self.rsc.validate()
        self.minibatch.validate()
        self.dist.validate()
        self.history.validate()
        self.history.check_depth(self.layers)
        if self.history.cached_value == "aggregate" and self.model != "sage":
            # GCN aggregates after its linear map: its aggregate would freeze the weights like an output
            raise ValueError(f"--cached-value aggregate caches SAGE's pre-linear neighbour mean, not {self.model}'s")

    def cache_policy(self) -> str:
        """The cache policy a mini-batch run uses. ``--engine refresh``: ``history.policy``.
        ``--engine sample`` never keeps a history: ``none``, or ``feature`` (a raw-feature cache
        within ``--cache-mb``) when ``--policy feature`` asks for one, as it always could."""
        if self.engine == "sample":
            return "feature" if self.history.policy == "feature" else "none"
        return self.history.policy

    def resolved_input_dropout(self) -> float:
        """The input-feature dropout rate this run uses: ``input_dropout`` if set, else the engine
        family's default (:data:`INPUT_DROPOUT_FOLLOWS_DROPOUT`). Resolved here and only here, at
        use rather than at construction, so that a config copied to another engine takes that
        engine's default."""
        if self.input_dropout is not None:
            return self.input_dropout
        return self.dropout if INPUT_DROPOUT_FOLLOWS_DROPOUT[engine_family(self.engine)] else 0.0

    def resolved_cached_value(self) -> str:
        """What the history cache keeps: ``history.cached_value`` with ``auto`` resolved for this
        model (:meth:`~approxgnn.history.HistoryConfig.resolved_cached_value`)."""
        return self.history.resolved_cached_value(self.model == "sage", self.layers)

    def table_dtype(self) -> str:
        """The precomputed table's storage, ``"float32"`` or ``"float16"``: ``precompute_dtype``, or
        under ``auto`` the engine family's (:data:`TABLE_DTYPE_AUTO`)."""
        if self.precompute_dtype != "auto":
            return self.precompute_dtype
        return TABLE_DTYPE_AUTO[engine_family(self.engine)]

    def first_hop_path(self) -> tuple[bool, str]:
        """Whether this run takes the precomputed first hop, and why (recorded in ``result.json``).

        It applies to models whose first layer aggregates without weights (GCN, SAGE) with input
        dropout 0 (a dropped input changes ``ÂX`` every step); ``auto`` takes it wherever it
        applies."""
        if self.precompute == "off":
            return False, "--precompute off"
        if first_hop_norm(self.model) is None:
            return False, f"{self.model}'s first layer has no propagation to precompute"
        if self.resolved_input_dropout() > 0:
            return False, f"input dropout {self.resolved_input_dropout()} > 0 changes the first aggregation every step"
        return True, "input dropout 0: the first aggregation holds no weights"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str | None = None) -> "TrainConfig":
        """The config of plain values ``d`` (TrainConfig fields; ``rsc``, ``minibatch``, ``history``
        and ``dist`` as dicts or dataclasses). Every route to a config -- the command line's
        flags and ``--config`` file, ``--resume``'s checkpoint, a script -- comes through here, so
        that one set of values always gives one configuration. In this order:

        * unknown keys are refused, at the top and in each group, naming the valid ones;
        * a ``refresh`` group (written before the mini-batch / history split) is split;
        * a recorded run's configuration (all of :data:`RECORD_KEYS` present) trains as that run
          did: without ``input_dropout`` (recorded before it existed) inputs drop at ``dropout``;
          without ``precompute``, the first hop is not precomputed. A partial set of values (a
          hand-written ``--config`` file, the flags) takes the defaults instead;
        * the ``preset`` it names is laid under its values (:func:`~.presets.apply_preset`);
        * each group, then the whole, is built and validated; a wrong type is a ValueError too.

        ``where`` prefixes every message (e.g. the ``--config`` file the values came from).
        """
        prefix = f"{where}: " if where else ""
        if not isinstance(d, dict):
            raise ValueError(f"{prefix}expected a JSON object of TrainConfig fields, got {type(d).__name__}")
        d = dict(d)
        _check_keys(d, [f.name for f in fields(cls)] + ["refresh"], prefix, "")
        try:
            if "refresh" in d:
                d.update(split_refresh(d.pop("refresh"), d))
        except ValueError as e:
            raise ValueError(f"{prefix}{e}") from None
        if RECORD_KEYS <= d.keys():  # a recorded run's configuration keeps training the way it started
            if "input_dropout" not in d:  # recorded when inputs were always dropped at the hidden rate
                d["input_dropout"] = d["dropout"]
            if "precompute" not in d:  # recorded before the precomputed first hop: the plain path
                d["precompute"] = "off"
            if "precompute_dtype" not in d:  # recorded when every table was float32
                d["precompute_dtype"] = "float32"
            if "precompute_layout" not in d:  # recorded when X and the table were always two files
                d["precompute_layout"] = "split"
            history = d.get("history")
            if isinstance(history, dict) and "cached_value" not in history:  # recorded when hits held outputs
                d["history"] = {**history, "cached_value": "output"}
        d = apply_preset(d)
        for group, sub in GROUPS.items():
            if group in d and not isinstance(d[group], sub):
                d[group] = _build(sub, d[group], prefix, f" in '{group}'")
        return _build(cls, d, prefix, "")


def _check_keys(values: dict[str, Any], known: list[str], prefix: str, section: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{prefix}unknown key(s) {unknown}{section}; valid: {', '.join(known)}")


def _build(cls: type, values: Any, prefix: str, section: str) -> Any:
    """``cls(**values)``, with unknown keys, wrong types and invalid values as ValueErrors that
    say where the values came from (``prefix``) and which group (``section``)."""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix}expected a JSON object{section}, got {type(values).__name__}")
    _check_keys(values, [f.name for f in fields(cls)], prefix, section)
    try:
        return cls(**values)
    except TypeError as e:  # e.g. "budget": "high" -- compared with a number
        raise ValueError(f"{prefix}a value{section} has the wrong type ({e})") from None
    except ValueError as e:
        raise ValueError(f"{prefix}{e}") from None


# The keys every recorded config (result.json, checkpoints: TrainConfig.to_dict) has held, since
# before input_dropout and precompute were added: all of them present marks a recorded run.
RECORD_KEYS = frozenset({
    "dataset", "data_root", "split", "model", "engine", "layers", "hidden", "dropout", "batch_norm", "lr",
    "weight_decay", "epochs", "seed", "device", "out", "checkpoint_every", "progress", "rsc"})
GROUPS: dict[str, type] = {"rsc": RSCConfig, "minibatch": MiniBatchConfig, "history": HistoryConfig,
                           "dist": DistConfig}
MINIBATCH_KEYS = frozenset(f.name for f in fields(MiniBatchConfig))
HISTORY_KEYS = frozenset(f.name for f in fields(HistoryConfig))


def split_refresh(refresh: Any, d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``minibatch`` and ``history`` groups of ``d`` with a legacy ``refresh`` group (one
    config for both, before the split) laid under them: each key goes to the group that now
    owns it, and values already in ``d``'s groups win."""
    if not isinstance(refresh, dict):
        raise ValueError(f"'refresh' must be a JSON object, got {type(refresh).__name__}")
    unknown = sorted(set(refresh) - MINIBATCH_KEYS - HISTORY_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in 'refresh'; valid: {', '.join(sorted(MINIBATCH_KEYS | HISTORY_KEYS))}")
    out = {}
    for group, keys in (("minibatch", MINIBATCH_KEYS), ("history", HISTORY_KEYS)):
        given = d.get(group, {})
        if not isinstance(given, dict):
            raise ValueError(f"'{group}' must be a JSON object when 'refresh' is given too")
        out[group] = {**{k: v for k, v in refresh.items() if k in keys}, **given}
    return out
