"""Reporting tool tokens as ``tool``.

The fill estimates every missing row, tool tokens included (they are new to every model and
known in no space), with the method used for tokens no space knows; the seam then replaces
those rows with the re-initialization prior. Plan, manifest and card count them as ``tool``
(source ``tool prior``) so they say what the rows really are.
"""

from __future__ import annotations

TOOL_METHOD = "tool"
TOOL_SOURCE = "tool prior"
NO_SOURCE = "(none)"


def count_as_tool(
    by_method: dict[str, int], by_source: dict[str, int], n: int, method: str
) -> None:
    """Move ``n`` rows counted under ``method`` / no source to ``tool`` / ``tool prior``."""
    for counts, old, new in ((by_method, method, TOOL_METHOD), (by_source, NO_SOURCE, TOOL_SOURCE)):
        left = counts.get(old, 0) - n
        if left > 0:
            counts[old] = left
        else:
            counts.pop(old, None)
        counts[new] = counts.get(new, 0) + n
