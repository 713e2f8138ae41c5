"""Every built-in method's output tensors are byte-identical to the recorded ones.

The digests in fixtures/output_hashes.json were recorded from the tiny seeded models of the
test session, one thread, CPU torch. Models are named by relative paths (seeds derive from
model names, so an absolute temporary path would change the bytes of stochastic methods).
tests/test_recipes.py checks the curated recipes the same way. To record after a change that
is meant to change outputs, see :func:`helpers.check_output_hashes`.
"""

from __future__ import annotations

import pytest
from helpers import check_output_hashes
from tokenizers_factory import corpus_documents

from mergekit_tokenplug.surgery import load_recipe, run_recipe, transplant_recipe

CASES = {
    "omp": {"k": 8},
    "omp_map": {"k": 8},
    "tokenadapt": {"top_k": 2},
    "cw2v": {"epochs": 1, "rank": 8, "corpus": ["corpus.txt"]},
    "mean": {},
    "zero": {},
    "hewitt": {},
    "subword_mean": {},
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_output_bytes_unchanged(zoo, tmp_path, monkeypatch, one_thread, method):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").symlink_to(zoo.sp_untied)
    (tmp_path / "donor").symlink_to(zoo.bl_untied)
    (tmp_path / "corpus.txt").write_text("\n".join(corpus_documents()), encoding="utf-8")
    recipe = transplant_recipe("base", "donor", method, CASES[method], seed=3)
    recipe["models"] = [{"model": "base"}]  # keep the names relative
    recipe["tokenizer"]["source"] = "donor"
    run_recipe(load_recipe(recipe), "out", seed=3, quiet=True)
    check_output_hashes(f"transplant:{method}", tmp_path / "out")
