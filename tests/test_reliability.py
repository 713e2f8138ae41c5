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
