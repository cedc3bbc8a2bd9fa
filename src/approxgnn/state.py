"""Versioned state: every ``state_dict()`` carries a ``version`` key, and every
``load_state_dict()`` refuses one it cannot read, through :func:`check_version`.

A state saved by an older layout fails with a message naming what it belongs to, rather than
with a ``KeyError`` deep inside a loader, or worse, loading silently into the wrong fields.
"""
from __future__ import annotations

from typing import Any

__all__ = ["check_version"]


def check_version(state: Any, version: int, what: str, *, absent: int | None = None, hint: str = "") -> None:
    """Raise ValueError unless ``state["version"] == version``.

    ``absent``: the version a state without the key is taken to be (states written before the
    key existed); None refuses such a state. ``what`` names the state in the message, ``hint``
    ends it (e.g. what to do instead).
    """
    got = state.get("version", absent) if isinstance(state, dict) else None
    if got != version:
        raise ValueError(f"unsupported {what} state (version {got!r}; this code reads version {version})"
                         + (f"; {hint}" if hint else ""))
