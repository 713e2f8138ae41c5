"""Inside the stock commands the plugin never lets a recipe fall back to stock copies/zeros.

Misspelt keys are refused by ``mergekit-yaml`` with the message ``recipes validate`` prints;
the ``parameters.requires`` marker makes stock mergekit (plugin not even importable) refuse a
recipe; stock-only recipe forms (``tokenizer_source: union|base``) validate.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mergekit_tokenplug.cli import main

BIN = Path(sys.executable).parent
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def mergekit_yaml(recipe: Path, out: Path, python_flags: tuple[str, ...] = ()):
    return subprocess.run(
        [str(BIN / "mergekit-yaml"), str(recipe), str(out), "--no-write-model-card"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def validate_lines(path: Path) -> list[str]:
    res = CliRunner().invoke(main, ["recipes", "validate", "--skip-models", "-q", str(path)])
    assert res.exit_code == 1, res.output
    return [ln for ln in res.output.splitlines() if ln.strip()]


def transplant_doc(zoo, **tokenizer) -> dict:
    return {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": tokenizer,
    }


@pytest.mark.parametrize(
    ("tokenizer", "key"),
    [
        ({"source": "DONOR", "aproximation": {"method": "omp"}}, "tokenizer.aproximation"),
        ({"sourse": "DONOR", "approximation": {"method": "omp"}}, "tokenizer.sourse"),
    ],
)
def test_misspelt_tokenizer_key_refused_like_validate(zoo, tmp_path, tokenizer, key):
    tokenizer = {k: (str(zoo.bl_untied) if v == "DONOR" else v) for k, v in tokenizer.items()}
    path = tmp_path / "r.yaml"
    doc = transplant_doc(zoo, **tokenizer)
    doc["parameters"] = {"requires": {"mergekit-tokenplug": ">=0.1"}}  # validate requires it
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    proc = mergekit_yaml(path, out)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    (line,) = validate_lines(path)
    message = line.split(f" {key}: ", 1)[1]
    assert errors[0].endswith(f"{key}: {message}"), (errors[0], line)
    assert "did you mean" in message


def test_misplaced_plugin_key_anywhere_refused(zoo, tmp_path):
    doc = transplant_doc(zoo, source=str(zoo.bl_untied))
    doc["aproximation"] = {"method": "omp"}  # at the top level: mergekit drops it
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    proc = mergekit_yaml(path, out)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "aproximation" in errors[0] and "approximation" in errors[0]
    assert not out.exists()


def _stock_mergekit_yaml(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    """``mergekit-yaml`` in a process where the plugin is not installed: ``-S`` skips the
    site-packages ``.pth`` files (the plugin's hook and its editable path), so only
    mergekit and its dependencies are importable."""
    site = sysconfig.get_paths()["purelib"]
    code = (
        "import sys; sys.path.append(sys.argv[1]); "
        # an editable install may leave the wheel's data folder (recipes/shipped) in site-packages
        # as a code-less namespace: the plugin's code must still be out of reach
        "import importlib.util as u; s = u.find_spec('mergekit_tokenplug'); "
        "assert s is None or (s.origin is None and u.find_spec('mergekit_tokenplug.seam') is None); "
        "from mergekit.scripts.run_yaml import main; "
        "sys.argv = ['mergekit-yaml', sys.argv[2], sys.argv[3], '--no-write-model-card']; main()"
    )
    return subprocess.run(
        [sys.executable, "-S", "-c", code, site, str(recipe), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=recipe.parent,
    )


def test_requires_marker_refused_by_stock_mergekit(zoo, tmp_path):
    doc = transplant_doc(zoo, source=str(zoo.bl_untied), approximation={"method": "omp"})
    doc["parameters"] = {"requires": {"mergekit-tokenplug": ">=0.1"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    proc = _stock_mergekit_yaml(path, out)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "parameters.requires" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()
    # Without the marker, the same stock process runs the recipe (and writes zero rows):
    del doc["parameters"]
    path.write_text(yaml.safe_dump(doc))
    proc = _stock_mergekit_yaml(path, out)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_requires_marker_checks_the_version(zoo):
    from mergekit_tokenplug.errors import ConfigError
    from mergekit_tokenplug.surgery import load_recipe

    doc = transplant_doc(zoo, source=str(zoo.bl_untied), approximation={"method": "omp"})
    doc["parameters"] = {"requires": {"mergekit-tokenplug": ">=0.1"}, "weight": 1.0}
    assert load_recipe(doc).parameters == {"weight": 1.0}
    doc["parameters"] = {"requires": {"mergekit-tokenplug": ">=99"}}
    with pytest.raises(ConfigError, match=r"parameters\.requires: the recipe needs"):
        load_recipe(doc)


def test_every_shipped_recipe_requires_the_plugin():
    for path in sorted(RECIPES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc.get("tokenizer"), dict):
                assert doc.get("parameters", {}).get("requires") == {
                    "mergekit-tokenplug": ">=0.1"
                }, path.name


@pytest.mark.parametrize("source", ["union", "base"])
def test_stock_tokenizer_source_validates(zoo, tmp_path, source):
    doc = {
        "merge_method": "linear",
        "base_model": str(zoo.bl_untied),
        "models": [
            {"model": str(zoo.bl_untied), "parameters": {"weight": 0.5}},
            {"model": str(zoo.bl_untied_2), "parameters": {"weight": 0.5}},
        ],
        "tokenizer_source": source,
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(main, ["recipes", "validate", "--inputs", str(path)])
    assert res.exit_code == 0, res.output
    assert not re.search(r"does not exist", res.output)


def test_requires_marker_alone_validates_and_runs(zoo, tmp_path):
    """A recipe may carry the marker without any tokenizer keys: a plain merge, no crash."""
    doc = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.bl_untied)}],
        "parameters": {"requires": {"mergekit-tokenplug": ">=0.1"}},
        "dtype": "float32",
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(main, ["recipes", "validate", "--inputs", str(path)])
    assert res.exit_code == 0, res.output
    proc = mergekit_yaml(path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "config.json").is_file()
