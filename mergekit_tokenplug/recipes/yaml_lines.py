"""Key path -> line number, read from the YAML node tree.

pydantic and our own checks name a problem by its key path (``tokenizer.approximation.k``);
a person fixing a recipe needs the line. PyYAML's composer keeps the start mark of every node,
so one walk of the tree gives the line of every key and list item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[Any, ...]  # str keys and int list indices
# pydantic adds union-branch labels to error locations (``ModelReference``, ``str``,
# ``function-after[...]``, ``plugin``): they are not keys of the document.
_KEY_LIKE = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_LABELS = {"str", "int", "float", "bool", "dict", "list", "none", "plugin", "stock"}


@dataclass
class LineMap:
    """Lines (1-based) of every key path of one YAML document."""

    start_line: int  # the document's first line
    lines: dict[Path, int] = field(default_factory=dict)

    def resolve(self, loc: Iterable[Any]) -> tuple[Path, int]:
        """The document path a pydantic-style location names, and the line to report.

        Elements that are not keys at that point (union-branch labels) are dropped; a last
        element that looks like a field name is kept even when absent (a missing key), and
        its line is the nearest existing ancestor's.
        """
        loc = list(loc)
        path: list[Any] = []
        line = self.start_line
        for i, part in enumerate(loc):
            # a YAML key like ``5:`` loads as an int; the map holds its text
            key = str(part) if isinstance(part, int) and (*path, part) not in self.lines else part
            if (*path, key) in self.lines:
                path.append(key)
                line = self.lines[tuple(path)]
            elif i == len(loc) - 1 and isinstance(part, str) and _looks_like_key(part):
                path.append(part)
        return tuple(path), line

    def line_of(self, path: Sequence[Any]) -> int:
        return self.resolve(path)[1]


def _looks_like_key(part: str) -> bool:
    return bool(_KEY_LIKE.fullmatch(part)) and part not in _TYPE_LABELS


def key_string(path: Sequence[Any]) -> str:
    """``tokenizer.approximation.k`` / ``models[0].model``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).removeprefix(".")


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    # (key, the node whose line is the key's, the value node); non-scalar keys are skipped
    if isinstance(node, yaml.MappingNode):
        children = [(k.value, k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
    elif isinstance(node, yaml.SequenceNode):
        children = [(i, item, item) for i, item in enumerate(node.value)]
    else:
        return
    for key, marked, value in children:
        child = (*path, key)
        lines.setdefault(child, marked.start_mark.line + 1)
        _walk(value, child, lines)


def document_line_maps(text: str) -> list[LineMap]:
    """One map per document of ``text``, in ``yaml.safe_load_all``'s order (raises
    ``yaml.YAMLError`` on bad syntax)."""
    maps = []
    for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
        lines: dict[Path, int] = {}
        _walk(node, (), lines)
        maps.append(LineMap(node.start_mark.line + 1, lines))
    return maps


def yaml_error(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """(line, message) of a YAML syntax error, as every command reports it."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return (mark.line + 1 if mark is not None else None), f"malformed YAML ({problem})"
