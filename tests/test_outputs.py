"""Outputs people can use as they are: BOS like the base model, umask file modes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import transformers
from click.testing import CliRunner
from helpers import tensors
from models_factory import build_llama
from tokenizers import processors
from tokenizers_factory import build_byte_level_bpe, build_sentencepiece_bpe

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.output.bos import adds_bos
from mergekit_tokenplug.surgery import transplant

EMB = "model.embed_tokens.weight"


def _with_bos(tok):
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    return tok


@pytest.fixture(scope="module")
def bos_base(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer adds BOS (as Gemma's and Llama's do)."""
    root = tmp_path_factory.mktemp("bos_base")
    tok = _with_bos(build_sentencepiece_bpe(root / "tok", vocab_size=700))
    return build_llama(root / "model", tok, seed=21)


@pytest.fixture(scope="module")
def bos_donor_tokenizer(tmp_path_factory) -> Path:
    """A byte-level tokenizer (files only) that adds BOS."""
    root = tmp_path_factory.mktemp("bos_donor") / "tok"
    tok = _with_bos(build_byte_level_bpe(root, vocab_size=600))
    tok.save_pretrained(str(root))
    return root


@pytest.fixture(scope="module")
def plain_donor_tokenizer(tmp_path_factory) -> Path:
    """A byte-level tokenizer (files only) with distinct BOS/EOS tokens that adds no BOS."""
    root = tmp_path_factory.mktemp("plain_donor") / "tok"
    build_byte_level_bpe(root, vocab_size=600, bos="<|startoftext|>", eos="<|endoftext|>")
    return root


def load(path: Path):
    return transformers.AutoTokenizer.from_pretrained(str(path))


def test_bos_follows_the_base_tokenizer(bos_base, plain_donor_tokenizer, tmp_path):
    assert adds_bos(load(bos_base)) and not adds_bos(load(plain_donor_tokenizer))  # preconditions
    out = tmp_path / "out"
    transplant(str(bos_base), str(plain_donor_tokenizer), str(out), "mean", quiet=True)
    tok = load(out)
    ids = tok("hello world")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1:] == tok("hello world", add_special_tokens=False)["input_ids"]
    # the output BOS token carries the base model's BOS row (mapped by role)
    base_tok = load(bos_base)
    assert tensors(out)[EMB][tok.bos_token_id].equal(tensors(bos_base)[EMB][base_tok.bos_token_id])
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    assert manifest["bos"]["adds_bos"] is True and manifest["bos"]["mode"] == "base"
    assert "BOS: the output tokenizer adds a BOS token" in (out / "README.md").read_text()


def test_bos_dropped_when_the_base_adds_none(zoo, bos_donor_tokenizer, tmp_path):
    assert adds_bos(load(bos_donor_tokenizer)) and not adds_bos(load(zoo.sp_untied))
    out = tmp_path / "out"
    transplant(str(zoo.sp_untied), str(bos_donor_tokenizer), str(out), "mean", quiet=True)
    tok = load(out)
    assert tok("hello world")["input_ids"] == tok("hello world", add_special_tokens=False)["input_ids"]


def test_add_bos_source_keeps_the_donor_convention(zoo, bos_base, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        ["transplant", str(bos_base), str(zoo.bl_untied), str(out), "-m", "mean", "--add-bos", "source", "-q"],
    )
    assert res.exit_code == 0, res.output
    assert not adds_bos(load(out))
    assert "`add_bos: source`" in (out / "README.md").read_text()
    assert "add_bos: source" in (out / "mergekit_config.yml").read_text()


def test_output_files_get_the_umask_mode(zoo, tmp_path):
    previous = os.umask(0o002)
    try:
        out = tmp_path / "out"
        transplant(str(zoo.sp_untied), str(zoo.bl_untied), str(out), "mean", quiet=True)
    finally:
        os.umask(previous)
    paths = [out, *out.rglob("*")]
    assert any(p.name == "model.safetensors" for p in paths)
    for p in paths:
        want = 0o775 if p.is_dir() else 0o664
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_union_merge_is_reproducible(zoo, tmp_path):
    """Two runs under different hash seeds: identical tokenizer and tensors; new tokens
    follow the documented order (other model's ids ascending)."""
    import subprocess
    import sys

    import yaml

    recipe = {
        "merge_method": "linear",
        "base_model": str(zoo.sp_untied),
        "models": [
            {"model": str(zoo.sp_untied), "parameters": {"weight": 0.5}},
            {"model": str(zoo.bl_untied), "parameters": {"weight": 0.5}},
        ],
        "tokenizer": {"source": "union", "approximation": {"method": "mean"}},
        "dtype": "float32",
    }
    path = tmp_path / "union.yaml"
    path.write_text(yaml.safe_dump(recipe))
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "mergekit-yaml"), str(path), str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(out)
    for name in ("tokenizer.json", "model.safetensors"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    out_vocab, other = load(outs[0]).get_vocab(), load(zoo.bl_untied).get_vocab()
    base_vocab = load(zoo.sp_untied).get_vocab()
    new = sorted((i, t) for t, i in out_vocab.items() if t not in base_vocab)
    regular = [other[t] for _, t in new if t in other and not t.startswith("<|")]
    assert len(regular) > 10 and regular == sorted(regular)


def test_new_token_may_be_special(zoo, tmp_path):
    from mergekit_tokenplug.surgery import load_recipe, run_recipe

    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {
            "source": "base",
            "tokens": {"<|turn|>": {"special": True}, "<|plain|>": {}},
            "approximation": {"method": "mean"},
        },
    }
    out = tmp_path / "out"
    run_recipe(load_recipe(recipe), str(out), quiet=True)
    tok = load(out)
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    assert added["<|turn|>"].special and not added["<|plain|>"].special
    ids = tok("hi<|turn|>there")["input_ids"]
    assert tok.convert_tokens_to_ids("<|turn|>") in ids  # matched inside a word, unnormalized
    assert "<|turn|>" not in tok.decode(ids, skip_special_tokens=True)


def test_single_value_for_a_list_parameter(zoo, tmp_path):
    corpus = zoo.corpus_dir / "part0.txt"
    res = CliRunner().invoke(
        main,
        ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(tmp_path / "out"), "-m", "cw2v", "-p", f"corpus={corpus}", "--dry-run"],
    )
    assert res.exit_code == 0, res.output
    assert f"corpus=['{corpus}']" in res.output, res.output  # parsed as a one-element list


def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_model_card_front_matter(zoo, tmp_path):
    """Hub conventions: base_model lists the merged models (the donor under tokenizer_source),
    license inherited when all agree, else ``other``."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(zoo.sp_untied, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    out = tmp_path / "my-transplant"
    transplant(str(base), str(zoo.bl_untied), str(out), "mean", quiet=True)
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == [str(base)]
    assert meta["tokenizer_source"] == [str(zoo.bl_untied)]
    assert meta["license"] == "other"  # the donor declares none: nothing to inherit
    assert "# my-transplant" in card and "not declared" in card
    (zoo_donor := tmp_path / "donor").mkdir()
    for f in Path(zoo.bl_untied).iterdir():
        shutil.copy(f, zoo_donor / f.name)
    (zoo_donor / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    out2 = tmp_path / "agreed"
    transplant(str(base), str(zoo_donor), str(out2), "mean", quiet=True)
    assert _front_matter((out2 / "README.md").read_text())["license"] == "apache-2.0"


def test_multi_stage_output_carries_every_stage(zoo, tmp_path):
    """mergekit-multi (recipe 02): final OUT has the manifest (verify passes), the card lists
    the original inputs and each stage's transplant; --no-lazy re-runs in place like stock."""
    import subprocess
    import sys

    from test_recipes import RECIPES, link_references, reference_map

    recipe = next(r for r in RECIPES if r.name.startswith("02-"))
    mapping = reference_map(zoo)
    link_references(tmp_path, mapping)
    text = recipe.read_text()
    for ref in mapping:  # absolute paths: the card looks relative names up on the Hub
        text = text.replace(ref, str(tmp_path / ref))
    local = tmp_path / recipe.name
    local.write_text(text)
    out = tmp_path / "final"
    cmd = [str(Path(sys.executable).parent / "mergekit-multi"), str(local), "--intermediate-dir", str(tmp_path / "stages"), "--out-path", str(out), "--quiet"]
    for extra in ([], ["--no-lazy"]):
        proc = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    assert manifest["stages"]["aligned"]["report"]["matrices"]
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert str(tmp_path / "models/base-model") in meta["base_model"]
    assert "aligned" not in meta["base_model"]
    assert not any(str(tmp_path / "stages") in m for m in meta["base_model"])
    assert "Stage `aligned`: vocabulary transplant" in card and "# final" in card


def test_rerun_refusal_names_an_existing_option(zoo, tmp_path):
    out = tmp_path / "out"
    args = ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "-m", "mean", "-q"]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert "--overwrite" in CliRunner().invoke(main, ["transplant", "--help"]).output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


def _transplant_stderr(zoo, tmp_path, *flags: str) -> str:
    import subprocess
    import sys

    import yaml

    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {"source": str(zoo.bl_untied), "approximation": {"method": "omp", "k": 4}},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mergekit-yaml"), str(path), str(tmp_path / "out"), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        # several chunks: the outer bar alone would move once per chunk; stderr is a pipe, so
        # bars print plain lines, here at every redraw (compute.progress)
        env={
            **os.environ,
            "MERGEKIT_TOKENPLUG_SHARD_CHUNK": "16",
            "MERGEKIT_TOKENPLUG_PROGRESS_SECONDS": "0",
            **BYTE_SETTINGS,
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


# Both size how rows are batched (the last bits can depend on it), so a run records them.
BYTE_SETTINGS = {"MERGEKIT_TOKENPLUG_CPU_BUDGET_MB": "512"}


def test_manifest_records_the_settings_that_can_change_bytes(zoo, tmp_path):
    _transplant_stderr(zoo, tmp_path, "--quiet")
    manifest = json.loads((tmp_path / "out" / "tokenplug_manifest.json").read_text())
    assert manifest["settings"] == {
        "MERGEKIT_TOKENPLUG_SHARD_CHUNK": 16,
        "MERGEKIT_TOKENPLUG_CPU_BUDGET_MB": 512,
    }


def test_progress_moves_within_a_chunk(zoo, tmp_path):
    err = _transplant_stderr(zoo, tmp_path)
    assert "tok/s" in err or " tok" in err  # the per-chunk bar
    assert "step/s" in err or " step" in err  # OMP's greedy steps inside each chunk


def test_quiet_silences_every_bar(zoo, tmp_path):
    err = _transplant_stderr(zoo, tmp_path, "--quiet")
    assert "%|" not in err, err[-2000:]  # stock mergekit's bars included
