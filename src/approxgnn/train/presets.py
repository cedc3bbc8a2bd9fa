"""Named bundles of configuration values (``--preset NAME``), laid under the user's own values.

Order of precedence, lowest first: the dataclass defaults, the preset, the ``--config`` file, the
flags on the command line. A preset is plain data -- field names of :class:`TrainConfig`, with
``rsc`` / ``minibatch`` / ``history`` sub-dicts -- and the run records its name (``config.preset``) next to the
values it ended up with.
"""
from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The ReFresh paper's training setup. Weight decay and epochs are not part of it and keep the
    # library defaults. The fanouts [10, 15, 20] are taken as listed, in approxgnn's seeds-first
    # order; were the paper's list input-layer first (DGL's sampler order), the same sampling
    # would be [20, 15, 10] here. Which order the paper meant is not checked.
    "refresh": {
        "engine": "refresh", "model": "sage", "layers": 3, "hidden": 256, "batch_norm": True, "dropout": 0.1,
        "lr": 1e-4, "lr_schedule": "cosine",
        "minibatch": {"fanouts": [10, 15, 20], "batch_size": 1000},
    },
}

PRESET_HELP = {
    "refresh": "the ReFresh paper's setup: --engine refresh, SAGE, 3 layers x 256, batch norm, dropout 0.1, "
               "fanouts 10,15,20, batch size 1000, Adam lr 1e-4 with a cosine schedule",
}

_GROUPS = ("rsc", "minibatch", "history")


def apply_preset(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (TrainConfig fields, ``rsc``/``minibatch``/``history`` as dicts) laid over the preset they name
    in ``values["preset"]``; returned as a new dict. A value given in ``values`` always wins.

    One exception keeps a changed depth consistent: when ``values`` sets ``layers`` to another
    depth than the preset's but gives no fanouts, the preset's fanouts (one per preset layer) are
    dropped, so the fanouts follow the layers by the default rule.
    """
    name = values.get("preset")
    if name is None:
        return dict(values)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = copy.deepcopy(PRESETS[name])
    given_mb = values.get("minibatch") if isinstance(values.get("minibatch"), dict) else {}
    if "layers" in values and values["layers"] != preset.get("layers") and "fanouts" not in given_mb:
        preset.get("minibatch", {}).pop("fanouts", None)
    out = {**preset, **values}
    for group in _GROUPS:
        if isinstance(values.get(group), dict) or group in preset:
            given = values.get(group, {})
            out[group] = {**preset.get(group, {}), **given} if isinstance(given, dict) else given
    return out
