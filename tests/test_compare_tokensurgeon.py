"""``compare``'s ``tokensurgeon:NAME`` entries: mergekit-tokensurgeon's own code run on the same
leave-out as the plugin's methods (tiny real models; nothing of mergekit is mocked)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from models_factory import build_llama
from tokenizers_factory import build_byte_level_bpe, build_sentencepiece_bpe

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.evaluate import tokensurgeon_ref
from mergekit_tokenplug.evaluate.compare import estimate_hidden, prepare_holdout
from mergekit_tokenplug.registry import get

REFERENCES = (
    "tokensurgeon:omp",
    "tokensurgeon:common_interpolation",
    "tokensurgeon:subword",
    "tokensurgeon:mean",
    "tokensurgeon:landmark_pca",
)


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory):
    """(base, donor) with rows wider than tokensurgeon's default k=64 (the zoo's are 32 wide, so
    OMP would run out of dimensions before it has picked 64 atoms)."""
    root = tmp_path_factory.mktemp("wide")
    base = build_llama(
        root / "base", build_byte_level_bpe(root / "tok_bl", vocab_size=760), hidden=80, seed=11
    )
    donor = build_llama(
        root / "donor", build_sentencepiece_bpe(root / "tok_sp", vocab_size=700), hidden=96, seed=12
    )
    return str(base), str(donor)


def test_reference_entries_are_in_the_json_with_finite_figures(wide_pair, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    res = CliRunner().invoke(
        main,
        ["compare", *wide_pair, "--methods", "omp," + ",".join(REFERENCES), "--hold-out", "0.2"]
        + ["--seed", "3", "--json", str(out), "--plot", str(png), "-q"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data["methods"]) == {"omp", *REFERENCES}, data["skipped"]
    for name in REFERENCES:
        m = data["methods"][name]
        assert m["reference"].startswith("mergekit-tokensurgeon (mergekit ")
        assert math.isfinite(m["cos"]) and math.isfinite(m["rel_l2"])
        assert sum(c["n"] for c in m["categories"].values()) == data["hidden"]
        assert all(math.isfinite(c["cos"]) for c in m["categories"].values())
    assert data["methods"]["tokensurgeon:omp"]["params"] == {"k": 64}
    assert "reference" not in data["methods"]["omp"]
    assert "tokensurgeon:* rows: mergekit-tokensurgeon (mergekit " in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tokensurgeon_omp_agrees_with_ours_on_the_same_hidden_set(wide_pair):
    """Same anchors, same k: the rows agree where greedy OMP has no near-tie (test_omp.py's
    parity idea: most rows, to a tight tolerance)."""
    ho = prepare_holdout(*wide_pair, 0.2, seed=3)
    assert len(ho.hidden_out) >= 20 and len(ho.anchor_out) > 64
    spec = get("omp")
    ours = estimate_hidden(ho, spec, spec.parse_params({}), show_progress=False)
    theirs = tokensurgeon_ref.estimate(tokensurgeon_ref.lookup("tokensurgeon:omp"), ho)
    assert ours.shape == theirs.shape == ho.true.shape
    rel = (ours - theirs).norm(dim=1) / theirs.norm(dim=1)
    assert float((rel < 1e-4).float().mean()) > 0.8, rel
    cos = torch.nn.functional.cosine_similarity
    assert abs(float(cos(ours, ho.true).mean() - cos(theirs, ho.true).mean())) < 0.02


@pytest.mark.parametrize("name", ["tokensurgeon:omp", "tokensurgeon:subword"])
def test_hidden_tokens_are_invisible_to_tokensurgeon(wide_pair, name):
    """Seen as an anchor (omp) or as a piece of the base tokenizer (subword), a hidden token
    would be estimated as its own true row; none is."""
    ho = prepare_holdout(*wide_pair, 0.2, seed=3)
    est = tokensurgeon_ref.estimate(tokensurgeon_ref.lookup(name), ho)
    cos = torch.nn.functional.cosine_similarity(est, ho.true, dim=1)
    assert float(cos.max()) < 0.99, cos


def test_unknown_tokensurgeon_method_is_one_line(zoo):
    res = CliRunner().invoke(
        main,
        ["compare", str(zoo.bl_big), str(zoo.sp_tied), "--methods", "omp,tokensurgeon:xyz", "-q"],
    )
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    assert "unknown tokensurgeon method 'xyz'" in lines[0] and "tokensurgeon:omp" in lines[0]
