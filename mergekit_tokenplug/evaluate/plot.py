"""Figures of the evaluation commands (matplotlib, drawn off-screen)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.evaluate.bpb import bpb_grid


def require_matplotlib() -> None:
    """Fail before any work when a plot is asked for and matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(
            "needs matplotlib, which is not installed (pip install matplotlib)", where="--plot"
        ) from None


def plot_bpb(records: Sequence[dict[str, Any]], path: str, title: str | None = None) -> None:
    """Grouped bars: bits per byte per text (groups), one bar per model (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, texts, names, cell = bpb_grid(records)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(texts) * max(len(models), 2) / 2 + 2), 4.6))
    width = 0.84 / max(len(models), 1)
    cmap = plt.get_cmap("tab10")
    for j, model in enumerate(models):
        vals = [cell.get((model, t), np.nan) for t in texts]
        xs = np.arange(len(texts)) + (j - (len(models) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=model, color=cmap(j % 10))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(texts)))
    ax.set_xticklabels(names)
    ax.set_xlabel("text")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(title or "Bits per byte, each model with its own tokenizer")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(ncol=min(len(models), 4), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)
