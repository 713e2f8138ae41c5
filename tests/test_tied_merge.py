"""A merge of an untied model (a ``heal`` output: its own lm_head) with tied siblings must
not write a tied config whose lm_head transformers ignores (issue 20, item 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import transformers
import yaml
from click.testing import CliRunner
from helpers import config, tensors
from models_factory import build_llama

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.recipes.validate import validate_path

HEAD, EMB = "lm_head.weight", "model.embed_tokens.weight"


def _ties_recipe(tmp_path: Path, base: Path, untied: Path, tied: Path) -> Path:
    recipe = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(untied), "parameters": {"weight": 0.5, "density": 0.6}},
            {"model": str(tied), "parameters": {"weight": 0.5, "density": 0.6}},
        ],
        "parameters": {"normalize": True},
        "dtype": "float32",
    }
    path = tmp_path / "ties.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_ties_of_an_untied_model_with_tied_siblings_keeps_its_lm_head(zoo, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.bl_tied))
    sibling = build_llama(tmp_path / "tied_sibling", tok, seed=31, tied=True)
    assert (
        config(zoo.bl_tied)["tie_word_embeddings"]
        and not config(zoo.bl_untied)["tie_word_embeddings"]
    )  # preconditions: a tied base, an untied input with its own lm_head
    recipe = _ties_recipe(tmp_path, zoo.bl_tied, zoo.bl_untied, sibling)
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mergekit-yaml"), str(recipe), str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "untied" in proc.stderr
    written = tensors(out)
    assert HEAD in written and config(out)["tie_word_embeddings"] is False
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    # the loaded model uses the merged lm_head, not a copy of the embeddings
    assert torch.equal(model.lm_head.weight.detach(), written[HEAD])
    assert not torch.equal(written[HEAD], written[EMB])

    # plan and validate say it before the run
    res = CliRunner().invoke(main, ["plan", str(recipe)])
    assert res.exit_code == 0, res.output
    assert "tie_word_embeddings: false" in res.output
    found = validate_path(recipe)
    assert any("tie_word_embeddings: false" in p.message for p in found.problems), [
        p.format() for p in found.problems
    ]
    assert not found.errors
