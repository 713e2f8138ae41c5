"""The ``parameters.requires`` marker: a plugin recipe must say it needs the plugin.

Without the marker, stock mergekit (plugin uninstalled or disabled) drops the plugin's keys and
runs the recipe with raw copies and zeros: the silent fallback this package exists to prevent.
``recipes validate`` reports a missing marker as an error; ``--fix`` writes it into the file
(a text edit, so comments and layout stay as they are).
"""

from __future__ import annotations

from typing import Any

import yaml

from mergekit_tokenplug import __version__
from mergekit_tokenplug.recipes.yaml_lines import document_line_maps
from mergekit_tokenplug.seam.schema import PLUGIN_NAME, REQUIRES_KEY, uses_plugin


def marker_spec() -> str:
    """``>=MAJOR.MINOR`` of the installed plugin."""
    return ">=" + ".".join(__version__.split(".")[:2])


def marker_line() -> str:
    return f'{REQUIRES_KEY}: {{{PLUGIN_NAME}: "{marker_spec()}"}}'


def needs_marker(doc: Any) -> bool:
    """A document that uses the plugin's tokenizer keys but lacks ``parameters.requires``."""
    if not isinstance(doc, dict) or not uses_plugin({"tokenizer": doc.get("tokenizer")}):
        return False
    params = doc.get("parameters")
    return not (isinstance(params, dict) and REQUIRES_KEY in params)


def missing_marker_message() -> str:
    return (
        f"this recipe uses {PLUGIN_NAME}'s keys but has no parameters.{REQUIRES_KEY}; where the "
        f"plugin is not installed, stock mergekit would drop those keys and run it with copied "
        f"rows and zeros. Add `parameters: {{{marker_line()}}}` (or run `mergekit-tokenplug "
        f"recipes validate --fix`)"
    )


def add_marker(text: str) -> tuple[str, int]:
    """``text`` with the marker added to every document that needs it, and how many got it.

    A block ``parameters:`` mapping gets one more line; a document without ``parameters``
    gets a ``parameters:`` block before its first key. A flow-style ``parameters: {...}`` is
    left alone (counted as not fixed)."""
    docs = list(yaml.safe_load_all(text))
    maps = document_line_maps(text)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, list[str]]] = []  # (0-based index to insert before, lines)
    for doc, lmap in zip(docs, maps, strict=True):
        if not needs_marker(doc):
            continue
        if "parameters" not in doc:
            edits.append((lmap.start_line - 1, ["parameters:\n", f"  {marker_line()}\n"]))
            continue
        at = lmap.lines[("parameters",)] - 1
        if doc["parameters"] is None or not lines[at].rstrip().endswith(":"):
            continue  # ``parameters:`` with no value, or a flow mapping: not edited
        children = [lmap.lines[p] for p in lmap.lines if len(p) == 2 and p[0] == "parameters"]
        first = lines[min(children) - 1]
        indent = first[: len(first) - len(first.lstrip())]
        edits.append((at + 1, [f"{indent}{marker_line()}\n"]))
    for at, new in sorted(edits, reverse=True):
        if at > 0 and not lines[at - 1].endswith("\n"):
            lines[at - 1] += "\n"
        lines[at:at] = new
    return "".join(lines), len(edits)
