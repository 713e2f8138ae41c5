"""Every bad input: a one-line error naming the file/key, a non-zero exit, nothing at OUT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mergekit_tokenplug.cli import main

BIN = Path(sys.executable).parent


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_failure(result, out: Path, *fragments: str):
    assert result.exit_code != 0
    text = result.output.strip()
    error_lines = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(error_lines) == 1, text[-1500:]
    for frag in fragments:
        assert frag in error_lines[0], error_lines[0]
    assert "Traceback" not in text
    assert not out.exists() or not any(out.iterdir())
    assert not list(out.parent.glob(f".{out.name}.partial-*")), "temporary output left behind"


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unknown_method(zoo, tmp_path):
    out = tmp_path / "out"
    res = run_cli(
        "transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--method", "nope"
    )
    assert_clean_failure(res, out, "tokenizer.approximation.method", "nope", "omp")


def test_unknown_parameter_lists_valid_ones(zoo, tmp_path):
    out = tmp_path / "out"
    res = run_cli("transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "-p", "kk=3")
    assert_clean_failure(res, out, "kk", "unknown parameter", "k")


def test_ill_typed_parameter(zoo, tmp_path):
    out = tmp_path / "out"
    res = run_cli("transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "-p", "k=many")
    assert_clean_failure(res, out, "k")


def test_k_larger_than_shared_set(zoo, tmp_path):
    out = tmp_path / "out"
    res = run_cli("transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--k", "100000")
    assert_clean_failure(res, out, "tokenizer.approximation.k", "shared tokens")


def test_donor_without_tokenizer(zoo, tmp_path):
    donor = copy_model(zoo.bl_untied, tmp_path / "donor")
    for f in donor.glob("tokenizer*"):
        f.unlink()
    out = tmp_path / "out"
    res = run_cli("transplant", str(zoo.sp_untied), str(donor), str(out))
    assert_clean_failure(res, out, "tokenizer.source", "no tokenizer")


def test_missing_base_path(zoo, tmp_path):
    out = tmp_path / "out"
    res = run_cli("transplant", str(tmp_path / "nowhere"), str(zoo.bl_untied), str(out))
    assert_clean_failure(res, out, "does not exist")


def test_donor_rows_disagree_with_config(zoo, tmp_path):
    donor = copy_model(zoo.bl_untied, tmp_path / "donor")
    cfg = json.loads((donor / "config.json").read_text())
    cfg["vocab_size"] += 7
    (donor / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    res = run_cli("transplant", str(zoo.sp_untied), str(donor), str(out))
    assert_clean_failure(res, out, "rows", "vocab_size")


@pytest.mark.parametrize("who", ["base", "donor"])
def test_nan_in_embeddings(zoo, tmp_path, who):
    src = zoo.sp_untied if who == "base" else zoo.bl_untied
    model = copy_model(src, tmp_path / who)
    weights = load_file(model / "model.safetensors")
    weights["model.embed_tokens.weight"][5, 3] = float("nan")
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    base, donor = (model, zoo.bl_untied) if who == "base" else (zoo.sp_untied, model)
    out = tmp_path / "out"
    res = run_cli("transplant", str(base), str(donor), str(out))
    assert_clean_failure(res, out, "NaN", "rows [5]")


def test_output_exists_and_not_empty(zoo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    res = run_cli("transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--k", "4")
    assert res.exit_code != 0 and "not empty" in res.output and "--overwrite" in res.output
    assert (out / "keep.txt").read_text() == "user data"
    res = run_cli(
        "transplant",
        str(zoo.sp_untied),
        str(zoo.bl_untied),
        str(out),
        "--k",
        "4",
        "--overwrite",
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_pickle_checkpoint_refused_unless_opted_in(zoo, tmp_path):
    model = copy_model(zoo.bl_untied, tmp_path / "donor")
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(weights, model / "pytorch_model.bin")
    out = tmp_path / "out"
    res = run_cli("transplant", str(zoo.sp_untied), str(model), str(out), "--k", "4")
    assert_clean_failure(res, out, "pickle", "--allow-pickle")
    res = run_cli("transplant", str(zoo.sp_untied), str(model), str(out), "--k", "4", "--allow-pickle", "-q")
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").exists()


def test_malformed_yaml_through_mergekit_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("merge_method: passthrough\nmodels: [\n  - model: x\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(BIN / "mergekit-yaml"), str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "bad.yaml:" in lines[0] and "malformed YAML" in lines[0]
    assert not out.exists()


def test_plugin_recipe_refused_while_disabled(zoo, tmp_path):
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {"source": str(zoo.bl_untied), "approximation": {"method": "omp"}},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    env = {**os.environ, "MERGEKIT_TOKENPLUG_DISABLE": "1"}
    proc = subprocess.run(
        [str(BIN / "mergekit-yaml"), str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode != 0
    assert "disabled" in proc.stderr and "tokenizer.approximation" in proc.stderr
    assert not out.exists()


def test_unknown_method_through_mergekit_yaml(zoo, tmp_path):
    recipe = {
        "merge_method": "passthrough",
        "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {
            "source": str(zoo.bl_untied),
            "approximation": {"method": "omp", "k": "lots"},
        },
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(BIN / "mergekit-yaml"), str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "k" in lines[0], proc.stderr[-1500:]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda(zoo, tmp_path):
    out = tmp_path / "out"
    res = run_cli("transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--device", "cuda")
    assert_clean_failure(res, out, "--device", "CUDA")
