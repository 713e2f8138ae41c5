"""Reports say what each method really did: a row that got the fallback is counted as the
fallback, with the reason, and thin evidence is a warning (issue 20, item 2)."""

from __future__ import annotations

import json

import torch
import yaml
from helpers import tensors
from tokenizers_factory import corpus_documents

from mergekit_tokenplug.recipes.validate import Options, validate_path
from mergekit_tokenplug.surgery import load_recipe, run_recipe

EMB = "model.embed_tokens.weight"


def _recipe(zoo, corpus) -> dict:
    return {
        "merge_method": "passthrough",
        "dtype": "float32",
        "models": [{"model": str(zoo.bl_untied)}],
        "tokenizer": {
            "source": "base",
            "tokens": {" kubectl": {}, " systemd": {}, " dpkg": {}},
            "approximation": {
                "method": "cw2v",
                "corpus": [str(corpus)],
                "rank": 8,
                "epochs": 1,
                "seed": 0,
                "subsample": 0,
            },
        },
    }


def test_cw2v_token_absent_from_the_corpus_is_reported_as_a_fallback(zoo, tmp_path):
    corpus = tmp_path / "corpus.txt"
    text = "\n".join(corpus_documents()[:80]) + "\n" + " dpkg is here." * 30 + " systemd once."
    corpus.write_text(text, encoding="utf-8")  # ' kubectl' never occurs, ' systemd' once
    recipe = _recipe(zoo, corpus)

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    found = validate_path(path, Options())
    warnings = [p.message for p in found.problems if p.severity == "warning"]
    assert not found.errors, [p.format() for p in found.errors]
    assert any("never occur in the corpus" in w and "' kubectl'" in w for w in warnings), warnings
    assert any("fewer than 5 times" in w and "' systemd'" in w for w in warnings), warnings

    out = tmp_path / "out"
    run_recipe(load_recipe(recipe), str(out), quiet=True)
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    for rec in manifest["report"]["matrices"]:
        assert rec["estimated"] == 3
        assert rec["by_method"] == {"cw2v": 2, "mean": 1}, rec["by_method"]
        (fallback,) = rec["fallbacks"]
        assert fallback["reason"] == "absent from the corpus" and fallback["tokens"] == [" kubectl"]
        (thin,) = rec["thin"]
        assert thin["tokens"] == [" systemd"] and "fewer than 5 times" in thin["reason"]
    # the reported fallback row really is the mean row of the model
    vocab = json.loads((out / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    emb = tensors(out)[EMB]
    base = tensors(zoo.bl_untied)[EMB]
    torch.testing.assert_close(emb[added[" kubectl"]], base.mean(dim=0), rtol=0, atol=1e-6)
    card = (out / "README.md").read_text()
    assert "not a `cw2v` estimate: absent from the corpus (`' kubectl'`)" in card
    assert "Warning:" in card and "`' systemd'`" in card
