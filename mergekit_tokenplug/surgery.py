"""``transplant``: one model, a donor's tokenizer, no recipe to write.

It builds the equivalent one-model recipe (``passthrough`` + ``tokenizer.source: DONOR`` +
``tokenizer.approximation``) and runs it through mergekit's own machinery, so the command
and a recipe run by ``mergekit-yaml`` produce the same bytes.
"""

from __future__ import annotations

import os
from typing import Any

import pydantic
import yaml

from mergekit_tokenplug import report
from mergekit_tokenplug.compute.progress import bar_policy
from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.guards import check_device
from mergekit_tokenplug.recipes.plan import plan_recipe
from mergekit_tokenplug.recipes.yaml_lines import yaml_error
from mergekit_tokenplug.seam.activation import activate
from mergekit_tokenplug.seam.run import run_plugin_merge
from mergekit_tokenplug.seam.schema import one_line_validation_error


def transplant_recipe(
    base: str,
    donor: str,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    *,
    dtype: str | None = None,
    seed: int | None = None,
    pad_to_multiple_of: int | None = None,
    add_bos: str = "base",
    chat_template: str = "base",
) -> dict[str, Any]:
    """The recipe ``transplant`` runs (also printed by ``--dry-run``).

    Local paths are made absolute: mergekit treats a relative name as a hub id in places
    (the model card looks it up online). Without ``method`` the recipe names none, and the
    default follows what the donor offers (``method_choice``).
    """
    base, donor = (os.path.abspath(p) if os.path.exists(p) else p for p in (base, donor))
    approximation: dict[str, Any] = {**({"method": method} if method else {}), **(params or {})}
    if seed is not None:
        approximation["seed"] = seed
    tokenizer: dict[str, Any] = {"source": donor, "approximation": approximation}
    if pad_to_multiple_of is not None:
        tokenizer["pad_to_multiple_of"] = pad_to_multiple_of
    if add_bos != "base":
        tokenizer["add_bos"] = add_bos
    if chat_template != "base":
        tokenizer["chat_template"] = chat_template
    recipe: dict[str, Any] = {
        "merge_method": "passthrough",
        "models": [{"model": base}],
        "tokenizer": tokenizer,
    }
    if dtype:
        recipe["dtype"] = dtype
    return recipe


def load_recipe(recipe: dict[str, Any] | str, source_name: str = "recipe") -> Any:
    """Validate a recipe (dict or YAML text) into mergekit's MergeConfiguration, plugin active."""
    activate()
    from mergekit.config import MergeConfiguration

    if isinstance(recipe, str):
        try:
            recipe = yaml.safe_load(recipe)
        except yaml.YAMLError as exc:
            line, message = yaml_error(exc)
            where = f"{source_name}:{line}" if line else source_name
            raise ConfigError(message, where=where) from None
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

    opts = MergeOptions(
        device=check_device(device),
        random_seed=seed,
        quiet=quiet,
        trust_remote_code=trust_remote_code,
        write_model_card=True,
        lazy_unpickle=False,
        **options,
    )
    opts.apply_global_options()
    original = getattr(mergekit.merge.run_merge, "__wrapped__", mergekit.merge.run_merge)
    with bar_policy(quiet):
        try:
            run_plugin_merge(
                original,
                merge_config,
                out,
                opts,
                config_source,
                overwrite=overwrite,
                allow_pickle=allow_pickle,
            )
        except OSError as exc:
            raise hub_input_error(exc, merge_config) or exc from None
    return report.snapshot()


def hub_input_error(exc: OSError, merge_config: Any) -> InputError | None:
    """An input that is not a local directory and that the Hub could not give (offline,
    unreachable, unknown id): one line naming it, not transformers' bare OSError."""
    text = str(exc)
    if "huggingface.co" not in text and "offline" not in text.lower():
        return None
    refs = [str(m.model.path) for m in merge_config.referenced_models()]
    source = merge_config.tokenizer.source if merge_config.tokenizer else None
    if source is not None and not isinstance(source, str):
        refs.append(str(source.model.path))
    remote = [r for r in dict.fromkeys(refs) if not os.path.exists(os.path.expanduser(r))]
    if not remote:
        return None
    first = (text.strip().splitlines() or [""])[0]
    return InputError(
        f"not a local directory, and the Hub could not provide it ({first}); expected a local "
        "model directory (or a Hub id with network access or in the local Hub cache)",
        where=", ".join(remote),
    )


def transplant(
    base: str,
    donor: str,
    out: str,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    *,
    device: str | None = "cpu",
    overwrite: bool = False,
    quiet: bool = False,
    allow_pickle: bool = False,
    **recipe_options: Any,
) -> dict[str, Any]:
    """Give ``base`` the tokenizer of ``donor`` (rows estimated with ``method``), written to
    ``out``; ``recipe_options`` are :func:`transplant_recipe`'s (``seed`` also seeds the run)."""
    recipe = transplant_recipe(base, donor, method, params, **recipe_options)
    config = load_recipe(recipe, "transplant")
    check_k_first(config, method, (params or {}).get("k"))
    return run_recipe(
        config,
        out,
        device=device,
        seed=recipe_options.get("seed"),
        overwrite=overwrite,
        quiet=quiet,
        allow_pickle=allow_pickle,
        config_source=yaml.safe_dump(recipe, sort_keys=False),
    )


def check_k_first(config: Any, method: str, k: Any) -> None:
    """Refuse a ``k`` the shared tokens cannot give before any weight is read."""
    if not isinstance(k, int) or isinstance(k, bool):
        return
    from mergekit_tokenplug.recipes.shared_k import k_problems  # lazy: reads tokenizers

    try:
        problems = k_problems(config, method, k)
    except Exception:  # unreadable inputs: the run's own input guards name them
        return
    for message in problems:
        if message.startswith("k "):
            raise ConfigError(message.removeprefix("k "), where="tokenizer.approximation.k")
        raise ConfigError(message, where="tokenizer.source")


def plan_transplant(
    base: str,
    donor: str,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    device: str | None = "cpu",
    **recipe_options: Any,
) -> dict[str, Any]:
    """The plan of ``transplant BASE DONOR`` (for ``transplant --dry-run``)."""
    recipe = transplant_recipe(base, donor, method, params, **recipe_options)
    plan = plan_recipe(load_recipe(recipe, "transplant"), device=device)
    plan["recipe"] = recipe
    return plan
