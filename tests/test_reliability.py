"""Exit 0 means a checkpoint that works; the output step never destroys what it was not
asked to replace; what is hashed is what was read. (Refused inputs: test_bad_input.py.)"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from click.testing import CliRunner
from models_factory import build_llama
from safetensors.torch import load_file

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.output.atomic import atomic_directory

BIN = Path(sys.executable).parent


def run_yaml(recipe: dict, path: Path, out: Path, *extra: str):
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return CliRunner().invoke(mergekit_yaml, [str(path), str(out), *extra])


def test_recipe_tokens_with_a_donor_source_get_rows(zoo, tmp_path):
    """New tokens listed under ``tokens:`` with ``source: DONOR`` must have rows behind them."""
    new = ["zzzzqqqqxxxx", " ünïcødé✓"]
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {
            "source": str(zoo.bl_untied),
            "tokens": {t: {} for t in new},
            "approximation": {"method": "mean"},
        },
    }
    out = tmp_path / "out"
    res = run_yaml(recipe, tmp_path / "r.yaml", out)
    assert res.exit_code == 0, res.output
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = [tok.convert_tokens_to_ids(t) for t in new]
    rows = model.get_input_embeddings().weight.shape[0]
    assert max(ids) < rows == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == rows
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape[-1] == rows and torch.isfinite(logits).all()


# ------------------------------------------------------------------ the final move


def test_file_put_into_out_during_the_run_is_kept(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="written to during the run"):
        with atomic_directory(out, inputs=()) as tmp:
            (tmp / "model.safetensors").write_text("new")
            out.mkdir()
            (out / "user.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["user.txt"]
    assert not list(tmp_path.glob(".out.*"))


def test_two_runs_to_one_out_the_second_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no longer empty"):
        with atomic_directory(out, inputs=()) as second:
            (second / "who").write_text("second")
            with atomic_directory(out, inputs=()) as first:
                (first / "who").write_text("first")
    assert (out / "who").read_text() == "first"
    assert not list(tmp_path.glob(".out.*"))


def test_full_disk_is_one_line_naming_out(tmp_path):
    """What a writer raises when the disk fills: a user-fixable error about OUT, nothing left."""
    out = tmp_path / "out"
    with pytest.raises(InputError, match="output path .*No space left on device"):
        with atomic_directory(out, inputs=()) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "model.safetensors"))
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_empty_out_is_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_directory(out, inputs=()) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "new"


def test_overwrite_keeps_out_that_changed_during_the_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous output")
    with pytest.raises(InputError, match="changed during the run"):
        with atomic_directory(out, inputs=(), overwrite=True) as tmp:
            (tmp / "model.safetensors").write_text("new")
            (out / "late.txt").write_text("written meanwhile")
    assert sorted(p.name for p in out.iterdir()) == ["late.txt", "old.txt"]
    assert not list(tmp_path.glob(".out.*"))


def test_overwrite_replaces_an_unchanged_previous_output(zoo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous output")
    args = ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--k", "4", "-q"]
    res = CliRunner().invoke(main, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert not list(tmp_path.glob(".out.*"))


# ------------------------------------------------------------------ what is hashed and verified


@pytest.fixture(scope="module")
def pickled_run(zoo, tmp_path_factory):
    """A transplant from a pickle donor that also holds a safetensors file mergekit never reads."""
    root = tmp_path_factory.mktemp("pickled")
    donor = Path(shutil.copytree(zoo.bl_untied, root / "donor"))
    tensors = load_file(donor / "model.safetensors")
    (donor / "model.safetensors").unlink()
    torch.save(tensors, donor / "pytorch_model.bin")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(donor / "extra.safetensors"))
    out = root / "out"
    args = ["transplant", str(zoo.sp_untied), str(donor), str(out), "--k", "4", "-q"]
    res = CliRunner().invoke(main, [*args, "--allow-pickle"])
    assert res.exit_code == 0, res.output
    return out


def test_manifest_hashes_the_weights_actually_read(pickled_run):
    manifest = json.loads((pickled_run / "tokenplug_manifest.json").read_text())
    donor = next(i for i in manifest["inputs"] if i["role"] == "donor")
    assert list(donor["safetensors"]) == ["pytorch_model.bin"]


def test_verify_treats_only_the_top_level_manifest_as_the_manifest(pickled_run, tmp_path):
    out = Path(shutil.copytree(pickled_run, tmp_path / "out"))
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
    (out / "sub").mkdir()
    (out / "sub" / "tokenplug_manifest.json").write_text("{}")
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 1 and "unexpected: sub/tokenplug_manifest.json" in res.output


def test_output_tokenizer_config_has_no_loader_flags(pickled_run):
    cfg = json.loads((pickled_run / "tokenizer_config.json").read_text())
    assert not {"is_local", "local_files_only"} & set(cfg)


# ------------------------------------------------------------------ validate and plan


def test_validate_refuses_an_alias_bomb_quickly(tmp_path):
    levels = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*levels, "merge_method: passthrough", ""]))

    def two_gib() -> None:  # without the cap the expansion grows past 4 GB: fail, not swap
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run(
        [str(BIN / "mergekit-tokenplug"), "recipes", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=two_gib,
    )
    assert proc.returncode == 1, proc.stderr[-1500:]
    assert "aliases expand to more than" in proc.stdout


@pytest.fixture(scope="module")
def wide_union(zoo, tmp_path_factory) -> Path:
    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.tok_bl_only))
    root = tmp_path_factory.mktemp("widths")
    wide = build_llama(root / "bl_wide", tok, hidden=48, seed=12)
    recipe = {
        "merge_method": "linear",
        "base_model": str(zoo.bl_untied),
        "models": [
            {"model": str(zoo.bl_untied), "parameters": {"weight": 0.5}},
            {"model": str(wide), "parameters": {"weight": 0.5}},
        ],
        "tokenizer": {"source": "union", "approximation": {"method": "omp", "k": 4}},
    }
    path = root / "union.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("command", [["recipes", "validate", "--inputs"], ["plan"]])
def test_union_of_widths_refused_before_any_work(wide_union, command):
    res = CliRunner().invoke(main, [*command, str(wide_union)])
    assert res.exit_code == 1, res.output
    assert "hidden size 32" in res.output and "48" in res.output


# ------------------------------------------------------------------ long tool descriptions


def test_tool_description_past_the_context_is_cut_with_a_warning(zoo, tmp_path, caplog):
    words = " ".join(f"word{i % 97} alpha beta" for i in range(3000))  # far past 256 positions
    tool = {"source": {"kind": "tool", "name": "search", "description": words}}
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.bl_untied)}],
        "tokenizer": {"source": "base", "tokens": {"<tool_search>": tool}},
    }
    with caplog.at_level(logging.WARNING, logger="mergekit_tokenplug"):
        res = run_yaml(recipe, tmp_path / "r.yaml", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert any("past the model's context of 256" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ every command that writes


def test_mergekit_yaml_into_a_non_empty_out_keeps_the_users_files(zoo, tmp_path):
    """Stock mergekit's promise for a plugin recipe too: the run's files join OUT, the
    user's files stay byte-identical."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("four years of work")
    (out / "sub" / "data.csv").write_text("1,2,3")
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {"source": str(zoo.bl_untied), "approximation": {"method": "mean"}},
    }
    res = run_yaml(recipe, tmp_path / "r.yaml", out)
    assert res.exit_code == 0, res.output
    assert (out / "thesis.txt").read_text() == "four years of work"
    assert (out / "sub" / "data.csv").read_text() == "1,2,3"
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size
    assert not list(tmp_path.glob(".out.*"))


def test_a_killed_runs_partial_directory_is_removed_by_the_next_run(tmp_path):
    """kill -9 leaves ``.OUT.partial-*``; its lock died with it, so the next run on OUT
    removes it. A live run's directory is locked and stays."""
    import fcntl

    out = tmp_path / "out"
    dead = tmp_path / ".out.partial-dead"
    (dead / "half").mkdir(parents=True)
    live = tmp_path / ".out.partial-live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with atomic_directory(out, inputs=()) as tmp:
            (tmp / "model.safetensors").write_text("new")
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)
    assert (out / "model.safetensors").read_text() == "new"


def test_outputs_follow_the_umask(tmp_path):
    """safetensors writes 0600 whatever the umask; atomic_directory gives every command's
    output the modes the umask asks for."""
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out", inputs=()) as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp / "model.safetensors"))
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.fixture(scope="module")
def bf16_with_fp32_norms(zoo, tmp_path_factory) -> Path:
    """A bfloat16 checkpoint whose norm weights are float32 (as some published models ship)."""
    from safetensors.torch import save_file

    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.tok_sp_only))
    root = tmp_path_factory.mktemp("bf16")
    model = build_llama(root / "m", tok, seed=21, dtype=torch.bfloat16)
    tensors = load_file(model / "model.safetensors")
    for name in tensors:
        if "norm" in name:
            tensors[name] = (torch.rand_like(tensors[name], dtype=torch.float32) + 0.5).contiguous()
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


def test_heal_keeps_frozen_tensors_bytes_and_modes(zoo, bf16_with_fp32_norms, tmp_path):
    src = bf16_with_fp32_norms
    out = tmp_path / "healed"
    corpus = str(zoo.corpus_dir / "*.txt")
    args = ["heal", str(src), str(out), "--corpus", corpus, "--steps", "1", "--seq-len", "16"]
    old = os.umask(0o022)
    try:
        res = CliRunner().invoke(main, [*args, "-q", "-v"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    before, after = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    norms = [n for n in before if "norm" in n]
    assert norms and all(after[n].dtype == torch.float32 for n in norms)
    for name, tensor in before.items():
        if name != "model.embed_tokens.weight":  # the only trained matrix
            assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    assert after["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
    transformers.AutoModelForCausalLM.from_pretrained(out)


def test_heal_cuts_jsonl_rows_to_the_window(zoo, tmp_path):
    """A 5000-token row is cut to --seq-len (the completion keeps its start, the prompt its
    end) instead of widening every padded batch."""
    from mergekit_tokenplug.heal.data import load_corpus

    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.bl_untied))
    rows = [{"prompt": "word " * 5000, "completion": "<|im_start|> done"}]
    rows += [{"prompt": f"q{i}", "completion": " short answer"} for i in range(4)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = load_corpus([str(path)], tok, seq_len=32, eval_fraction=0.0, seed=0)
    assert data.train.ids.shape[1] <= 32
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert (data.train.labels == im_start).any()  # the long row's completion survived the cut


def test_evaluate_fits_its_windows_to_a_short_context(zoo, tmp_path):
    """A 64-position GPT-2: the default window is cut to the context, no IndexError."""
    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.tok_bl_only))
    cfg = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2
    )
    torch.manual_seed(0)
    model_dir = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(cfg).save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    text = str(zoo.corpus_dir / "part0.txt")
    res = CliRunner().invoke(main, ["evaluate", str(model_dir), "--text", text, "-q"])
    assert res.exit_code == 0, res.output
    assert "bpb" in res.output


def test_heal_accepts_allow_pickle(zoo, tmp_path):
    """The pickle refusal names --allow-pickle; heal has it."""
    src = Path(shutil.copytree(zoo.sp_untied, tmp_path / "m"))
    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    corpus = str(zoo.corpus_dir / "*.txt")
    args = ["heal", str(src), str(tmp_path / "out"), "--corpus", corpus, "--steps", "1"]
    res = CliRunner().invoke(main, [*args, "--seq-len", "16", "-q", "--allow-pickle"])
    assert res.exit_code == 0, res.output


def test_heal_reports_two_corpus_files_of_one_name_apart(zoo, tmp_path):
    text = (zoo.corpus_dir / "part0.txt").read_text()
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.txt").write_text(text)
    out = tmp_path / "out"
    args = ["heal", str(zoo.sp_untied), str(out), "--corpus", str(tmp_path / "a" / "x.txt")]
    args += ["--corpus", str(tmp_path / "b" / "x.txt"), "--steps", "1", "--seq-len", "16", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    assert len(manifest["report"]["heal"]["heldout_after"]["per_file"]) == 2


def test_an_unknown_flag_value_is_warned_about(monkeypatch, caplog):
    from mergekit_tokenplug import settings

    monkeypatch.setenv(settings.DISABLE, "maybe")
    with caplog.at_level(logging.WARNING, logger="mergekit_tokenplug"):
        assert settings.flag(settings.DISABLE) is False
    assert any("MERGEKIT_TOKENPLUG_DISABLE=maybe" in r.getMessage() for r in caplog.records)


def test_an_ordinary_token_named_as_a_tool_token_is_warned_about(zoo, tmp_path, caplog):
    """``--tool-token the``: a text token, not an added one; training it is allowed but said."""
    from mergekit_tokenplug.heal.data import check_tool_tokens_used

    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.bl_untied))
    word = next(t for t, i in tok.get_vocab().items() if i not in tok.all_special_ids and i > 300)
    rows = [{"prompt": "a", "completion": tok.convert_tokens_to_string([word])}]
    with caplog.at_level(logging.WARNING, logger="mergekit_tokenplug"):
        check_tool_tokens_used(rows, tok, {tok.convert_tokens_to_ids(word)})
    assert any("ordinary tokens" in r.getMessage() for r in caplog.records)
    caplog.clear()
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    with caplog.at_level(logging.WARNING, logger="mergekit_tokenplug"):
        check_tool_tokens_used([{"prompt": "a", "completion": "<|im_start|> x"}], tok, {im_start})
    assert not any("ordinary tokens" in r.getMessage() for r in caplog.records)


def test_heal_writes_trained_rows_in_the_files_dtype(zoo, bf16_with_fp32_norms, tmp_path):
    """A config that says float32 over bfloat16 weights: the trained matrix keeps bfloat16."""
    src = Path(shutil.copytree(bf16_with_fp32_norms, tmp_path / "m"))
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "dtype": "float32"}))
    out = tmp_path / "healed"
    corpus = str(zoo.corpus_dir / "*.txt")
    args = ["heal", str(src), str(out), "--corpus", corpus, "--steps", "1", "--seq-len", "16"]
    res = CliRunner().invoke(main, [*args, "-q"])
    assert res.exit_code == 0, res.output
    after = load_file(out / "model.safetensors")
    assert after["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_heal_reads_a_hub_cache_snapshot(zoo, tmp_path):
    """Every file of a Hugging Face cache snapshot links to the repository's blob store: those
    links are not refused (a link leading anywhere else is, see test_bad_input)."""
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in zoo.sp_untied.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    out = tmp_path / "out"
    corpus = str(zoo.corpus_dir / "*.txt")
    args = ["heal", str(snap), str(out), "--corpus", corpus, "--steps", "1", "--seq-len", "16"]
    res = CliRunner().invoke(main, [*args, "-q"])
    assert res.exit_code == 0, res.output
    assert not any(p.is_symlink() for p in out.rglob("*"))
