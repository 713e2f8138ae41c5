"""Publishable outputs and the recipe checks that guard them: the ``parameters.requires``
marker (and ``--fix``), every error of a block, "did you mean" for stage references, ``.yml``
files, ``verify`` after a model-card edit, the card's ``base_model`` / ``license`` front
matter, and OMP's ``k`` refused before any weight is read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_outputs import bos_base, plain_donor_tokenizer  # noqa: F401  (fixtures)

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.recipes.requires import add_marker
from mergekit_tokenplug.surgery import transplant

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)


def plugin_recipe(base: str, donor: str, extra: str = "") -> str:
    return (
        "# a comment that --fix must keep\n"
        "merge_method: passthrough\n"
        f"{extra}"
        f"models:\n  - model: {base}\n"
        f"tokenizer:\n  source: {donor}\n  approximation:\n    method: omp\n    k: 4\n"
    )


# ------------------------------------------------------------------ parameters.requires


def test_recipe_without_requires_is_an_error_and_fix_adds_it(zoo, tmp_path):
    sp, bl = str(zoo.sp_untied), str(zoo.bl_untied)
    bare = tmp_path / "bare.yaml"
    bare.write_text(plugin_recipe(sp, bl))
    with_params = tmp_path / "params.yml"
    with_params.write_text(plugin_recipe(sp, bl, "parameters:\n  normalize: true\n"))
    res = invoke("recipes", "validate", "-q", str(bare), str(with_params))
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 2 and all("parameters.requires" in ln for ln in lines), res.output
    assert "recipes validate --fix" in lines[0]

    res = invoke("recipes", "validate", "--fix", str(bare), str(with_params))
    assert res.exit_code == 0, res.output
    assert res.output.count("fixed: ") == 2
    for path in (bare, with_params):
        text = path.read_text()
        assert text.startswith("# a comment that --fix must keep\n")
        doc = yaml.safe_load(text)
        assert doc["parameters"]["requires"] == {"mergekit-tokenplug": ">=0.1"}
    assert yaml.safe_load(with_params.read_text())["parameters"]["normalize"] is True
    # a fixed recipe is left alone the second time
    assert add_marker(bare.read_text()) == (bare.read_text(), 0)


def test_fix_marks_every_plugin_document_of_a_multi_recipe(zoo, tmp_path):
    sp, bl = str(zoo.sp_untied), str(zoo.bl_untied)
    text = (
        "name: moved\n" + plugin_recipe(sp, bl) + "---\n"
        "merge_method: linear\nmodels:\n"
        "  - model: moved\n    parameters: {weight: 0.5}\n"
        f"  - model: {bl}\n    parameters: {{weight: 0.5}}\n"
    )
    fixed, count = add_marker(text)
    docs = list(yaml.safe_load_all(fixed))
    assert count == 1
    assert docs[0]["parameters"]["requires"] == {"mergekit-tokenplug": ">=0.1"}
    assert docs[0]["name"] == "moved"
    assert "parameters" not in docs[1]  # the stock document is untouched


# ------------------------------------------------------------------ every error, did you mean


def test_unknown_method_does_not_hide_a_bad_parameter(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "merge_method: passthrough\nparameters:\n  requires: {mergekit-tokenplug: '>=0.1'}\n"
        "models:\n  - model: m\ntokenizer:\n  source: d\n  approximation:\n"
        "    method: ompp\n    k: sixty\n    seed: x\n"
    )
    res = invoke("recipes", "validate", "-q", "--skip-models", str(path))
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    keys = sorted(ln.split(" ")[1] for ln in lines)
    assert keys == [
        "tokenizer.approximation.k:",
        "tokenizer.approximation.method:",
        "tokenizer.approximation.seed:",
    ], res.output
    assert "did you mean 'omp'?" in res.output


def test_stage_reference_typo_says_did_you_mean(zoo, tmp_path):
    sp, bl = str(zoo.sp_untied), str(zoo.bl_untied)
    path = tmp_path / "multi.yaml"
    path.write_text(
        "name: stage1\nmerge_method: passthrough\nmodels:\n"
        f"  - model: {sp}\n---\n"
        "merge_method: linear\nmodels:\n"
        "  - model: stagee1\n    parameters: {weight: 0.5}\n"
        f"  - model: {bl}\n    parameters: {{weight: 0.5}}\n"
    )
    res = invoke("recipes", "validate", str(path))
    assert "did you mean stage 'stage1'?" in res.output, res.output
    res = invoke("recipes", "validate", "--inputs", "-q", str(path))
    assert res.exit_code == 1 and "did you mean stage 'stage1'?" in res.output, res.output


def test_yml_files_are_validated_in_a_folder_and_by_the_ci_template(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "ok.yaml").write_text("merge_method: passthrough\nmodels:\n  - model: m\n")
    (folder / "bad.yml").write_text("merge_method: passthrough\nmodles: []\n")
    res = invoke("recipes", "validate", "--skip-models", str(folder))
    assert res.exit_code == 1 and "bad.yml:2 modles" in res.output, res.output
    workflow = yaml.safe_load((REPO / "recipes" / "ci" / "github-actions.yml").read_text())
    step = next(
        s for s in workflow["jobs"]["validate"]["steps"] if "recipes validate" in s.get("run", "")
    )
    env = {**os.environ, "RECIPES_DIR": str(folder)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", "-c", step["run"]], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.yml" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------ outputs: card and verify


@pytest.fixture(scope="module")
def hub_run(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub_run") / "out"
    env = {"MERGEKIT_TOKENPLUG_HUB_IDS": f"{zoo.sp_untied}=org/base-model"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        transplant(str(zoo.sp_untied), str(zoo.bl_untied), str(out), "omp", {"k": 4}, quiet=True)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out


def front_matter(out: Path) -> dict:
    return yaml.safe_load((out / "README.md").read_text().split("---", 2)[1])


def test_card_names_the_base_only_with_hub_ids_and_always_a_license(zoo, hub_run):
    meta = front_matter(hub_run)
    assert meta["base_model"] == ["org/base-model"]
    assert meta["tokenizer_source"] == [str(zoo.bl_untied)]  # the donor, not a base
    assert meta["license"] == "other"  # the tiny inputs declare none
    card = (hub_run / "README.md").read_text()
    assert "the inputs declare none" in card
    assert f"Local paths in `base_model` / `tokenizer_source` (`{zoo.bl_untied}`)" in card


def test_transplant_hub_id_option(zoo, tmp_path):
    out = tmp_path / "out"
    res = invoke(
        "transplant",
        str(zoo.sp_untied),
        str(zoo.bl_untied),
        str(out),
        "-m",
        "mean",
        "-q",
        "--hub-id",
        "base=org/b",
        "--hub-id",
        "donor=org/d",
        env={"MERGEKIT_TOKENPLUG_HUB_IDS": ""},
    )
    assert res.exit_code == 0, res.output
    meta = front_matter(out)
    assert (meta["base_model"], meta["tokenizer_source"]) == (["org/b"], ["org/d"])
    assert "Local paths" not in (out / "README.md").read_text()
    bad = invoke(
        "transplant",
        str(zoo.sp_untied),
        str(zoo.bl_untied),
        str(tmp_path / "x"),
        "--hub-id",
        "nothing",
    )
    assert bad.exit_code != 0 and "--hub-id" in bad.output


def test_verify_after_a_card_edit_exits_0_with_a_note(hub_run, tmp_path):
    out = shutil.copytree(hub_run, tmp_path / "out")
    card = out / "README.md"
    card.write_text(card.read_text().replace("org/base-model", "org/renamed"))
    res = invoke("verify", str(out))
    assert res.exit_code == 0, res.output
    assert "note: changed: README.md" in res.output
    assert "OK:" in res.output
    with open(out / "tokenizer.json", "a") as fh:  # the tokenizer still counts
        fh.write(" ")
    res = invoke("verify", str(out))
    assert res.exit_code == 1 and "changed: tokenizer.json" in res.output


# ------------------------------------------------------------------ k before any weight


def test_oversized_k_is_refused_before_any_weight_is_read(zoo, tmp_path):
    base = shutil.copytree(zoo.sp_untied, tmp_path / "base")
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])  # unreadable: any weight read would fail
    out = tmp_path / "out"
    start = time.monotonic()
    res = invoke(
        "transplant", str(base), str(zoo.bl_untied), str(out), "-m", "omp", "--k", "100000"
    )
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: tokenizer.approximation.k: must be <= "
    ), res.output
    assert "shared tokens" in lines[0]
    assert not out.exists()
    assert time.monotonic() - start < 60


def test_json_output_of_verify_is_unchanged_for_clean_outputs(hub_run):
    res = invoke("verify", str(hub_run))
    recorded = json.loads((hub_run / "tokenplug_manifest.json").read_text())["outputs"]
    assert res.exit_code == 0 and res.output.strip() == f"OK: {len(recorded)} files match"


# ------------------------------------------------------------------ GGUF staging


def test_gguf_staging_moves_bos_to_add_bos_token(bos_base, plain_donor_tokenizer, tmp_path):  # noqa: F811
    """The converter's view: no BOS in the post-processor, ``add_bos_token: true``, every
    other file a link to OUT; OUT itself is untouched."""
    from transformers import AutoTokenizer

    from mergekit_tokenplug.output.gguf import stage_for_converter

    out = (
        tmp_path / "out"
    )  # the base adds BOS, the donor's tokenizer does not: BOS follows the base
    transplant(str(bos_base), str(plain_donor_tokenizer), str(out), "mean", quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    tok = AutoTokenizer.from_pretrained(str(out))
    plain = tok("hello world", add_special_tokens=False)["input_ids"]
    assert tok("hello world")["input_ids"] == [tok.bos_token_id, *plain]
    stage = tmp_path / "stage"
    stage.mkdir()
    assert stage_for_converter(out, stage) is True
    staged = AutoTokenizer.from_pretrained(str(stage))
    assert staged("hello world")["input_ids"] == plain
    assert json.loads((stage / "tokenizer_config.json").read_text())["add_bos_token"] is True
    assert (stage / "model.safetensors").resolve() == (out / "model.safetensors").resolve()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert "mergekit-tokenplug gguf" in (out / "README.md").read_text()


def test_gguf_command_names_a_missing_converter(zoo, hub_run, tmp_path):
    res = invoke(
        "gguf", str(hub_run), str(tmp_path / "m.gguf"), "--converter", str(tmp_path / "no.py")
    )
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "convert_hf_to_gguf.py" in lines[0] and "no.py" in lines[0]
    assert not (tmp_path / "m.gguf").exists()


def test_assets_command_is_in_the_package(tmp_path):
    """The recipes' demo assets come from the installed package, not from bench/."""
    res = invoke("assets", "--only", "nope")
    assert res.exit_code == 1 and "unknown asset 'nope'" in res.output
    proc = subprocess.run(
        [sys.executable, "-c", "import assets, mergekit_tokenplug.assets as a; print(assets is a)"],
        cwd=REPO / "bench",
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip() == "True", proc.stderr


# ------------------------------------------------------------------ progress bars


def test_bars_name_models_not_paths_and_graph_bar_has_no_eta(zoo, tmp_path):
    """In a log (stderr not a terminal) with a bar line per redraw: OMP's bar names the models
    by directory name, and mergekit's graph bar shows elapsed time without an ETA."""
    out = tmp_path / "out"
    cli = Path(sys.executable).parent / "mergekit-tokenplug"
    proc = subprocess.run(
        [
            str(cli),
            "transplant",
            str(zoo.sp_untied),
            str(zoo.bl_untied),
            str(out),
            "-m",
            "omp",
            "--k",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MERGEKIT_TOKENPLUG_PROGRESS_SECONDS": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    omp = [ln for ln in proc.stderr.splitlines() if ln.startswith("OMP ")]
    graph = [ln for ln in proc.stderr.splitlines() if ln.startswith("Executing graph")]
    assert omp and graph, proc.stderr[-2000:]
    assert all(str(tmp_path.parent) not in ln and "sp_untied" in ln for ln in omp), omp[:3]
    assert all("<" not in ln for ln in graph), graph[:3]


# ------------------------------------------------------------------ plan


def test_plan_gives_flops_and_time_for_subword_mean(zoo, tmp_path):
    from mergekit_tokenplug.recipes.plan import format_plan
    from mergekit_tokenplug.surgery import plan_transplant

    plan = plan_transplant(str(zoo.sp_untied), str(zoo.bl_untied), "subword_mean")
    assert plan["matmul_flops_per_s"] > 0
    for w in plan["weights"]:
        assert w["flops"] > 0 and w["seconds"] == pytest.approx(
            w["flops"] / plan["matmul_flops_per_s"], rel=1e-12
        )
    text = format_plan(plan)
    assert "unknown" not in text and "of estimation" in text and "GFLOP/s" in text


def test_unreachable_hub_id_names_the_input(zoo, tmp_path):
    cli = Path(sys.executable).parent / "mergekit-tokenplug"
    proc = subprocess.run(
        [
            str(cli),
            "transplant",
            "no-such-org/no-such-model",
            str(zoo.bl_untied),
            str(tmp_path / "out"),
            "-m",
            "mean",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith("Error: no-such-org/no-such-model: not a local directory")
    assert not (tmp_path / "out").exists()


def test_mergekit_padding_warning_is_explained_not_shouted(zoo, tmp_path):
    """A token the recipe adds lies past the model's rows: mergekit's ``(padding?)`` warning
    becomes an INFO line that says the plugin estimates the row."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "passthrough",
                "parameters": {"requires": {"mergekit-tokenplug": ">=0.1"}},
                "models": [{"model": str(zoo.bl_untied)}],
                "tokenizer": {
                    "source": "base",
                    "tokens": {"kubectlzz": {}},
                    "approximation": {"method": "mean"},
                },
            }
        )
    )
    cmd = [str(Path(sys.executable).parent / "mergekit-yaml"), str(recipe)]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "out")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "padding?" not in proc.stderr and "kubectlzz" not in proc.stderr
    proc = subprocess.run(
        [*cmd, str(tmp_path / "out2"), "-v"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'kubectlzz' has index" in proc.stderr and "estimates its row" in proc.stderr
