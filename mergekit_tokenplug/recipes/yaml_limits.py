"""Size limits on recipe YAML, checked before anything walks the loaded document.

YAML aliases let a few hundred bytes stand for billions of nodes (an "alias bomb"); loading
keeps them shared, but every walk over the result expands them. A recipe is a few thousand
nodes, so the expanded size is counted on the composed node graph (shared nodes counted
once per use, memoized) and anything far past that is refused.
"""

from __future__ import annotations

import yaml

MAX_BYTES = 16 << 20  # a recipe with long tool descriptions is still far below this
MAX_NODES = 1_000_000  # nodes after alias expansion
TOO_DEEP = "the YAML is nested too deeply; expected a recipe of ordinary depth"


def yaml_size_problem(text: str) -> str | None:
    """Why ``text`` is too large to treat as a recipe, or None (malformed YAML is left to the loader)."""
    if len(text) > MAX_BYTES:
        return f"the file is {len(text)} bytes; expected a recipe under {MAX_BYTES} bytes"
    try:
        roots = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        return TOO_DEEP
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = MAX_NODES + 1  # a node that reaches itself expands without end
        children = node.value if isinstance(node, yaml.CollectionNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in children for n in pair]
        total = 1
        for child in children:
            total += expanded(child)
            if total > MAX_NODES:
                break
        sizes[key] = min(total, MAX_NODES + 1)
        return sizes[key]

    try:
        total = sum(expanded(r) for r in roots if r is not None)
    except RecursionError:
        return TOO_DEEP
    if total > MAX_NODES:
        return f"YAML aliases expand to more than {MAX_NODES} nodes; expected a recipe of ordinary size (aliases that nest many levels multiply)"
    return None
