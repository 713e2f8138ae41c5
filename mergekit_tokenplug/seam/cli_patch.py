"""``mergekit-yaml`` / ``mergekit-multi`` check a recipe that uses the plugin the way
``recipes validate`` does, before any weight loads, and fail with its first problem:
``Error: FILE:LINE key: message``, exit 1. Validation and run share one rule and one message.

Recipes without the plugin's keys run stock; their malformed YAML gets the same one line
instead of a traceback (only while the plugin is active).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import yaml

from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.recipes.validate import validate_path
from mergekit_tokenplug.seam import refusal_reason
from mergekit_tokenplug.seam.schema import uses_plugin


def first_problem(path: str) -> str | None:
    """The line ``recipes validate`` prints first for a recipe file, or None when it passes
    (or does not use the plugin)."""
    try:
        with open(path, encoding="utf-8") as fh:
            docs = list(yaml.safe_load_all(fh))
    except OSError:
        return None
    except yaml.YAMLError:
        docs = None
    if docs is not None and not any(uses_plugin(d) for d in docs):
        return None
    if docs is None and refusal_reason() is not None:
        return None
    errors = validate_path(path).errors
    return errors[0].format() if errors else None


def apply(script_module: ModuleType, config_arg: str) -> None:
    command = script_module.main
    callback = command.callback
    if getattr(callback, "_tokenplug_wrapped", False):
        return

    @functools.wraps(callback)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        problem = first_problem(kwargs.get(config_arg, ""))
        if problem is not None:
            raise ConfigError(problem)
        return callback(*args, **kwargs)

    wrapped._tokenplug_wrapped = True  # type: ignore[attr-defined]
    command.callback = wrapped
