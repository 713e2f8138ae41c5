"""Commands for recipes and outputs: ``recipes validate``, ``recipes schema``, ``plan``, ``verify``.

Attached to the main ``mergekit-tokenplug`` group by ``for c in commands: main.add_command(c)``.
Exit codes mean something to CI: 0 valid/OK, 1 invalid/mismatch, 2 usage error (click's).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import click

from mergekit_tokenplug.errors import TokenplugError
from mergekit_tokenplug.recipes.collection import find, recipe_files, summary


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Tokenizer loading logs at INFO/WARNING; validation output must stay one line per problem."""
    loggers = [logging.getLogger(n) for n in ("mergekit", "transformers", "tokenizers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@click.group("recipes")
def recipes() -> None:
    """Check recipes, print their JSON Schema, list and show the shipped ones."""


@recipes.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of problems.")
@click.option("--quiet", "-q", is_flag=True, help="Print errors only (no warnings, no OK lines).")
@click.option(
    "--inputs",
    "check_inputs",
    is_flag=True,
    help="Also check the inputs: model directories exist and hold a tokenizer/weights, corpus "
    "files and embedders exist, OMP's k fits the shared tokens. Without it only what needs no "
    "input is checked (syntax, schema, methods, parameters, stage graph) and inputs that are "
    "not here are listed as notes.",
)
@click.option(
    "--skip-models",
    is_flag=True,
    help="Like the default, without the notes about inputs that are not here.",
)
@click.option(
    "--allow-hub",
    is_flag=True,
    help="Names that are not local paths but look like hub ids are warnings, not errors.",
)
@click.option("--trust-remote-code", is_flag=True, help="Allow tokenizers with custom code.")
@click.option(
    "--fix",
    is_flag=True,
    help="Add the missing parameters.requires marker to recipes that use the plugin's keys "
    "(edits the files in place, comments kept), then validate them.",
)
def validate(
    paths: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    check_inputs: bool,
    skip_models: bool,
    allow_hub: bool,
    trust_remote_code: bool,
    fix: bool,
) -> None:
    """Check recipe files (or directories of them) without loading weights.

    Prints one line per problem, `FILE:LINE key: message`; exit 0 when every file is valid,
    1 otherwise.
    """
    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.recipes.validate import Options, expand_paths, validate_path

    files = expand_paths(list(paths))
    if not files:
        raise click.UsageError(f"no *.yaml or *.yml files in {', '.join(paths)}")
    if fix:
        _fix_markers(files, echo=not (quiet or as_json))
    options = Options(
        require_marker=True,
        check_models=check_inputs,
        note_inputs=not skip_models,
        allow_hub=allow_hub,
        trust_remote_code=trust_remote_code,
    )
    with _quiet_libraries():
        results = [validate_path(f, options) for f in files]
    problems = [p for r in results for p in r.problems]
    errors = [p for p in problems if p.severity == "error"]
    if as_json:
        click.echo(json.dumps([asdict(p) for p in problems], indent=2))
    else:
        for r in results:
            for p in r.errors if quiet else r.problems:
                click.echo(p.format())
            if not quiet and not r.errors:
                click.echo(f"OK: {r.file}")
        if not quiet:
            bad = sum(1 for r in results if r.errors)
            click.echo(f"{len(errors)} error(s) in {bad} of {len(results)} file(s)")
    click.get_current_context().exit(1 if errors else 0)


def _fix_markers(files: list[str], echo: bool) -> None:
    """``--fix``: write ``parameters.requires`` into the recipes that need it."""
    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.recipes.requires import add_marker

    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8")
            fixed, count = add_marker(text)
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # unreadable or malformed: validation reports it
        if count:
            Path(f).write_text(fixed, encoding="utf-8")
            if echo:
                click.echo(f"fixed: {f}: added parameters.requires to {count} document(s)")


@recipes.command("list")
def list_recipes() -> None:
    """List the curated recipes shipped with the package."""
    for path in recipe_files():
        click.echo(f"{path.stem}: {summary(path)}")


@recipes.command("show")
@click.argument("name")
@click.option("--path", "as_path", is_flag=True, help="Print the file's path instead of its text.")
def show_recipe(name: str, as_path: bool) -> None:
    """Print a shipped recipe (NAME: file name, stem or number, e.g. 01)."""
    path = find(name)
    click.echo(str(path) if as_path else path.read_text(encoding="utf-8"), nl=as_path)


@recipes.command("schema")
@click.option("--indent", type=int, default=2, show_default=True)
def schema(indent: int) -> None:
    """Print the JSON Schema (draft 2020-12) of a recipe document, plugin keys included."""
    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.recipes.jsonschema import recipe_json_schema

    click.echo(json.dumps(recipe_json_schema(), indent=indent or None))


@click.command("plan")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(recipe: str, device: str, as_json: bool) -> None:
    """Print what running RECIPE would do, without loading weights or writing anything.

    Per model: tokens copied (exact / canonical / special), estimated (by which method and
    source space, with the fallback), padded; per vocabulary matrix: estimated peak memory
    and flops on --device.
    """
    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.recipes.plan import format_plan, plan_recipe

    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.recipes.validate import validate_path

    with _quiet_libraries():
        result = validate_path(recipe)
        if result.errors:
            for p in result.errors:
                click.echo(p.format())
            click.get_current_context().exit(1)
        plans = []
        for doc in result.documents:
            entry = {"document": doc.index, "name": doc.name}
            if doc.stage_refs:
                entry["skipped"] = f"reads stage output(s) {', '.join(sorted(doc.stage_refs))}"
            else:
                try:
                    entry.update(plan_recipe(doc.config, device=device))
                except TokenplugError as exc:
                    raise click.ClickException(f"{recipe}: {exc.message}") from None
            plans.append(entry)
    if as_json:
        click.echo(json.dumps(plans, indent=2, default=str))
        return
    for entry in plans:
        if len(plans) > 1:
            label = f"stage {entry['name']}" if entry["name"] else "final merge"
            click.echo(f"== document {entry['document'] + 1} ({label})")
        if "skipped" in entry:
            click.echo(f"not planned: {entry['skipped']} (plan it once they are built)")
        else:
            click.echo(format_plan(entry))


@click.command("verify")
@click.argument("out", type=click.Path(file_okay=False))
def verify(out: str) -> None:
    """Check every file of OUT against the sha256 sums in its tokenplug_manifest.json.

    Weights, tokenizer, config and side files must match (exit 1 otherwise); an edited or
    removed model card (README.md) is reported as a note and does not fail (exit 0).
    """
    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.output.manifest import (
        MANIFEST_NAME,
        split_card_differences,
        verify_manifest,
    )

    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        raise click.ClickException(
            f"{out}: no {MANIFEST_NAME}; expected the output directory of a mergekit-tokenplug run"
        )
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["outputs"]
        problems = verify_manifest(out)
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(
            f"{path}: unreadable manifest ({type(exc).__name__}: {exc}); expected JSON with an 'outputs' map"
        ) from None
    problems, notes = split_card_differences(problems)
    for line in notes:
        click.echo(f"note: {line} (the model card; edits before publishing are expected)")
    if problems:
        for line in problems:
            click.echo(line)
        click.echo(f"FAILED: {len(problems)} difference(s) from {MANIFEST_NAME}")
        click.get_current_context().exit(1)
    checked = len(recorded) - len(notes)
    click.echo(f"OK: {checked} files match" + (" (weights, tokenizer, config)" if notes else ""))


commands = [recipes, plan, verify]
