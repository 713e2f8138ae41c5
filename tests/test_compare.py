"""``mergekit-tokenplug compare`` on tiny real models: JSON shape, categories, determinism,
skipped methods, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.evaluate.compare import (
    CATEGORIES,
    draw_matching,
    prepare_holdout,
    token_category,
)

FAST = "omp,omp_map,mean,subword_mean"


def run_compare(*args: str):
    return CliRunner().invoke(main, ["compare", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def report(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "r.json"
    res = run_compare(
        str(zoo.bl_big),
        str(zoo.sp_tied),
        "--methods",
        FAST + ",cw2v",
        "--hold-out",
        "0.2",
        "--seed",
        "3",
        "--json",
        str(out),
        "-q",
    )
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def test_json_shape(report):
    data, _ = report
    assert data["seed"] == 3 and data["hidden"] > 0 and data["anchors"] > 0
    assert set(data["methods"]) == {"omp", "omp_map", "mean", "subword_mean"}
    for m in data["methods"].values():
        assert {"cos", "rel_l2", "seconds", "categories"} <= set(m)
        assert set(m["categories"]) <= set(CATEGORIES)
        assert sum(c["n"] for c in m["categories"].values()) == data["hidden"]
        for c in m["categories"].values():
            assert {"n", "cos", "rel_l2"} == set(c)


def test_a_donor_aware_method_beats_the_mean_on_related_spaces(zoo, tmp_path):
    """On a pair whose spaces are related (as real models' are), OMP recovers hidden rows
    far better than the one mean row; on unrelated random spaces nothing can."""
    out = tmp_path / "r.json"
    args = [str(zoo.bl_big), str(zoo.bl_related), "--methods", "omp,mean", "--hold-out", "0.2"]
    res = run_compare(*args, "--seed", "3", "--json", str(out), "-q")
    assert res.exit_code == 0, res.output
    methods = json.loads(out.read_text())["methods"]
    assert methods["omp"]["cos"] > 0.9 > 0.5 > methods["mean"]["cos"]


def test_unrunnable_methods_are_skipped_with_a_note(report):
    data, output = report
    assert "corpus" in data["skipped"]["cw2v"]
    assert "skipped cw2v" in output


def test_hidden_set_follows_the_missing_mix(zoo):
    ho = prepare_holdout(str(zoo.bl_big), str(zoo.sp_tied), 0.2, seed=3)
    total = sum(ho.missing_mix.values())
    assert total > 0
    got = {c: ho.categories.count(c) for c in CATEGORIES}
    n = ho.info["requested"]
    for c in CATEGORIES:  # the quota (largest remainder), or all the pool holds
        want = n * ho.missing_mix[c] / total
        assert np.floor(want) - 1 <= got[c] <= np.ceil(want) or got[c] < want
        if ho.missing_mix[c] == 0:
            assert got[c] == 0
    # hidden rows are not in the matrix the methods see, nor among the anchors
    full_rows = ho.base.shape[0] + len(ho.hidden_base)
    assert full_rows == next(iter(ho.plan.models.values())).rows
    assert len(ho.hidden_base) > 0
    assert not np.isin(ho.hidden_out, ho.anchor_out).any()
    assert (ho.out_to_base[ho.hidden_out] == -1).all()


def test_same_seed_same_report_other_seed_other_draw(zoo, tmp_path):
    outs = []
    for i, seed in enumerate(("5", "5", "6")):
        path = tmp_path / f"{i}.json"
        res = run_compare(
            str(zoo.bl_big),
            str(zoo.sp_tied),
            "--methods",
            "omp,mean",
            "--seed",
            seed,
            "--hold-out",
            "0.2",
            "--json",
            str(path),
            "-q",
        )
        assert res.exit_code == 0, res.output
        data = json.loads(path.read_text())
        for m in data["methods"].values():
            m.pop("seconds")
        outs.append(data)
    assert outs[0] == outs[1]
    assert outs[0]["methods"] != outs[2]["methods"]


def test_draw_matching_quota():
    rng = np.random.default_rng(0)
    pool = ["word-start"] * 50 + ["multi-byte"] * 5 + ["digits"] * 20
    pos = draw_matching(pool, {"multi-byte": 0.5, "digits": 0.5}, 10, rng)
    picked = [pool[i] for i in pos]
    assert picked.count("multi-byte") == 5 and picked.count("digits") == 5
    assert token_category(b" hello") == "word-start"
    assert token_category(b"ing") == "continuation"
    assert token_category(b"\xe6") == "multi-byte"
    assert token_category(b" 42") == "digits"
    assert token_category(b"),") == "punctuation"
    assert token_category(b" internationally") == "long"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--hold-out", "1.5"], "--hold-out"),
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--methods", ","], "--methods"),
        (["--text", "/nonexistent.txt"], "--text"),
    ],
)
def test_bad_input_is_one_line(zoo, args, needle):
    res = CliRunner().invoke(main, ["compare", str(zoo.bl_big), str(zoo.sp_tied), "-q", *args])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output


def test_missing_base_is_one_line(zoo, tmp_path):
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "none"), str(zoo.sp_tied), "-q"])
    assert res.exit_code == 1
    assert "does not exist" in res.output and len(res.output.strip().splitlines()) == 1


def test_plot_is_written(zoo, tmp_path):
    png = tmp_path / "c.png"
    res = run_compare(
        str(zoo.bl_big), str(zoo.sp_tied), "--methods", "omp,mean", "--plot", str(png), "-q"
    )
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_transplants_with_each_method_and_reports_bpb(zoo, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    out = tmp_path / "r.json"
    res = run_compare(
        str(zoo.bl_big),
        str(zoo.sp_tied),
        "--methods",
        "omp,mean",
        "--text",
        str(text),
        "--hold-out",
        "0.2",
        "--json",
        str(out),
        "-q",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    for name in ("omp", "mean"):
        (value,) = data["methods"][name]["bpb"].values()
        assert 0 < value < 64
    assert list(data["reference_bpb"]) == list(data["methods"]["omp"]["bpb"])
    assert data["methods"]["omp"]["bpb"] != data["methods"]["mean"]["bpb"]
    assert "bpb t.txt" in res.output
    best = min(("omp", "mean"), key=lambda n: data["methods"][n]["bpb"][str(text)])
    assert f"best by bits per byte (mean over 1 text(s)): {best} (" in res.output
    assert "leave-out scores are a proxy" in res.output


def test_without_text_the_leader_is_named_as_a_proxy(report, zoo):
    from mergekit_tokenplug.evaluate.compare import plot_title

    data, output = report
    top = max(data["methods"], key=lambda n: data["methods"][n]["cos"])
    assert f"leave-out leader: {top}; leave-out scores are a proxy" in output
    assert "pass --text FILE" in output
    assert (data["base"], data["donor"]) == (str(zoo.bl_big), str(zoo.sp_tied))
    title = plot_title(data)
    assert title.startswith(f"{zoo.bl_big.name} with {zoo.sp_tied.name}'s tokenizer\n")
