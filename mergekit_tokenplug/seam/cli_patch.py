"""One-line errors from ``mergekit-yaml`` / ``mergekit-multi`` for recipes the plugin reads.

Stock mergekit prints a traceback for malformed YAML and a multi-line pydantic report for a
bad key, and silently drops unknown keys. The wrapped click callbacks refuse keys that look
like misspelt plugin/tokenizer keys before anything runs, and turn malformed YAML (any
recipe) and validation errors of recipes that use the plugin's keys into
``Error: FILE[:LINE]: key: message`` and exit 1; any other failure of such a recipe (a full
disk, say) is one line too unless ``-v`` is given.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import click
import pydantic
import yaml

from mergekit_tokenplug.compute.progress import bars_disabled
from mergekit_tokenplug.errors import ConfigError, TokenplugError, one_line_error
from mergekit_tokenplug.seam.schema import (
    REQUIRES_KEY,
    STOCK_TOKENIZER_KEYS,
    check_near_misses,
    has_tool_tokens,
    one_line_validation_error,
)


def _documents(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return list(yaml.safe_load_all(fh))
    except (OSError, yaml.YAMLError):
        return []


def _uses_plugin_keys(docs: list[Any]) -> bool:
    """Plugin (or unknown) tokenizer keys, or the ``parameters.requires`` marker."""
    return any(
        isinstance(d, dict)
        and (
            (
                isinstance(d.get("tokenizer"), dict)
                and (
                    any(k not in STOCK_TOKENIZER_KEYS for k in d["tokenizer"])
                    or has_tool_tokens(d["tokenizer"].get("tokens"))
                )
            )
            or (isinstance(d.get("parameters"), dict) and REQUIRES_KEY in d["parameters"])
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
        docs = _documents(path)
        try:
            for doc in docs:
                check_near_misses(doc)
            # the click callback is mergekit's add_merge_options wrapper: options arrive as
            # separate keyword arguments
            with bars_disabled(bool(kwargs.get("quiet", False))):
                result = callback(*args, **kwargs)
            if script_module.__name__ == "mergekit.scripts.multimerge":
                from mergekit_tokenplug.seam.multi_provenance import finalize_multi

                finalize_multi(
                    path,
                    kwargs.get("intermediate_dir", ""),
                    kwargs.get("out_path"),
                    write_card=bool(kwargs.get("write_model_card", True)),
                )
            return result
        except yaml.YAMLError as exc:
            raise yaml_error(exc, path) from None
        except pydantic.ValidationError as exc:
            if _uses_plugin_keys(docs):
                raise ConfigError(one_line_validation_error(exc, path)) from None
            raise
        except TokenplugError as exc:
            if path and not exc.message.startswith(str(path)):
                raise type(exc)(exc.message, where=str(path)) from None
            raise
        except click.ClickException:
            raise
        except Exception as exc:
            options = kwargs.get("merge_options")
            if getattr(options, "verbosity", 0) or not _uses_plugin_keys(docs):
                raise
            raise ConfigError(one_line_error(exc)) from None

    wrapped._tokenplug_wrapped = True  # type: ignore[attr-defined]
    command.callback = wrapped
