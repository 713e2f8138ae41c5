"""Every built-in method's output matches its recorded reference, on any CPU.

References live in ``fixtures/goldens/`` and are compared with the tolerance of the arithmetic
(see ``golden.py``): copied rows, tokenizer, config and the manifest's account exactly,
computed rows within ``FP32_RTOL`` per row. The tiny models are built from a frozen integer
stream (``models_factory.portable_values``), so every machine starts from the same bits.
Models are named by relative paths (seeds derive from model names). ``scripts/test.sh`` runs
this file a second time on torch's generic kernels and MKL's compatible code path, so an
expectation that holds on one processor only fails in CI. tests/test_recipes.py checks the
curated recipes the same way.

Byte identity is a same-machine property and is tested as one:
``test_same_machine_reruns_write_identical_bytes`` here and the 1 vs 2 process test in
tests/test_distributed.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden import (
    FP32_RTOL,
    bounded_mismatch,
    check_golden,
    golden_differences,
    half_ulp_distance,
)
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


def run_case(zoo, workdir: Path, method: str, params: dict, out: str = "out") -> Path:
    """Transplant the tiny untied SentencePiece model onto the byte-level tokenizer."""
    for name, target in (("base", zoo.sp_untied), ("donor", zoo.bl_untied)):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(target)
    corpus = workdir / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(corpus_documents()), encoding="utf-8")
    recipe = transplant_recipe("base", "donor", method, params, seed=3)
    recipe["models"] = [{"model": "base"}]  # keep the names relative
    recipe["tokenizer"]["source"] = "donor"
    run_recipe(load_recipe(recipe), out, seed=3, quiet=True)
    return workdir / out


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_output_matches_reference(zoo, tmp_path, monkeypatch, one_thread, method):
    monkeypatch.chdir(tmp_path)
    check_golden(f"transplant:{method}", run_case(zoo, tmp_path, method, CASES[method]))


@pytest.mark.parametrize(
    "method,params,expected",
    [
        ("omp", {"k": 4}, "computed row"),  # a different sparsity: other rows, same shapes
        ("hewitt", {"scale": 1e-3}, "computed row"),
        ("subword_mean", {}, "copied rows|computed row|manifest"),  # another method entirely
    ],
)
def test_a_real_change_fails_the_reference(zoo, tmp_path, monkeypatch, method, params, expected):
    """The tolerance admits last-bit noise, not a different answer."""
    monkeypatch.chdir(tmp_path)
    reference = "transplant:hewitt" if method == "subword_mean" else f"transplant:{method}"
    problems = golden_differences(reference, run_case(zoo, tmp_path, method, params))
    assert any(
        any(word in p for word in expected.split("|")) for p in problems
    ), problems


def test_tolerances_admit_rounding_and_nothing_more():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(6, 32, generator=gen)
    noise = torch.randn(6, 32, generator=gen)
    rel = noise / noise.norm(dim=1, keepdim=True) * ref.norm(dim=1, keepdim=True)
    assert bounded_mismatch(ref + 0.1 * FP32_RTOL * rel, ref) is None
    assert "row" in bounded_mismatch(ref + 3 * FP32_RTOL * rel, ref)
    half = ref.to(torch.bfloat16)
    one_up = (half.view(torch.int16) + 1).view(torch.bfloat16)
    two_up = (half.view(torch.int16) + 2).view(torch.bfloat16)
    assert int(half_ulp_distance(one_up, half).max()) == 1
    assert bounded_mismatch(one_up, half) is None
    assert "steps" in bounded_mismatch(two_up, half)
    # across zero: -0.0 and +0.0 are the same value, the smallest steps either side are 1 away
    signed = torch.tensor([-0.0, 0.0], dtype=torch.bfloat16)
    assert int(half_ulp_distance(signed[:1], signed[1:]).max()) == 0


def test_a_flipped_bit_in_a_copied_row_is_caught(zoo, tmp_path, monkeypatch):
    """Copied rows are compared bit for bit: one flipped mantissa bit fails."""
    from safetensors.torch import load_file, save_file

    monkeypatch.chdir(tmp_path)
    out = run_case(zoo, tmp_path, "mean", {})
    weights = load_file(str(out / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"]
    emb.view(torch.int32)[0, 0] ^= 1  # row 0 (a special token) is a copy in this transplant
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    problems = golden_differences("transplant:mean", out)
    assert any("copied rows are not bit-identical" in p for p in problems), problems


def test_same_machine_reruns_write_identical_bytes(zoo, tmp_path, monkeypatch):
    """Same machine, same settings, same seed: the same bytes (the stochastic and LAPACK paths)."""
    monkeypatch.chdir(tmp_path)
    for method in ("omp", "hewitt", "cw2v"):
        first = run_case(zoo, tmp_path, method, CASES[method], out=f"{method}-a")
        second = run_case(zoo, tmp_path, method, CASES[method], out=f"{method}-b")
        assert (first / "model.safetensors").read_bytes() == (
            second / "model.safetensors"
        ).read_bytes(), method


def test_json_outputs_ignore_the_writers_library_version(tmp_path):
    """A newer transformers writes another ``transformers_version``; nothing the run decided."""
    from golden import _file_digest

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text('{"vocab_size": 10, "transformers_version": "5.25.0"}')
    b.write_text('{"transformers_version": "5.99.1", "vocab_size": 10}')
    c.write_text('{"vocab_size": 11, "transformers_version": "5.25.0"}')
    assert _file_digest(a) == _file_digest(b) != _file_digest(c)
