"""Every recipe in recipes/ runs through the stock mergekit-yaml / mergekit-multi on tiny models.

Model references in the recipes are relative paths; the test runs each recipe verbatim in a
directory where those paths are links to tiny local models with the properties the recipe
expects (different tokenizers, tied/untied), so a recipe that stops working fails CI. Relative
names also keep the outputs independent of where the test session's models live (seeds derive
from model names), so they are compared with recorded references (``golden.py``: copies
exactly, computed rows within the tolerance of their arithmetic).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from golden import check_golden
from helpers import ONE_THREAD_ENV

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
BIN = Path(sys.executable).parent


def reference_map(zoo) -> dict[str, str]:
    """Recipe reference -> tiny stand-in with the same relevant properties."""
    wide = zoo.wide
    return {
        "models/gemma3-270m": str(wide["sp_tied"]),  # SentencePiece + byte fallback, tied
        "models/smollm2-135m": str(wide["bl_tied"]),  # byte-level BPE, tied
        "models/base-model": str(wide["sp_untied"]),
        "models/partner-a": str(wide["bl_untied"]),
        "models/partner-b": str(wide["bl_untied_2"]),
        "models/model-x": str(wide["sp_untied"]),
        "models/model-y": str(wide["bl_untied"]),
        "tokenizers/gpt2": str(zoo.tok_sp_only),
        "embedders/all-MiniLM-L6-v2": str(zoo.bert_embedder),
        "texts/*.txt": str(zoo.corpus_dir / "*.txt"),
    }


def link_references(workdir: Path, mapping: dict[str, str]) -> None:
    """Make every recipe reference resolve, relative to ``workdir``, to its tiny stand-in."""
    for ref, target in mapping.items():
        if ref.endswith("*.txt"):
            ref, target = ref.rsplit("/", 1)[0], str(Path(target).parent)
        link = workdir / ref
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)


def test_collection_is_indexed():
    index = (RECIPES[0].parent / "README.md").read_text(encoding="utf-8")
    assert len(RECIPES) >= 6
    for recipe in RECIPES:
        assert recipe.name in index, f"{recipe.name} missing from recipes/README.md"
        header = recipe.read_text(encoding="utf-8").splitlines()[0]
        assert header.startswith("# "), f"{recipe.name} needs a header comment"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_runs_on_tiny_models(zoo, tmp_path, recipe):
    text = recipe.read_text(encoding="utf-8")
    mapping = reference_map(zoo)
    refs = {
        m.group(0) for m in re.finditer(r"\b(?:models|tokenizers|embedders|texts)/[\w.*/-]+", text)
    }
    assert refs <= set(mapping), f"unmapped references {refs - set(mapping)} in {recipe.name}"
    link_references(tmp_path, mapping)
    local = tmp_path / recipe.name
    local.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    docs = [d for d in yaml.safe_load_all(text) if d]
    if len(docs) > 1:
        cmd = [
            str(BIN / "mergekit-multi"),
            str(local),
            "--intermediate-dir",
            str(tmp_path / "stages"),
            "--out-path",
            str(out),
            "--no-write-model-card",
            "--quiet",
        ]
    else:
        cmd = [str(BIN / "mergekit-yaml"), str(local), str(out), "--quiet"]
    env = {**os.environ, **ONE_THREAD_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.json").exists()
    stages = [tmp_path / "stages" / d["name"] for d in docs if d.get("name")]
    for built in [out, *stages]:
        if (built / "tokenplug_manifest.json").exists():
            manifest = json.loads((built / "tokenplug_manifest.json").read_text())
            # a mergekit-multi OUT whose last merge is a stock one: the records are the stages'
            reports = [s["report"] for s in manifest.get("stages", {}).values()] or [
                manifest["report"]
            ]
            assert all(r["matrices"] for r in reports), f"{built.name}: no matrix reported"
    assert any((p / "tokenplug_manifest.json").exists() for p in [out, *stages])
    # union recipes too: the plugin builds the union vocabulary in a fixed order
    check_golden(f"recipe:{recipe.stem}", out)
