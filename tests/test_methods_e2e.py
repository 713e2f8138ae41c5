"""Every method reachable from a recipe, the CLI and Python, with the same parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from click.testing import CliRunner
from helpers import config, tensors
from safetensors import safe_open
from tokenizers_factory import corpus_documents

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.surgery import load_recipe, run_recipe

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(corpus_documents()), encoding="utf-8")
    return path


def test_tokenadapt_needs_no_donor_model(zoo, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["transplant", str(zoo.sp_untied), str(zoo.tok_bl_only), str(out), "--method", "tokenadapt", "-p", "top_k=2", "-q"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    assert all(m["by_method"] == {"tokenadapt": m["estimated"]} for m in manifest["report"]["matrices"])
    rows = tensors(out)[EMB]
    assert not (rows == 0).all(dim=1).any()


def test_cw2v_rows_are_convex_and_deterministic(zoo, tmp_path, corpus):
    """Two runs (separate processes, as two CLI calls are) give identical bytes."""
    digests = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        args = [str(BIN / "mergekit-tokenplug"), "transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out),
                "--method", "cw2v", "-p", f"corpus=[{corpus}]", "-p", "epochs=1", "-p", "rank=8", "--seed", "3", "-q"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(tensors(out)[EMB])
    assert torch.equal(digests[0], digests[1])
    base = tensors(zoo.sp_untied)[EMB]
    lo, hi = base.min(dim=0).values, base.max(dim=0).values
    # convex combinations of old rows stay inside the per-coordinate bounding box of the old rows
    assert bool(((digests[0] >= lo - 1e-5) & (digests[0] <= hi + 1e-5)).all())


def test_cw2v_without_corpus_is_a_clear_error(zoo, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--method", "cw2v"])
    assert res.exit_code != 0 and "corpus" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cw2v_with_empty_corpus(zoo, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--method", "cw2v", "-p", f"corpus=[{empty}]"])
    assert res.exit_code != 0 and "tokenizer.approximation.corpus" in res.output
    assert not out.exists()


def test_tokenadapt_embedder_must_exist(zoo, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["transplant", str(zoo.sp_untied), str(zoo.tok_bl_only), str(out), "--method", "tokenadapt", "-p", f"embedder={tmp_path / 'nope'}"])
    assert res.exit_code != 0 and "tokenizer.approximation.embedder" in res.output
    assert not out.exists()


def test_tokenadapt_embedder_must_be_a_text_encoder(zoo, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["transplant", str(zoo.sp_untied), str(zoo.tok_bl_only), str(out), "--method", "tokenadapt", "-p", f"embedder={zoo.bl_untied}"])
    assert res.exit_code != 0 and "tokenizer.approximation.embedder" in res.output
    assert not out.exists()


TOOL_RECIPE = """
merge_method: passthrough
models:
  - model: {base}
tokenizer:
  source: base
  tokens:
    "<tool:calculator>":
      source: {{kind: tool, name: calculator, description: "Evaluates an arithmetic expression"}}
"""


@pytest.mark.parametrize("tied", [False, True])
def test_tool_token_prior_through_mergekit_yaml(zoo, tmp_path, tied):
    base = zoo.sp_tied if tied else zoo.sp_untied
    path = tmp_path / "tool.yaml"
    path.write_text(TOOL_RECIPE.format(base=base))
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "mergekit-yaml"), str(path), str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    tid = tok.convert_tokens_to_ids("<tool:calculator>")
    assert tok.tokenize("x <tool:calculator> y").count("<tool:calculator>") == 1
    got = tensors(out)
    head = got[EMB] if tied else got[HEAD]
    orig_head = tensors(base)[EMB if tied else HEAD]
    assert head.shape[0] == orig_head.shape[0] + 1
    # default scale: the authors' unit vector / sqrt(d)
    assert torch.isclose(head[tid].norm(), torch.tensor(head.shape[1] ** -0.5), rtol=1e-5)
    assert not torch.equal(head[tid], orig_head.mean(dim=0))
    # side files stay out of the directory loaders scan for weights, and are in the manifest
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    assert manifest["side_files"] == {"tool_token_priors": "tokenplug/tool_token_priors.safetensors"}
    assert "tokenplug/tool_token_priors.safetensors" in manifest["outputs"]
    # the rows are the prior: plan, manifest and card say `tool`, not the fill method
    for rec in manifest["report"]["matrices"]:
        assert rec["by_method"] == {"tool": 1} and rec["by_source"] == {"tool prior": 1}, rec
    assert "Tool tokens (`tool`)" in (out / "README.md").read_text()
    plan = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert plan.exit_code == 0, plan.output
    (model_plan,) = json.loads(plan.output)[0]["models"]
    assert model_plan["by_method"] == {"tool": 1}, model_plan
    with safe_open(str(out / "tokenplug" / "tool_token_priors.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()["tokens"]) == ["<tool:calculator>"]
        assert fh.get_tensor("token_ids").tolist() == [tid]
        assert torch.equal(fh.get_tensor("prior/" + (EMB if tied else HEAD))[0], head[tid])
    assert config(out)["vocab_size"] == head.shape[0]


def test_tool_token_without_text_is_refused(zoo, tmp_path):
    recipe = yaml.safe_load(TOOL_RECIPE.format(base=zoo.sp_untied))
    recipe["tokenizer"]["tokens"]["<tool:calculator>"]["source"] = {"kind": "tool"}
    with pytest.raises(Exception, match="name or description"):
        load_recipe(recipe)


def test_method_params_identical_across_recipe_and_cli(zoo, tmp_path):
    """The same parameters through a recipe and through the CLI give the same bytes."""
    out_cli, out_recipe = tmp_path / "cli", tmp_path / "recipe"
    res = CliRunner().invoke(main, ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out_cli), "--method", "hewitt", "-p", "scale=0.001", "--seed", "5", "-q"])
    assert res.exit_code == 0, res.output
    recipe = {"merge_method": "passthrough", "models": [{"model": str(zoo.sp_untied)}],
              "tokenizer": {"source": str(zoo.bl_untied), "approximation": {"method": "hewitt", "scale": 0.001}}}
    run_recipe(load_recipe(recipe), str(out_recipe), seed=5, quiet=True)
    assert torch.equal(tensors(out_cli)[EMB], tensors(out_recipe)[EMB])


@pytest.fixture(scope="module")
def tool_model(zoo, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tool")
    recipe = yaml.safe_load(TOOL_RECIPE.format(base=zoo.sp_untied))
    out = root / "model"
    run_recipe(load_recipe(recipe), str(out), quiet=True)
    return out


@pytest.mark.parametrize("command", ["learn-tool-tokens", "heal"])
def test_learn_tool_tokens_trains_only_tool_rows(tool_model, tmp_path, command):
    from mergekit_tokenplug.tooltokens.data import generate_arithmetic_dataset

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in generate_arithmetic_dataset(12, seed=1)) + "\n")
    out = tmp_path / "trained"
    args = [str(tool_model), str(data), str(out)] if command == "learn-tool-tokens" else [str(tool_model), str(out), "--corpus", str(data), "--rows", "tool", "--lr", "1e-2"]
    res = CliRunner().invoke(main, [command, *args, "--steps", "3", "--batch-size", "4", "-q"])
    assert res.exit_code == 0, res.output
    assert "held-out before: loss" in res.output and "tool-token accuracy" in res.output
    heal = json.loads((out / "tokenplug_manifest.json").read_text())["report"]["heal"]
    assert heal["rows"]["which"] == "tool" and heal["rows"]["matrices"] == ["input", "output"]
    assert heal["heldout_before"]["tool_rank"] >= 1 and "tool_acc" in heal["heldout_after"]
    before, after = tensors(tool_model), tensors(out)
    (tid,) = heal["rows"]["ids"]
    for name in (EMB, HEAD):
        keep = torch.ones(before[name].shape[0], dtype=torch.bool)
        keep[tid] = False
        assert torch.equal(before[name][keep], after[name][keep])
    assert not torch.equal(before[HEAD][tid], after[HEAD][tid])
    assert (out / "tokenplug" / "tool_token_priors.safetensors").exists()
    assert "tool-token accuracy" in (out / "README.md").read_text()


def test_heal_tool_rows_refuse_an_unknown_tool_token(tool_model, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' * 3)
    out = tmp_path / "trained"
    res = CliRunner().invoke(main, ["learn-tool-tokens", str(tool_model), str(data), str(out), "--tool-token", "<tool:nope>"])
    assert res.exit_code != 0 and "--tool-token" in res.output and "<tool:nope>" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_learn_tool_tokens_bad_row_names_the_line(tool_model, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    out = tmp_path / "trained"
    res = CliRunner().invoke(main, ["learn-tool-tokens", str(tool_model), str(data), str(out)])
    assert res.exit_code != 0 and f"{data}:2" in res.output and "Traceback" not in res.output
    assert not out.exists()
