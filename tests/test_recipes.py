"""Every recipe in recipes/ runs through the stock mergekit-yaml / mergekit-multi on tiny models.

Model references in the recipes are mapped onto tiny local models with the properties the
recipe expects (different tokenizers, tied/untied), so a recipe that stops working fails CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
BIN = Path(sys.executable).parent


def reference_map(zoo) -> dict[str, str]:
    """Recipe reference -> tiny stand-in with the same relevant properties."""
    return {
        "models/gemma3-270m": str(zoo.sp_tied),  # SentencePiece + byte fallback, tied
        "models/smollm2-135m": str(zoo.bl_tied),  # byte-level BPE, tied
        "models/base-model": str(zoo.sp_untied),
        "models/partner-a": str(zoo.bl_untied),
        "models/partner-b": str(zoo.bl_untied_2),
        "models/model-x": str(zoo.sp_untied),
        "models/model-y": str(zoo.bl_untied),
        "tokenizers/gpt2": str(zoo.tok_sp_only),
        "embedders/all-MiniLM-L6-v2": str(zoo.bert_embedder),
        "texts/*.txt": str(zoo.corpus_dir / "*.txt"),
    }


def localize(text: str, mapping: dict[str, str]) -> str:
    for ref in sorted(mapping, key=len, reverse=True):
        text = text.replace(ref, mapping[ref])
    return text


def test_collection_is_indexed():
    index = (RECIPES[0].parent / "README.md").read_text(encoding="utf-8")
    assert len(RECIPES) >= 6
    for recipe in RECIPES:
        assert recipe.name in index, f"{recipe.name} missing from recipes/README.md"
        header = recipe.read_text(encoding="utf-8").splitlines()[0]
        assert header.startswith("# "), f"{recipe.name} needs a header comment"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_on_tiny_models(zoo, tmp_path, recipe):
    text = localize(recipe.read_text(encoding="utf-8"), reference_map(zoo))
    unresolved = [ref for ref in ("models/", "tokenizers/", "embedders/", "texts/") if f" {ref}" in text]
    assert not unresolved, f"unmapped references {unresolved} in {recipe.name}"
    local = tmp_path / recipe.name
    local.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    docs = [d for d in yaml.safe_load_all(text) if d]
    if len(docs) > 1:
        cmd = [str(BIN / "mergekit-multi"), str(local), "--intermediate-dir", str(tmp_path / "stages"), "--out-path", str(out), "--no-write-model-card", "--quiet"]
    else:
        cmd = [str(BIN / "mergekit-yaml"), str(local), str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.json").exists()
    stages = [tmp_path / "stages" / d["name"] for d in docs if d.get("name")]
    for built in [out, *stages]:
        if (built / "tokenplug_manifest.json").exists():
            manifest = json.loads((built / "tokenplug_manifest.json").read_text())
            # a mergekit-multi OUT whose last merge is a stock one: the records are the stages'
            reports = [s["report"] for s in manifest.get("stages", {}).values()] or [manifest["report"]]
            assert all(r["matrices"] for r in reports), f"{built.name}: no matrix reported"
    assert any((p / "tokenplug_manifest.json").exists() for p in [out, *stages])
