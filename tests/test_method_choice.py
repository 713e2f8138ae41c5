"""The default method follows what the tokenizer source offers (issue 20, item 9)."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.method_choice import choose_method
from mergekit_tokenplug.recipes.validate import validate_path


def test_tokenizer_only_source_defaults_to_a_weightless_method(zoo, tmp_path):
    """A tokenizer folder (no weights) without --method: tokenadapt, said everywhere."""
    assert not list(zoo.tok_sp_only.glob("*.safetensors"))  # precondition: no weights
    out = tmp_path / "out"
    args = ["transplant", str(zoo.bl_tied), str(zoo.tok_sp_only), str(out), "-q"]
    res = CliRunner().invoke(main, ["transplant", "--dry-run", *args[1:]])
    assert res.exit_code == 0, res.output
    assert "method: tokenadapt" in res.output and "no weights" in res.output
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    assert manifest["method"]["name"] == "tokenadapt" and "no weights" in manifest["method"]["note"]
    assert all("omp_map" not in rec["by_method"] for rec in manifest["report"]["matrices"])
    card = (out / "README.md").read_text()
    assert "**`tokenadapt`**" in card and "holds a tokenizer but no weights" in card
    # a donor with weights keeps the usual default
    assert choose_method(None, str(zoo.sp_untied)).method == "omp_map"


def test_explicit_donor_method_on_a_tokenizer_only_source_names_the_alternatives(zoo, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["transplant", str(zoo.bl_tied), str(zoo.tok_sp_only), str(out), "-m", "omp", "-q"]
    )
    assert res.exit_code == 1
    line = res.output.strip()
    assert "\n" not in line and "needs the donor's embeddings" in line
    assert "tokenadapt" in line and "subword_mean" in line and "omp_map" not in line.split(":")[-1]
    assert not out.exists()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "passthrough",
                "models": [{"model": str(zoo.bl_tied)}],
                "tokenizer": {"source": str(zoo.tok_sp_only), "approximation": {"method": "omp"}},
            }
        )
    )
    errors = [p.message for p in validate_path(recipe).errors]
    assert any("methods that need no donor weights: tokenadapt" in m for m in errors), errors
