"""Reporting tool tokens as ``tool``.

The fill estimates every missing row, tool tokens included (they are new to every model and
known in no space), with the method used for tokens no space knows; the seam then replaces
those rows with the re-initialization prior. Plan, manifest and card count them as ``tool``
(source ``tool prior``) so they say what the rows really are.
"""

from __future__ import annotations

from typing import Any

from mergekit_tokenplug.methods.base import Need

TOOL_METHOD = "tool"
TOOL_SOURCE = "tool prior"
NO_SOURCE = "(none)"


def unknown_token_method(spec: Any) -> str:
    """The method the fill uses for tokens no source space knows."""
    return (spec.fallback or "mean") if Need.DONOR_EMBEDDINGS in spec.needs else spec.name


def count_as_tool(
    by_method: dict[str, int], by_source: dict[str, int], n: int, method: str
) -> None:
    """Move ``n`` rows counted under ``method`` / no source to ``tool`` / ``tool prior``."""
    if n <= 0:
        return
    for counts, old, new in ((by_method, method, TOOL_METHOD), (by_source, NO_SOURCE, TOOL_SOURCE)):
        left = counts.get(old, 0) - n
        if left > 0:
            counts[old] = left
        else:
            counts.pop(old, None)
        counts[new] = counts.get(new, 0) + n
