"""One-line errors from ``mergekit-yaml`` / ``mergekit-multi`` for recipes the plugin reads.

Stock mergekit prints a traceback for malformed YAML and a multi-line pydantic report for a
bad key. The wrapped click callbacks turn malformed YAML (any recipe) and validation errors
of recipes that use the plugin's keys into ``Error: FILE[:LINE]: key: message`` and exit 1;
any other failure of such a recipe (a full disk, say) is one line too unless ``-v`` is given.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import click
import pydantic
import yaml

from mergekit_tokenplug.errors import ConfigError, one_line_error
from mergekit_tokenplug.seam.schema import (
    PLUGIN_TOKENIZER_KEYS,
    has_tool_tokens,
    one_line_validation_error,
)


def _uses_plugin_keys(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            docs = list(yaml.safe_load_all(fh))
    except (OSError, yaml.YAMLError):
        return False
    return any(
        isinstance(d, dict)
        and isinstance(d.get("tokenizer"), dict)
        and (
            any(k in d["tokenizer"] for k in PLUGIN_TOKENIZER_KEYS)
            or has_tool_tokens(d["tokenizer"].get("tokens"))
        )
        for d in docs
    )


def yaml_error(exc: yaml.YAMLError, path: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    return ConfigError(f"malformed YAML ({getattr(exc, 'problem', None) or exc})", where=where)


def apply(script_module: ModuleType, config_arg: str) -> None:
    command = script_module.main
    callback = command.callback
    if getattr(callback, "_tokenplug_wrapped", False):
        return

    @functools.wraps(callback)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        path = kwargs.get(config_arg, "")
        try:
            return callback(*args, **kwargs)
        except yaml.YAMLError as exc:
            raise yaml_error(exc, path) from None
        except pydantic.ValidationError as exc:
            if _uses_plugin_keys(path):
                raise ConfigError(one_line_validation_error(exc, path)) from None
            raise
        except ConfigError as exc:
            if path and not exc.message.startswith(path):
                raise ConfigError(exc.message, where=path) from None
            raise
        except click.ClickException:
            raise
        except Exception as exc:
            options = kwargs.get("merge_options")
            if getattr(options, "verbosity", 0) or not _uses_plugin_keys(path):
                raise
            raise ConfigError(one_line_error(exc)) from None

    wrapped._tokenplug_wrapped = True  # type: ignore[attr-defined]
    command.callback = wrapped
