"""End-to-end transplants and merges on tiny real models through mergekit's own machinery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from helpers import config, safetensors_digest, tensors
from mergekit.tokensurgeon.omp import batch_omp as mergekit_batch_omp

from mergekit_tokenplug.surgery import load_recipe, run_recipe, transplant

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
BIN = Path(sys.executable).parent


def regular_vocab(path) -> dict[str, int]:
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    added = {t.content for t in tok.added_tokens_decoder.values()}
    return {t: i for t, i in tok.get_vocab().items() if t not in added}


def expected_omp(base_rows, donor_rows, base_vocab, donor_vocab, targets, k):
    """Independent OMP estimate: anchors = shared regular tokens by raw string (same scheme)."""
    shared = sorted(set(base_vocab) & set(donor_vocab))
    a_base = torch.tensor([base_vocab[t] for t in shared])
    a_donor = torch.tensor([donor_vocab[t] for t in shared])
    t_donor = torch.tensor([donor_vocab[t] for t in targets])
    idx, coef = mergekit_batch_omp(donor_rows[t_donor].float(), donor_rows[a_donor].float(), k)
    return torch.einsum("bk,bkd->bd", coef, base_rows[a_base][idx].float())


def test_identity_is_bit_exact(zoo, tmp_path):
    out = tmp_path / "out"
    transplant(str(zoo.bl_untied), str(zoo.bl_untied), str(out), "omp", {"k": 8}, quiet=True)
    got, orig = tensors(out), tensors(zoo.bl_untied)
    assert torch.equal(got[EMB], orig[EMB]) and torch.equal(got[HEAD], orig[HEAD])
    assert config(out)["vocab_size"] == config(zoo.bl_untied)["vocab_size"]


def test_omp_rows_match_independent_estimate_and_shared_rows_are_copied(zoo, tmp_path):
    out = tmp_path / "out"
    summary = transplant(str(zoo.bl_untied), str(zoo.bl_big), str(out), "omp", {"k": 8}, quiet=True)
    base_v, donor_v = regular_vocab(zoo.bl_untied), regular_vocab(zoo.bl_big)
    out_vocab = transformers.AutoTokenizer.from_pretrained(str(out)).get_vocab()
    got, base, donor = tensors(out), tensors(zoo.bl_untied), tensors(zoo.bl_big)
    shared = [t for t in donor_v if t in base_v]
    new = [t for t in donor_v if t not in base_v]
    assert new and shared
    for name in (EMB, HEAD):
        rows = torch.tensor([out_vocab[t] for t in shared])
        assert torch.equal(got[name][rows], base[name][torch.tensor([base_v[t] for t in shared])])
        want = expected_omp(base[name], donor[name], base_v, donor_v, new, 8)
        have = got[name][torch.tensor([out_vocab[t] for t in new])]
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4)
    assert summary["vocabulary"]["output_tokens"] == len(out_vocab)


def test_stock_mergekit_yaml_picks_up_plugin(zoo, tmp_path):
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {"source": str(zoo.bl_untied), "approximation": {"method": "omp", "k": 4}},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(BIN / "mergekit-yaml"), str(path), str(out), "--no-write-model-card", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = tensors(out)
    rows = got[EMB]
    assert rows.shape[0] == config(zoo.bl_untied)["vocab_size"]
    assert not (rows == 0).all(dim=1).any(), "no row may be left at zero"
    assert (out / "tokenplug_manifest.json").exists()
    # the base has no chat template: the donor's does not travel by default (chat_template: base)
    assert transformers.AutoTokenizer.from_pretrained(str(out)).chat_template is None


def test_union_merge_estimates_in_each_models_own_space(zoo, tmp_path):
    """Union of two byte-level models: the base's missing rows are OMP estimates from the other."""
    recipe = {
        "merge_method": "linear",
        "base_model": str(zoo.bl_untied),
        "models": [
            {"model": str(zoo.bl_untied), "parameters": {"weight": 1.0}},
            {"model": str(zoo.bl_big), "parameters": {"weight": 0.0}},
        ],
        "tokenizer": {"source": "union", "approximation": {"method": "omp", "k": 8}},
    }
    out = tmp_path / "out"
    run_recipe(load_recipe(recipe), str(out), quiet=True)
    base_v, other_v = regular_vocab(zoo.bl_untied), regular_vocab(zoo.bl_big)
    out_vocab = transformers.AutoTokenizer.from_pretrained(str(out)).get_vocab()
    got, base, other = tensors(out), tensors(zoo.bl_untied), tensors(zoo.bl_big)
    new = [t for t in other_v if t not in base_v]
    for name in (EMB, HEAD):
        want = expected_omp(base[name], other[name], base_v, other_v, new, 8)
        have = got[name][torch.tensor([out_vocab[t] for t in new])]
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4)
        raw_copy = other[name][torch.tensor([other_v[t] for t in new])]
        assert not torch.allclose(have, raw_copy), "never a raw copy of another model's row"


def test_union_of_different_schemes_fills_mean_in_own_space(zoo, tmp_path):
    recipe = {
        "merge_method": "linear",
        "base_model": str(zoo.sp_untied),
        "models": [
            {"model": str(zoo.sp_untied), "parameters": {"weight": 1.0}},
            {"model": str(zoo.bl_untied), "parameters": {"weight": 0.0}},
        ],
        "tokenizer": {"source": "union", "approximation": {"method": "mean"}},
    }
    out = tmp_path / "out"
    summary = run_recipe(load_recipe(recipe), str(out), quiet=True)
    got, base = tensors(out), tensors(zoo.sp_untied)
    sp_counts = next(v for k, v in summary["vocabulary"]["per_model"].items() if "sp_untied" in k)
    assert sp_counts["canonical"] > 0, (
        "byte-level tokens must match SentencePiece tokens canonically"
    )
    mean_row = base[EMB].mean(dim=0)
    est = next(r for r in summary["matrices"] if "sp_untied" in r["model"] and r["weight"] == EMB)
    assert est["estimated"] > 0
    is_mean = torch.isclose(got[EMB], mean_row.expand_as(got[EMB]), atol=1e-6).all(dim=1)
    assert int(is_mean.sum()) == est["estimated"]


def test_tied_base_stays_tied(zoo, tmp_path):
    out = tmp_path / "out"
    transplant(str(zoo.sp_tied), str(zoo.bl_untied), str(out), "omp", {"k": 4}, quiet=True)
    assert HEAD not in tensors(out)
    assert config(out)["tie_word_embeddings"] is True
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_untied_base_with_tied_donor_rebuilds_both(zoo, tmp_path):
    out = tmp_path / "out"
    transplant(str(zoo.sp_untied), str(zoo.bl_tied), str(out), "omp", {"k": 4}, quiet=True)
    got = tensors(out)
    assert got[EMB].shape == got[HEAD].shape
    assert not torch.equal(got[EMB], got[HEAD])


def test_special_and_chat_tokens_are_distinct_rows(zoo, tmp_path):
    out = tmp_path / "out"
    summary = transplant(
        str(zoo.sp_untied), str(zoo.bl_untied), str(out), "omp", {"k": 4}, quiet=True
    )
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    got = tensors(out)[EMB]
    a, b = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert not torch.equal(got[a], got[b])
    assert got[a].abs().sum() > 0 and got[b].abs().sum() > 0
    # bos/eos of the output config follow the output tokenizer
    cfg = config(out)
    assert cfg["bos_token_id"] == tok.bos_token_id and cfg["eos_token_id"] == tok.eos_token_id
    counts = next(iter(summary["vocabulary"]["per_model"].values()))
    assert counts["special"] >= 1


def test_output_padded_to_donor_vocab_size(zoo, tmp_path):
    out = tmp_path / "out"
    transplant(str(zoo.bl_untied), str(zoo.bl_big_padded), str(out), "omp", {"k": 4}, quiet=True)
    rows = config(zoo.bl_big_padded)["vocab_size"]
    n_tokens = len(transformers.AutoTokenizer.from_pretrained(str(out)))
    got = tensors(out)[EMB]
    assert got.shape[0] == rows == config(out)["vocab_size"] and rows > n_tokens
    torch.testing.assert_close(
        got[n_tokens:], got[:n_tokens].mean(dim=0).expand(rows - n_tokens, -1)
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert model.get_input_embeddings().weight.shape[0] == rows


def test_same_inputs_and_seed_give_identical_bytes(zoo, tmp_path):
    digests = set()
    for i in range(2):
        out = tmp_path / f"out{i}"
        transplant(
            str(zoo.sp_untied), str(zoo.bl_untied), str(out), "hewitt", {}, seed=7, quiet=True
        )
        digests.add(safetensors_digest(out))
    assert len(digests) == 1


@pytest.mark.parametrize("method", ["mean", "subword_mean", "hewitt", "zero"])
def test_donor_free_methods_run_end_to_end(zoo, tmp_path, method):
    out = tmp_path / "out"
    summary = transplant(str(zoo.sp_untied), str(zoo.tok_bl_only), str(out), method, {}, quiet=True)
    assert all(r["estimated"] > 0 for r in summary["matrices"])
    assert tensors(out)[EMB].shape[0] == len(transformers.AutoTokenizer.from_pretrained(str(out)))
