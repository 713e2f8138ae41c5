"""Recipe tooling: validation without weights, JSON Schema, dry-run plans, output verification.

The CLI commands live in :mod:`mergekit_tokenplug.recipes.cli` (``commands``). The library
functions below are imported lazily so that loading the CLI does not import mergekit/torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Options": "validate",
    "Problem": "validate",
    "validate_path": "validate",
    "validate_text": "validate",
    "recipe_json_schema": "jsonschema",
    "plan_recipe": "plan",
    "plan_transplant": "plan",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(name)
    module = importlib.import_module(f"mergekit_tokenplug.recipes.{_EXPORTS[name]}")
    return getattr(module, name)
