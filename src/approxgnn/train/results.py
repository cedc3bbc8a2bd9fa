"""Presenting results: a plain-text table and a validation-vs-time plot."""
from __future__ import annotations

import os
from typing import Any, Sequence


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned text table; floats shown with 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(b) for b in body])


def plot_curves(results: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str = "",
                label_key: str = "engine") -> None:
    """Validation metric against cumulative training time, one line per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        curve = r["curve"]
        label = r.get("label") or str(r.get(label_key))
        ax.plot([c["time_s"] for c in curve], [c["val"] for c in curve], label=label)
    metric = results[0]["metric"] if results else "metric"
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
