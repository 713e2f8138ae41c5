"""What ``heal`` tells its user: the time/memory estimate before the long parts, progress bars
for loading and held-out scoring, a training bar whose loss says which objective it is and
that it is the raw last step, and silence under ``--quiet``."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from test_heal import corpus

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.compute.progress import PERIOD_ENV
from mergekit_tokenplug.heal.distill import DistillWeights
from mergekit_tokenplug.heal.estimate import Plan, Probe, TeacherPass, estimate, estimate_line
from mergekit_tokenplug.heal.labels import loss_postfix, objective_label
from mergekit_tokenplug.surgery import transplant
from mergekit_tokenplug.tooltokens.data import generate_arithmetic_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--steps", "3", "--seq-len", "32", "--batch-size", "2", "--lr", "1e-2"]
GB = 10**9


def plan(**changes) -> Plan:
    settings = dict(
        steps=60,
        batch_size=2,
        processes=1,
        seq_len=512,
        width=513,
        examples=False,
        heldout_tokens=10_000,
        row_floats=1_000_000,
        load_s=5.0,
    )
    return Plan(**{**settings, **changes})


PROBE = Probe(
    forward_s=1.0, backward_s=2.0, tokens=1000, windows=1, peak_bytes=2 * GB, peak_kind="RSS"
)


def test_the_estimate_scales_the_probe_step_to_the_run():
    est = estimate(plan(), PROBE)
    assert est.step_s == pytest.approx(6.0)  # 2 windows a step at 3 s each
    assert est.train_s == pytest.approx(360.0)
    assert est.heldout_s == pytest.approx(20.0)  # 10k tokens at 1 ms, before and after
    assert est.teacher_s == 0 and est.total_s == pytest.approx(380.0)
    assert est.peak_bytes == 2 * GB + 6 * 4 * 1_000_000  # six float32 copies of the rows
    line = estimate_line(plan(), PROBE, est)
    assert line.startswith("heal: 60 steps x 2 windows of 512 tokens, 6.0 s a step")
    assert "-> about 6.0 min" in line and "held-out scoring before and after about 20 s" in line
    assert "total about 6.3 min" in line and "peak memory about 2.0 GB (RSS measured" in line
    assert "teacher" not in line


def test_two_processes_halve_the_step_and_the_teacher_pass():
    teacher = TeacherPass(windows=120, missing=120, cost=2.0, weight_bytes=3 * GB)
    one = estimate(plan(teacher=teacher), PROBE)
    two = estimate(plan(teacher=teacher, processes=2), PROBE)
    assert two.step_s == pytest.approx(one.step_s / 2)
    # teacher: load (5 s) + 120 windows x 513 tokens x 1 ms x cost 2
    assert one.teacher_s == pytest.approx(5.0 + 120 * 513 * 1e-3 * 2)
    assert two.teacher_s == pytest.approx(5.0 + 60 * 513 * 1e-3 * 2)
    assert one.peak_bytes == 5 * GB  # the teacher's weights outweigh the rows' state
    line = estimate_line(plan(teacher=teacher), PROBE, one)
    assert "teacher pass over 120 of 120 windows about 2.1 min" in line


def test_a_filled_teacher_cache_costs_no_time_and_no_teacher_weights():
    teacher = TeacherPass(windows=120, missing=0, cost=2.0, weight_bytes=3 * GB, target_bytes=7)
    est = estimate(plan(teacher=teacher), PROBE)
    assert est.teacher_s == 0 and est.peak_bytes == 2 * GB + 24_000_000 + 7
    assert "teacher cache holds all 120 windows" in estimate_line(plan(teacher=teacher), PROBE, est)


def test_examples_are_counted_by_their_padded_width():
    line = estimate_line(plan(examples=True, width=77), PROBE, estimate(plan(), PROBE))
    assert "60 steps x 2 examples of 77 tokens (padded)" in line


def test_the_bar_label_names_the_objective_and_marks_the_mean():
    assert objective_label(None) == "lm"
    assert objective_label(DistillWeights(1.0, 1.0, 1.0, 100.0, -1)) == "lm+chunk+hidden"
    assert objective_label(DistillWeights(0.0, 2.0, 0.5, 100.0, -1)) == "2*chunk+0.5*hidden"
    losses = [float(i) for i in range(1, 13)]
    assert loss_postfix("lm", losses) == {"lm": "12.0000", "avg10": "7.5000"}  # mean of 3..12
    assert loss_postfix("lm", [2.0]) == {"lm": "2.0000", "avg10": "2.0000"}


def _heal(args: list[str]) -> tuple[str, dict]:
    res = CliRunner().invoke(main, ["heal", *args])
    assert res.exit_code == 0, res.output
    return res.stderr, res


def _last_bar_loss(stderr: str, label: str) -> float:
    values = re.findall(rf"{re.escape(label)}=([0-9.]+), avg10=", stderr)
    assert values, stderr
    return float(values[-1])


def test_the_cli_prints_the_estimate_bars_and_a_raw_labelled_loss(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "0")  # every bar draws its lines into the captured log
    summary = tmp_path / "summary.json"
    args = [str(zoo.sp_untied), str(tmp_path / "out"), "--corpus", *corpus(zoo), *FAST]
    stderr, _ = _heal([*args, "--json", str(summary)])
    estimate_lines = re.findall(r"^heal: \d+ steps .*$", stderr, flags=re.M)
    assert len(estimate_lines) == 1, stderr
    assert "3 steps x 2 windows of 32 tokens" in estimate_lines[0]
    assert "measured on a probe step" in estimate_lines[0]
    assert "peak memory about" in estimate_lines[0] and "teacher" not in estimate_lines[0]
    assert stderr.index("heal: 3 steps") < stderr.index("held-out before")
    for bar in ("load sp_untied", "Loading weights", "held-out before", "held-out after"):
        assert bar in stderr
    assert "loss=" not in stderr  # the unlabelled smoothed loss is gone
    # the bar's last `lm=` is the raw last step, as the summary records it
    train_loss = json.loads(summary.read_text())["train_loss"]
    assert _last_bar_loss(stderr, "lm") == pytest.approx(train_loss[-1], abs=1e-4)

    args[1] = str(tmp_path / "quiet")
    quiet, _ = _heal([*args, "-q"])
    assert quiet == ""  # no estimate, no bar (transformers' included)
    # the probe step leaves no trace: the same weights with and without it
    weights = "model.safetensors"
    assert (tmp_path / "out" / weights).read_bytes() == (tmp_path / "quiet" / weights).read_bytes()


def test_a_teacher_run_says_what_its_pass_costs_and_labels_every_term(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "0")
    model = tmp_path / "transplanted"  # its manifest names sp_tied, the default teacher
    transplant(str(zoo.sp_tied), str(zoo.bl_untied), str(model), "mean", {}, quiet=True)
    args = [str(model), str(tmp_path / "out"), "--corpus", *corpus(zoo), *FAST, "--overwrite"]
    first, _ = _heal(args)
    line = re.search(r"^heal: \d+ steps .*$", first, flags=re.M)[0]
    windows = re.search(r"teacher pass over (\d+) of (\d+) windows about", line)
    assert windows and windows[1] == windows[2], line
    assert "plus the trained rows' Adam state and the teacher" in line
    assert _last_bar_loss(first, "lm+piece") > 0  # the default objective
    again, _ = _heal(args)  # the cache beside OUT now holds every window
    assert f"teacher cache holds all {windows[2]} windows" in again


def test_prompt_completion_rows_are_estimated_by_their_padded_width(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "0")
    data = tmp_path / "data.jsonl"
    rows = generate_arithmetic_dataset(12, seed=1)
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = [str(zoo.sp_untied), str(tmp_path / "out"), "--corpus", str(data), *FAST]
    stderr, _ = _heal(args)
    line = re.search(r"^heal: 3 steps x 2 examples of \d+ tokens \(padded\), .*$", stderr, re.M)
    assert line and "held-out scoring before and after" in line[0], stderr
    assert "held-out before" in stderr and "held-out after" in stderr
    assert _last_bar_loss(stderr, "lm") > 0
