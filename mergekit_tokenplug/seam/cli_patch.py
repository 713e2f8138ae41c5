"""``mergekit-yaml`` / ``mergekit-multi`` refuse a bad plugin recipe before any weight loads.

Stock mergekit prints a traceback for malformed YAML and a multi-line pydantic report for a
bad key, and silently drops unknown keys. The wrapped click callbacks refuse keys that look
like misspelt plugin/tokenizer keys anywhere in a recipe, then fail a plugin recipe with the
first line ``recipes validate`` prints for it (one rule, one message:
``Error: FILE:LINE key: message``, exit 1). Any other failure of such a recipe (a full disk,
say) is one line too unless ``-v`` is given. Recipes without the plugin's keys run stock;
their malformed YAML gets the same one line instead of a traceback (only while the plugin is
active).
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pydantic
import yaml

from mergekit_tokenplug.compute.progress import bar_policy
from mergekit_tokenplug.errors import ConfigError, TokenplugError, one_line_error
from mergekit_tokenplug.output.atomic import overlaps
from mergekit_tokenplug.recipes.validate import validate_path
from mergekit_tokenplug.recipes.yaml_lines import yaml_error
from mergekit_tokenplug.seam import refusal_reason
from mergekit_tokenplug.seam.multi_provenance import finalize_multi
from mergekit_tokenplug.seam.schema import check_near_misses, one_line_validation_error, uses_plugin


def _documents(path: str) -> list[Any] | None:
    """The recipe's YAML documents ([] when unreadable, None when malformed)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return list(yaml.safe_load_all(fh))
    except OSError:
        return []
    except (yaml.YAMLError, RecursionError):  # PyYAML recurses once per nesting level
        return None


def check_multi_out(docs: list[Any], intermediate_dir: str | None, out_path: str | None) -> None:
    """The final OUT of ``mergekit-multi`` apart from every stage's intermediate directory:
    one written over the other gives a stage's model under a manifest listing both."""
    if not intermediate_dir or not out_path:
        return
    for doc in docs:
        name = doc.get("name") if isinstance(doc, dict) else None
        stage = Path(intermediate_dir) / str(name) if name else None
        if stage is not None and overlaps(Path(out_path), stage):
            raise ConfigError(
                f"is, contains or lies inside the intermediate directory of stage {name!r} ({stage}); expected a directory apart from every stage",
                where="--out-path",
            )


def apply(script_module: ModuleType, config_arg: str) -> None:
    command = script_module.main
    callback = command.callback
    if getattr(callback, "_tokenplug_wrapped", False):
        return

    @functools.wraps(callback)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        path = kwargs.get(config_arg, "")
        docs = _documents(path)
        plugin = any(uses_plugin(d) for d in docs or ())
        try:
            # a plugin recipe, or malformed YAML while the plugin is active, fails with the
            # line ``recipes validate`` prints first for it (with the YAML line)
            if plugin or (docs is None and refusal_reason() is None):
                errors = validate_path(path).errors
                if errors:
                    raise ConfigError(errors[0].format())
            for doc in docs or ():  # misspelt plugin keys in a recipe that looks stock
                check_near_misses(doc)
            if plugin and script_module.__name__ == "mergekit.scripts.multimerge":
                check_multi_out(docs or [], kwargs.get("intermediate_dir"), kwargs.get("out_path"))
            # the click callback is mergekit's add_merge_options wrapper: options arrive as
            # separate keyword arguments
            with bar_policy(bool(kwargs.get("quiet", False))):
                result = callback(*args, **kwargs)
            if script_module.__name__ == "mergekit.scripts.multimerge":
                finalize_multi(
                    path,
                    kwargs.get("intermediate_dir", ""),
                    kwargs.get("out_path"),
                    write_card=bool(kwargs.get("write_model_card", True)),
                )
            return result
        except yaml.YAMLError as exc:
            line, message = yaml_error(exc)
            raise ConfigError(message, where=f"{path}:{line}" if line else path) from None
        except pydantic.ValidationError as exc:
            if plugin:
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
            if getattr(options, "verbosity", 0) or not plugin:
                raise
            raise ConfigError(one_line_error(exc)) from None

    wrapped._tokenplug_wrapped = True  # type: ignore[attr-defined]
    command.callback = wrapped
