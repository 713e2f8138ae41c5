"""``transplant``: one model, a donor's tokenizer, no recipe to write.

It builds the equivalent one-model recipe (``passthrough`` + ``tokenizer.source: DONOR`` +
``tokenizer.approximation``) and runs it through mergekit's own machinery, so the command
and a recipe run by ``mergekit-yaml`` produce the same bytes.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.registry import DEFAULT_METHOD


def transplant_recipe(
    base: str,
    donor: str,
    method: str = DEFAULT_METHOD,
    params: dict[str, Any] | None = None,
    *,
    dtype: str | None = None,
    seed: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """The recipe ``transplant`` runs (also printed by ``--dry-run``).

    Local paths are made absolute: mergekit treats a relative name as a hub id in places
    (the model card looks it up online).
    """
    base, donor = _local_abspath(base), _local_abspath(donor)
    approximation: dict[str, Any] = {"method": method, **(params or {})}
    if seed is not None:
        approximation["seed"] = seed
    tokenizer: dict[str, Any] = {"source": donor, "approximation": approximation}
    if pad_to_multiple_of:
        tokenizer["pad_to_multiple_of"] = pad_to_multiple_of
    recipe: dict[str, Any] = {
        "merge_method": "passthrough",
        "models": [{"model": base}],
        "tokenizer": tokenizer,
    }
    if dtype:
        recipe["dtype"] = dtype
    return recipe


def _local_abspath(path: str) -> str:
    return os.path.abspath(path) if os.path.exists(path) else path


def resolve_device(device: str | None) -> str:
    """mergekit's device names, with a clear error when CUDA is asked for but absent."""
    import torch

    name = (device or "cpu").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "CUDA was requested but no CUDA device is available; use --device cpu or --device auto",
            where="--device",
        )
    return name


def load_recipe(recipe: dict[str, Any] | str, source_name: str = "recipe") -> Any:
    """Validate a recipe (dict or YAML text) into mergekit's MergeConfiguration, plugin active."""
    import pydantic

    from mergekit_tokenplug.seam.activation import activate
    from mergekit_tokenplug.seam.schema import one_line_validation_error

    activate()
    from mergekit.config import MergeConfiguration

    if isinstance(recipe, str):
        try:
            recipe = yaml.safe_load(recipe)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(
                f"malformed YAML ({getattr(exc, 'problem', None) or exc})",
                where=f"{source_name}{line}",
            ) from None
    if not isinstance(recipe, dict):
        raise ConfigError("expected a mapping of recipe keys", where=source_name)
    try:
        return MergeConfiguration.model_validate(recipe)
    except pydantic.ValidationError as exc:
        raise ConfigError(one_line_validation_error(exc, source_name)) from None
    except RuntimeError as exc:  # mergekit's own validators raise RuntimeError
        raise ConfigError(str(exc), where=source_name) from None


def run_recipe(
    merge_config: Any,
    out: str,
    *,
    device: str | None = "cpu",
    seed: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    config_source: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run a validated plugin recipe atomically; return the run's report."""
    import mergekit.merge
    from mergekit.options import MergeOptions

    from mergekit_tokenplug import report
    from mergekit_tokenplug.seam.run import run_plugin_merge

    opts = MergeOptions(
        device=resolve_device(device),
        random_seed=seed,
        quiet=quiet,
        trust_remote_code=trust_remote_code,
        write_model_card=True,
        lazy_unpickle=False,
        **options,
    )
    opts.apply_global_options()
    original = getattr(mergekit.merge.run_merge, "__wrapped__", mergekit.merge.run_merge)
    run_plugin_merge(
        original,
        merge_config,
        out,
        opts,
        config_source,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
    )
    return report.snapshot()


def transplant(
    base: str,
    donor: str,
    out: str,
    method: str = DEFAULT_METHOD,
    params: dict[str, Any] | None = None,
    *,
    device: str | None = "cpu",
    seed: int | None = None,
    dtype: str | None = None,
    pad_to_multiple_of: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Give ``base`` the tokenizer of ``donor`` (rows estimated with ``method``), written to ``out``."""
    recipe = transplant_recipe(
        base, donor, method, params, dtype=dtype, seed=seed, pad_to_multiple_of=pad_to_multiple_of
    )
    text = yaml.safe_dump(recipe, sort_keys=False)
    merge_config = load_recipe(recipe, "transplant")
    return run_recipe(
        merge_config,
        out,
        device=device,
        seed=seed,
        overwrite=overwrite,
        quiet=quiet,
        allow_pickle=allow_pickle,
        config_source=text,
    )
