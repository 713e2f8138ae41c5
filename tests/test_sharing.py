"""Sharing outside this repository: the wheel ships the curated recipes (list/show), and what
the docs tell a wheel user to run works with nothing but the wheel and the asset cache."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import wheel_user
from click.testing import CliRunner

from mergekit_tokenplug.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
SHIPPED = "mergekit_tokenplug/recipes/shipped/"


def test_recipes_list_and_show():
    res = CliRunner().invoke(main, ["recipes", "list"])
    assert res.exit_code == 0, res.output
    assert [ln.split(":", 1)[0] + ".yaml" for ln in res.output.splitlines()] == RECIPES
    shown = CliRunner().invoke(main, ["recipes", "show", "01"])
    assert shown.output == (REPO / "recipes" / RECIPES[0]).read_text()
    bad = CliRunner().invoke(main, ["recipes", "show", "nope"])
    assert bad.exit_code == 1 and "01-transplant-omp" in bad.output


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, list[str]]:
    """The wheel, built once (``pip wheel --no-deps``, as the README says) and unpacked into a
    site directory: (that directory, the wheel's file names)."""
    tmp = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = tmp.glob("*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
        zf.extractall(site)
    return site, names


@pytest.mark.slow
def test_wheel_ships_the_recipes(wheel, tmp_path):
    scratch, names = wheel
    shipped = sorted(Path(n).name for n in names if n.startswith(SHIPPED) and n.endswith(".yaml"))
    assert shipped == RECIPES
    for name in [*RECIPES, "README.md", "ci/README.md", "ci/github-actions.yml"]:
        assert (scratch / SHIPPED / name).read_bytes() == (REPO / "recipes" / name).read_bytes()
    # what the recipes' comments send users to ships too (bench/ does not)
    assert {"mergekit_tokenplug/assets.py", "mergekit_tokenplug/assets_cli.py"} <= set(names)
    assert not any(n.startswith("bench/") for n in names)
    # The unpacked wheel (first on the path, run outside the checkout) finds its own copy.
    env = {**os.environ, "PYTHONPATH": str(scratch)}
    out = subprocess.run(
        [sys.executable, "-m", "mergekit_tokenplug", "recipes", "show", "01", "--path"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(scratch / SHIPPED.rstrip("/")))


def _doc_snippets() -> list[tuple[str, str]]:
    """(id, shell text) of everything the docs tell a wheel user to run."""
    snippets = [
        (f"run-{name[:2]}", wheel_user.run_block((REPO / "recipes" / name).read_text()))
        for name in RECIPES
    ]
    readme = wheel_user.md_section(
        (REPO / "README.md").read_text(), "Installing into an existing environment"
    )
    index = (REPO / "recipes" / "README.md").read_text()
    for source, text in (("README", readme), ("recipes-README", index)):
        snippets += [(f"{source}-block{i}", b) for i, b in enumerate(wheel_user.bash_blocks(text))]
        snippets += [
            (f"{source}-validate{i}", v) for i, v in enumerate(wheel_user.validate_spans(text))
        ]
    return snippets


SNIPPETS = _doc_snippets()


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [s for _, s in SNIPPETS], ids=[i for i, _ in SNIPPETS])
def test_docs_commands_work_from_a_wheel_install(wheel, tmp_path, monkeypatch, snippet):
    """Each recipe's Run line, the README's wheel-install commands and recipes/README.md's,
    run by bash outside the checkout with only the wheel (commands that need real weights
    stand in, checking their arguments: ``wheel_user``)."""
    site, _ = wheel
    env, work = wheel_user.make_user(tmp_path, site)
    # the cache where `assets` would have put everything: ~/.cache/mergekit-tokenplug
    monkeypatch.setenv("MERGEKIT_TOKENPLUG_CACHE", f"{env['HOME']}/.cache/mergekit-tokenplug")
    wheel_user.prepared_cache()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", snippet],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{snippet}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )


def test_run_lines_and_readme_block_are_found():
    """The extraction above sees every recipe's Run line and the README's wheel-install job."""
    ids = [i for i, _ in SNIPPETS]
    assert [i for i in ids if i.startswith("run-")] == [f"run-{n[:2]}" for n in RECIPES]
    assert any(i.startswith("README-block") for i in ids)
    assert any(i.startswith("recipes-README-validate") for i in ids)


@pytest.mark.slow
def test_shipped_docs_say_which_files_only_the_source_has(wheel):
    """A shipped recipe or README that names a file of the checkout (bench/, scripts/, tests/)
    says it is in the source repository: a wheel user has none of them."""
    site, _ = wheel
    bad = []
    for doc in sorted((site / SHIPPED).rglob("*")):
        if doc.suffix not in (".yaml", ".yml", ".md"):
            continue
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"(?<![\w./-])(?:bench|scripts|tests)/[\w./*-]+", text):
            around = " ".join(text[m.start() : m.end() + 120].replace("#", " ").split())
            if "source repository" not in around:
                bad.append(f"{doc.relative_to(site)}: {m.group(0)}")
    assert not bad, bad


# ------------------------------------------------------------------ mergekit-tokenplug assets


def test_assets_reuses_a_prepared_cache_without_gguf(tmp_path, monkeypatch):
    """Models already converted in the cache are reused: no ``gguf`` needed to list them."""
    monkeypatch.setenv("MERGEKIT_TOKENPLUG_CACHE", str(tmp_path / "cache"))
    root = wheel_user.prepared_cache()
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: import fails
    res = CliRunner().invoke(
        main, ["assets", "--only", "smollm2,gemma3,texts,multilingual,tokenadapt"]
    )
    assert res.exit_code == 0, res.output
    assert f"gemma3\t{root / 'models' / 'gemma3-270m'}" in res.output.splitlines()


def test_assets_says_how_to_get_gguf_in_a_line_a_shell_takes(tmp_path, monkeypatch):
    """A model still to convert without ``gguf``: the hint names it and pastes into a shell
    as is (an unquoted ``gguf>=0.10`` would redirect pip's output to a file ``=0.10``)."""
    monkeypatch.setenv("MERGEKIT_TOKENPLUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)
    res = CliRunner().invoke(main, ["assets", "--only", "smollm2"])
    assert res.exit_code == 1 and "smollm2" in res.output, res.output
    hint = res.output.split("run: ", 1)[1].split(" (or pass --install)")[0]
    echoed = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {hint.split(' ', 1)[1]}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (
        echoed.stdout.splitlines()
        == shlex.split(hint)[1:]
        == ["-m", "pip", "install", "gguf>=0.10"]
    )
    assert not (tmp_path / "=0.10").exists()


def test_assets_help_names_every_asset():
    from mergekit_tokenplug import assets

    res = CliRunner().invoke(main, ["assets", "--help"])
    flat = " ".join(res.output.split())
    for key in [*assets.MODELS, "texts", "multilingual", "prose", "gpt2", "minilm", *assets.GROUPS]:
        assert key in flat, key
