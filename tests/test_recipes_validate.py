"""``recipes validate`` / ``recipes schema`` / ``plan`` / ``verify`` on the tiny model zoo.

Broken recipes live in ``tests/fixtures/broken_recipes/``: each names its expected key and
message fragments in ``# expect-*`` header comments and marks the offending line with
``# <-- error``; model paths are placeholders (``@zoo:NAME``, ``@tmp/...``) filled in here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from mergekit_tokenplug.recipes.cli import commands
from mergekit_tokenplug.recipes.jsonschema import recipe_json_schema
from mergekit_tokenplug.recipes.plan import plan_recipe
from mergekit_tokenplug.recipes.validate import Options, validate_text
from mergekit_tokenplug.surgery import (
    load_recipe,
    plan_transplant,
    run_recipe,
    transplant,
    transplant_recipe,
)

FIXTURES = Path(__file__).parent / "fixtures" / "broken_recipes"
REPO = Path(__file__).resolve().parents[1]
BROKEN = sorted(FIXTURES.glob("*.yaml"))
# The CLI as the lead wires it: the recipe commands attached to a click group.
CLI_SNIPPET = (
    "import click; from mergekit_tokenplug.recipes.cli import commands\n"
    "g = click.Group('mergekit-tokenplug')\n"
    "[g.add_command(c) for c in commands]\n"
    "g(prog_name='mergekit-tokenplug')\n"
)


@pytest.fixture(scope="module")
def cli() -> click.Group:
    group = click.Group("mergekit-tokenplug")
    for command in commands:
        group.add_command(command)
    return group


def invoke(cli: click.Group, *args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def workdir(zoo, tmp_path_factory) -> Path:
    """Helper inputs the fixtures point at through ``@tmp/``."""
    root = tmp_path_factory.mktemp("recipes")
    no_tok = shutil.copytree(zoo.sp_untied, root / "no_tokenizer")
    for f in no_tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    (root / "empty.txt").write_text("")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    return root


def fill_placeholders(text: str, zoo, workdir: Path) -> str:
    text = re.sub(r"@zoo:(\w+)", lambda m: str(getattr(zoo, m.group(1))), text)
    return text.replace("@tmp", str(workdir))


def headers(text: str, name: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"^# {name}:(.*)$", text, flags=re.M)]


def write_recipe(path: Path, recipe: dict | list[dict]) -> Path:
    docs = recipe if isinstance(recipe, list) else [recipe]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


# ------------------------------------------------------------------ broken recipes


def test_enough_broken_recipe_kinds():
    assert len(BROKEN) >= 12


@pytest.mark.parametrize("fixture", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_recipe(fixture, cli, zoo, workdir):
    """Exit 1 and exactly one problem line: ``FILE:LINE key: message``."""
    source = fixture.read_text()
    target = workdir / fixture.name
    target.write_text(fill_placeholders(source, zoo, workdir))
    key = headers(source, "expect-key")[0]
    fragments = headers(source, "expect-message")
    line = next(i for i, ln in enumerate(source.splitlines(), 1) if "# <-- error" in ln)
    env = dict(h.split("=", 1) for h in headers(source, "env"))
    if env:  # process-wide state (plugin activation): a fresh interpreter
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                CLI_SNIPPET,
                "recipes",
                "validate",
                "--inputs",
                "-q",
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        code, output = proc.returncode, proc.stdout
    else:
        res = invoke(cli, "recipes", "validate", "--inputs", "-q", str(target))
        code, output = res.exit_code, res.output
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    prefix = f"{target}:{line} " + (f"{key}: " if key else "")
    assert lines[0].startswith(prefix), (prefix, lines[0])
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_json_output_lists_problems(cli, zoo, workdir):
    src = (FIXTURES / "k_too_large.yaml").read_text()
    target = workdir / "json_k.yaml"
    target.write_text(fill_placeholders(src, zoo, workdir))
    res = invoke(cli, "recipes", "validate", "--inputs", "--json", str(target))
    assert res.exit_code == 1
    problems = json.loads(res.output)
    assert [(p["file"], p["key"], p["severity"]) for p in problems] == [
        (str(target), "tokenizer.approximation.k", "error")
    ]
    assert "shared tokens" in problems[0]["message"]


def test_dotted_tokenizer_key_is_one_problem():
    """An unknown tokenizer key holding a dot is reported once, under its own name."""
    text = "merge_method: passthrough\nmodels: [{model: m}]\ntokenizer:\n  source: base\n  a.b: 1\n"
    problems = validate_text(text, "r.yaml", Options(check_models=False)).problems
    assert [(p.line, p.key) for p in problems] == [(5, "tokenizer.a.b")]
    assert "unknown tokenizer key" in problems[0].message


def test_usage_errors_exit_2(cli, tmp_path):
    assert invoke(cli, "recipes", "validate").exit_code == 2
    assert invoke(cli, "recipes", "validate", str(tmp_path / "missing.yaml")).exit_code == 2
    assert invoke(cli, "recipes", "validate", str(tmp_path)).exit_code == 2  # no yaml inside
    assert invoke(cli, "recipes", "validate", "--bogus", str(tmp_path)).exit_code == 2
    assert invoke(cli, "plan").exit_code == 2


# ------------------------------------------------------------------ valid recipes


def valid_recipes(zoo, workdir: Path) -> dict[str, dict | list[dict]]:
    sp, bl, big = str(zoo.sp_untied), str(zoo.bl_untied), str(zoo.bl_big_padded)
    return {
        "omp": transplant_recipe(sp, bl, "omp", {"k": 8}),
        "mean_padded": transplant_recipe(str(zoo.sp_tied), big, "mean", pad_to_multiple_of=64),
        "union_two_models": {
            "merge_method": "linear",
            "base_model": sp,
            "models": [
                {"model": sp, "parameters": {"weight": 0.5}},
                {"model": bl, "parameters": {"weight": 0.5}},
            ],
            "tokenizer": {"source": "union", "approximation": {"method": "omp", "k": 4}},
        },
        "tool_token": {
            "merge_method": "passthrough",
            "models": [{"model": sp}],
            "tokenizer": {
                "source": bl,
                "approximation": {"method": "mean"},
                "tokens": {"<tool:calc>": {"source": {"kind": "tool", "name": "calculator"}}},
            },
        },
        "cw2v": transplant_recipe(sp, bl, "cw2v", {"corpus": [str(workdir / "*.txt")]}),
        "stock": {"merge_method": "passthrough", "models": [{"model": sp}], "dtype": "float32"},
        "multi": [
            {"name": "moved", **transplant_recipe(sp, bl, "omp", {"k": 4})},
            {
                "merge_method": "linear",
                "models": [
                    {"model": "moved", "parameters": {"weight": 0.5}},
                    {"model": bl, "parameters": {"weight": 0.5}},
                ],
                "tokenizer": {"source": bl, "approximation": {"method": "omp", "k": 4}},
            },
        ],
    }


MARKER = {"requires": {"mergekit-tokenplug": ">=0.1"}}


def with_marker(recipe: dict | list[dict]) -> dict | list[dict]:
    """The recipe with ``parameters.requires`` in every document that has tokenizer keys."""
    if isinstance(recipe, list):
        return [with_marker(d) for d in recipe]
    if "tokenizer" not in recipe:
        return recipe
    return {**recipe, "parameters": {**recipe.get("parameters", {}), **MARKER}}


def test_valid_recipes_pass(cli, zoo, workdir, tmp_path):
    paths = [
        str(write_recipe(tmp_path / f"{name}.yaml", with_marker(recipe)))
        for name, recipe in valid_recipes(zoo, workdir).items()
    ]
    res = invoke(cli, "recipes", "validate", "--inputs", *paths)
    assert res.exit_code == 0, res.output
    assert all(f"OK: {p}" in res.output for p in paths)
    res = invoke(cli, "recipes", "validate", "--inputs", "--json", *paths)
    problems = json.loads(res.output)
    assert all(p["severity"] == "warning" for p in problems), problems
    # the stage reference cannot be aligned before the stage exists: a warning, not an error;
    # the cw2v corpus does not show every token the transplant must estimate: warnings too
    corpus = [p for p in problems if p["key"] == "tokenizer.approximation.corpus"]
    assert corpus and all(p["file"].endswith("cw2v.yaml") for p in corpus), corpus
    assert [p["key"] for p in problems if p not in corpus] == ["tokenizer.approximation.k"]
    assert invoke(cli, "recipes", "validate", "--inputs", "-q", *paths).output == ""


def test_project_recipes_validate_without_models(cli, tmp_path, monkeypatch):
    """The shipped recipes validate from a fresh checkout (run elsewhere than the asset cache):
    exit 0; the inputs that are not here are notes, not errors."""
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    monkeypatch.chdir(tmp_path)
    res = invoke(cli, "recipes", "validate", *map(str, recipes))
    assert res.exit_code == 0, res.output
    assert "note: 'models/gemma3-270m'" in res.output
    assert f"0 error(s) in 0 of {len(recipes)} file(s)" in res.output
    assert invoke(cli, "recipes", "validate", "--inputs", "-q", str(recipes[0])).exit_code == 1


# ------------------------------------------------------------------ JSON Schema


def test_schema_accepts_good_and_rejects_bad(cli, zoo, workdir):
    res = invoke(cli, "recipes", "schema")
    assert res.exit_code == 0
    schema = json.loads(res.output)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema == recipe_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = valid_recipes(zoo, workdir)
    for name, recipe in good.items():
        for doc in recipe if isinstance(recipe, list) else [recipe]:
            assert not list(validator.iter_errors(doc)), name

    base = good["omp"]

    def broken(change) -> dict:
        doc = copy.deepcopy(base)
        change(doc)
        return doc

    bad = {
        "unknown method": broken(lambda d: d["tokenizer"]["approximation"].update(method="x")),
        "unknown param": broken(lambda d: d["tokenizer"]["approximation"].update(kk=3)),
        "k wrong type": broken(lambda d: d["tokenizer"]["approximation"].update(k="lots")),
        "k below 1": broken(lambda d: d["tokenizer"]["approximation"].update(k=0)),
        "cw2v no corpus": broken(lambda d: d["tokenizer"].update(approximation={"method": "cw2v"})),
        "top-level typo": broken(lambda d: d.update(modles=[])),
        "tokenizer typo": broken(lambda d: d["tokenizer"].update(aproximation={})),
        "tool no text": broken(
            lambda d: d["tokenizer"].update(tokens={"<t>": {"source": {"kind": "tool"}}})
        ),
        "pad wrong type": broken(lambda d: d["tokenizer"].update(pad_to_multiple_of="eight")),
    }
    for name, doc in bad.items():
        assert list(validator.iter_errors(doc)), name


# ------------------------------------------------------------------ plan vs. an actual run


@pytest.fixture(scope="module")
def omp_run(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("omp_run") / "out"
    summary = transplant(
        str(zoo.sp_untied), str(zoo.bl_untied), str(out), "omp", {"k": 4}, quiet=True
    )
    return out, summary


def assert_plan_matches_run(plan: dict, summary: dict) -> None:
    vocab = summary["vocabulary"]
    assert plan["output"] == {
        "tokens": vocab["output_tokens"],
        "rows": vocab["output_rows"],
        "tokenizer_source": plan["output"]["tokenizer_source"],
    }
    by_model = {m["model"]: m for m in plan["models"]}
    assert set(by_model) == set(vocab["per_model"])
    for name, counts in vocab["per_model"].items():
        for kind in ("exact", "canonical", "special", "holes"):
            assert by_model[name][kind] == counts[kind], (name, kind)
    assert {w["weight"] for w in plan["weights"]} == {r["weight"] for r in summary["matrices"]}
    assert len(summary["matrices"]) == len(plan["weights"]) * len(plan["models"])
    for record in summary["matrices"]:
        m = by_model[record["model"]]
        assert record["rows"] == plan["output"]["rows"]
        for kind in ("copied", "estimated", "padded", "by_method", "by_source"):
            assert m[kind] == record[kind], (record["weight"], kind)


def test_plan_cli_matches_run(cli, zoo, omp_run, tmp_path):
    _out, summary = omp_run
    recipe = write_recipe(
        tmp_path / "r.yaml",
        transplant_recipe(str(zoo.sp_untied), str(zoo.bl_untied), "omp", {"k": 4}),
    )
    res = invoke(cli, "plan", str(recipe), "--json")
    assert res.exit_code == 0, res.output
    (plan,) = json.loads(res.output)
    assert_plan_matches_run(plan, summary)
    assert plan["method"] == "omp" and plan["fallback"] == "mean" and plan["device"] == "cpu"
    # OMP cost: 2*k*T*N*d flops with N = the shared regular tokens, d = the donor's width
    (group,) = plan["models"][0]["groups"]
    d = 32  # hidden size of the zoo's models (models_factory.build_llama default)
    assert plan["weights"][0]["flops"] == pytest.approx(
        2 * 4 * group["count"] * group["anchors"] * d
    )
    assert plan["peak_bytes"] > 0
    text = invoke(cli, "plan", str(recipe), "--device", "cuda:0").output
    assert "copied" in text and "estimated" in text and "cuda:0" in text


def test_plan_transplant_matches_run_with_padding(zoo, tmp_path):
    base, donor = str(zoo.sp_tied), str(zoo.bl_big_padded)
    plan = plan_transplant(base, donor, "mean", {}, device="cpu")
    summary = transplant(base, donor, str(tmp_path / "out"), "mean", {}, quiet=True)
    assert plan["models"][0]["padded"] > 0  # the donor config has 40 rows past its tokenizer
    assert_plan_matches_run(plan, summary)
    assert plan["recipe"]["tokenizer"]["approximation"] == {"method": "mean"}


def test_plan_matches_union_merge(zoo, tmp_path):
    """Two models, each estimating the other's tokens from its space, a forced token, fallbacks."""
    sp, big = str(zoo.sp_untied), str(zoo.bl_big)
    recipe = {
        "merge_method": "linear",
        "base_model": sp,
        "models": [
            {"model": sp, "parameters": {"weight": 0.5}},
            {"model": big, "parameters": {"weight": 0.5}},
        ],
        "tokenizer": {
            "source": "union",
            "tokens": {"<|im_start|>": {"force": True}},
            "approximation": {"method": "omp", "k": 4},
        },
    }
    config = load_recipe(recipe, "union")
    plan = plan_recipe(config)
    summary = run_recipe(config, str(tmp_path / "out"), quiet=True)
    assert_plan_matches_run(plan, summary)
    by_model = {m["model"]: m for m in plan["models"]}
    assert by_model[big]["forced"] == 1
    assert by_model[sp]["by_source"][big] > 0 and by_model[big]["by_source"][sp] > 0
    assert all(m["by_method"]["mean"] > 0 for m in plan["models"])  # known in no other space


def test_plan_refuses_invalid_recipe(cli, zoo, workdir):
    src = (FIXTURES / "unknown_method.yaml").read_text()
    target = workdir / "plan_bad.yaml"
    target.write_text(fill_placeholders(src, zoo, workdir))
    res = invoke(cli, "plan", str(target))
    assert res.exit_code == 1 and "tokenizer.approximation.method" in res.output


# ------------------------------------------------------------------ verify


def test_verify_ok_then_detects_changes(cli, omp_run, tmp_path):
    out = shutil.copytree(omp_run[0], tmp_path / "out")
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "tokenplug_manifest.json"]
    res = invoke(cli, "verify", str(out))
    assert res.exit_code == 0 and res.output.strip() == f"OK: {len(files)} files match"

    with open(out / "config.json", "a") as fh:
        fh.write(" ")
    (out / "README.md").unlink()
    (out / "extra.txt").write_text("x")
    res = invoke(cli, "verify", str(out))
    assert res.exit_code == 1
    assert "changed: config.json" in res.output
    assert "missing: README.md" in res.output
    assert "unexpected: extra.txt" in res.output


def test_verify_without_manifest(cli, tmp_path):
    res = invoke(cli, "verify", str(tmp_path))
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("Error:") and "tokenplug_manifest.json" in lines[0]
    )
