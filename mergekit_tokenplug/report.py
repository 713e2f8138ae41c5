"""Collects what the vocabulary seam did during one run, for the log, card and manifest.

mergekit executes tasks in this process (threads at most), so a lock-guarded collector is
enough; the run wrapper resets it before a merge and reads it after.
"""

from __future__ import annotations

import threading
from typing import Any

_LOCK = threading.Lock()
_FILLS: list[dict[str, Any]] = []
_VOCAB: dict[str, Any] = {}
_TOOLS: list[dict[str, Any]] = []
_SPECIALS: dict[str, Any] = {}


def reset() -> None:
    with _LOCK:
        _FILLS.clear()
        _VOCAB.clear()
        _TOOLS.clear()
        _SPECIALS.clear()


def add_fill(record: dict[str, Any]) -> None:
    with _LOCK:
        _FILLS.append(record)


def add_tool_rows(model: str, weight: str, tokens: list[str], ids: list[int], rows: Any) -> None:
    """The prior rows given to tool tokens (exported with the model for regularized training)."""
    with _LOCK:
        _TOOLS.append(
            {"model": model, "weight": weight, "tokens": tokens, "ids": ids, "rows": rows}
        )


def set_specials(model: str, table: dict[str, Any]) -> None:
    """One model's special-token table (``vocab.specials``); the same for every matrix."""
    with _LOCK:
        _SPECIALS.setdefault(model, table)


def tool_rows() -> list[dict[str, Any]]:
    with _LOCK:
        return sorted(_TOOLS, key=lambda r: (r["model"], r["weight"]))


def set_vocab(summary: dict[str, Any]) -> None:
    with _LOCK:
        _VOCAB.clear()
        _VOCAB.update(summary)


def snapshot() -> dict[str, Any]:
    """The run's report: vocabulary alignment counts and one record per filled matrix."""
    with _LOCK:
        fills = sorted(_FILLS, key=lambda r: (r["model"], r["role"], r.get("weight", "")))
        specials = {k: _SPECIALS[k] for k in sorted(_SPECIALS)}
        return {
            "vocabulary": dict(_VOCAB),
            "matrices": [dict(r) for r in fills],
            "special_tokens": specials,
        }
