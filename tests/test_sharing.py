"""Sharing outside this repository: the wheel ships the curated recipes (list/show)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_tokenplug.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))


def test_recipes_list_and_show():
    res = CliRunner().invoke(main, ["recipes", "list"])
    assert res.exit_code == 0, res.output
    assert [ln.split(":", 1)[0] + ".yaml" for ln in res.output.splitlines()] == RECIPES
    shown = CliRunner().invoke(main, ["recipes", "show", "01"])
    assert shown.output == (REPO / "recipes" / RECIPES[0]).read_text()
    bad = CliRunner().invoke(main, ["recipes", "show", "nope"])
    assert bad.exit_code == 1 and "01-transplant-omp" in bad.output


@pytest.mark.slow
def test_wheel_ships_the_recipes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    scratch = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(scratch)
    shipped = sorted(
        Path(n).name for n in names if n.startswith("mergekit_tokenplug/recipes/shipped/") and n.endswith(".yaml")
    )
    assert shipped == RECIPES
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
    assert out.stdout.strip().startswith(str(scratch / "mergekit_tokenplug" / "recipes" / "shipped"))
