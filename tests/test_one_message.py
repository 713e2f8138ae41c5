"""``recipes validate`` and ``mergekit-yaml`` / ``mergekit-multi`` say the same one line.

Every broken fixture of tests/fixtures/broken_recipes is run through both (`recipes validate
--inputs`: a run has its inputs, so it checks them too; real
processes); for a recipe that uses the plugin's keys, or that is not even YAML, the run
prints validate's first problem and writes nothing. Recipes without plugin keys are stock
mergekit's business: the plugin leaves their runs alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_recipes_validate import BROKEN, fill_placeholders, headers, workdir  # noqa: F401

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.seam.schema import uses_plugin

BIN = Path(sys.executable).parent


def _plugin_or_unparseable(text: str) -> bool:
    try:
        return any(uses_plugin(d) for d in yaml.safe_load_all(text))
    except yaml.YAMLError:
        return True


CHECKED = [p for p in BROKEN if _plugin_or_unparseable(p.read_text())]


def test_the_plugin_fixtures_include_tool_tokens_and_home_paths():
    names = {p.stem for p in CHECKED}
    assert {"tool_token_bad_scale", "tilde_missing_model", "bad_yaml"} <= names
    assert len(CHECKED) >= 15


@pytest.mark.parametrize("fixture", CHECKED, ids=[p.stem for p in CHECKED])
def test_validate_and_run_give_the_same_line(fixture, zoo, workdir, tmp_path):  # noqa: F811
    source = fixture.read_text()
    recipe = tmp_path / fixture.name
    recipe.write_text(fill_placeholders(source, zoo, workdir))
    env = {**os.environ, **dict(h.split("=", 1) for h in headers(source, "env"))}
    if headers(source, "env"):  # process-wide state: a fresh interpreter
        check = subprocess.run(
            [str(BIN / "mergekit-tokenplug"), "recipes", "validate", "--inputs", "-q", str(recipe)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        code, output = check.returncode, check.stdout
    else:
        res = CliRunner().invoke(main, ["recipes", "validate", "--inputs", "-q", str(recipe)])
        code, output = res.exit_code, res.output
    assert code == 1, output
    expected = output.strip().splitlines()[0]
    out = tmp_path / "out"
    multi = fixture.stem.startswith("multi_")
    cmd = (
        [str(BIN / "mergekit-multi"), str(recipe), "--intermediate-dir", str(tmp_path / "stages"), "--out-path", str(out)]
        if multi
        else [str(BIN / "mergekit-yaml"), str(recipe), str(out)]
    )  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == f"Error: {expected}", run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert not out.exists()


def test_home_relative_paths_run(zoo, tmp_path):
    """``~`` means the same to the run as to validation (mergekit alone does not expand it)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "base").symlink_to(zoo.sp_untied)
    (home / "donor").symlink_to(zoo.bl_untied)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "passthrough", "models": [{"model": "~/base"}],
        "parameters": {"requires": {"mergekit-tokenplug": ">=0.1"}},
        "tokenizer": {"source": "~/donor", "approximation": {"method": "mean"}},
    }))  # fmt: skip
    env = {**os.environ, "HOME": str(home)}
    check = subprocess.run(
        [str(BIN / "mergekit-tokenplug"), "recipes", "validate", "--inputs", str(recipe)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert check.returncode == 0, check.stdout
    run = subprocess.run(
        [str(BIN / "mergekit-yaml"), str(recipe), str(tmp_path / "out"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_deeply_nested_yaml_is_one_line(tmp_path):
    """PyYAML recurses once per nesting level: a deep file is refused in one line, no traceback."""
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("[" * 5000 + "]" * 5000 + "\n")
    res = CliRunner().invoke(main, ["recipes", "validate", "-q", str(recipe)])
    assert res.exit_code == 1, res.output
    assert (
        res.output.strip()
        == f"{recipe} the YAML is nested too deeply; expected a recipe of ordinary depth"
    )
    out = tmp_path / "out"
    run = subprocess.run(
        [str(BIN / "mergekit-yaml"), str(recipe), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == f"Error: {res.output.strip()}"
    assert not out.exists()
