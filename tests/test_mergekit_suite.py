"""mergekit's own 0.1.5 test suite passes with the plugin active wherever it passes without it.

The slow test drives ``tests/mergekit_suite/run_suite.py`` end to end (downloads the sdist
once, runs the suite twice). The fast tests check the runner's verdict logic on a real pytest
run of a tiny suite whose outcome depends on ``MERGEKIT_TOKENPLUG_DISABLE``, so a regression
the runner should catch is known to be caught.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent / "mergekit_suite" / "run_suite.py"


def _load_runner():
    spec = importlib.util.spec_from_file_location("mergekit_suite_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


run_suite = _load_runner()

TINY_SUITE = textwrap.dedent(
    """
    import os
    import pytest

    ACTIVE = os.environ.get("MERGEKIT_TOKENPLUG_DISABLE") != "1"

    def test_always_passes():
        assert True

    def test_breaks_only_with_plugin():
        assert not ACTIVE, "plugin changed behaviour"

    def test_breaks_only_without_plugin():
        assert ACTIVE

    @pytest.mark.skip(reason="never runs")
    def test_skipped():
        pass

    class TestGroup:
        @pytest.mark.parametrize("x", [1, 2])
        def test_param(self, x):
            assert x
    """
)


def _run_tiny(tmp_path: Path, mode: str) -> run_suite.SuiteResult:
    """Run the tiny suite the way the runner runs mergekit's, and parse its report."""
    (tmp_path / "tests").mkdir(exist_ok=True)
    (tmp_path / "tests" / "test_tiny.py").write_text(TINY_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    xml = tmp_path / f"{mode}.xml"
    env = run_suite.child_env(mode, tmp_path)
    cmd = [sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini")]
    cmd += ["--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-q", f"--junitxml={xml}"]
    proc = subprocess.run([*cmd, "tests"], cwd=tmp_path, env=env, capture_output=True, text=True)
    result = run_suite.SuiteResult(mode, proc.returncode, 0.0)
    result.outcomes, result.messages = run_suite.parse_junit(xml)
    return result


def test_junit_parsing_counts_each_outcome(tmp_path):
    active = _run_tiny(tmp_path, "active")
    assert active.returncode == 1
    assert active.counts() == {"passed": 4, "failed": 1, "skipped": 1}
    (failed,) = active.ids("failed")
    assert failed.endswith("::test_breaks_only_with_plugin")
    assert "plugin changed behaviour" in active.messages[failed]
    assert {tid.rsplit("::", 1)[1] for tid in active.ids("passed")} >= {
        "test_param[1]",
        "test_param[2]",
    }


def test_compare_flags_only_active_side_regressions(tmp_path):
    active = _run_tiny(tmp_path, "active")
    disabled = _run_tiny(tmp_path, "disabled")
    regressions = run_suite.compare(active, disabled)
    assert len(regressions) == 1
    assert "test_breaks_only_with_plugin" in regressions[0]
    assert "passed under disabled" in regressions[0]
    # a failure that only the baseline has is not the plugin's fault
    assert not any("test_breaks_only_without_plugin" in r for r in regressions)
    assert run_suite.compare(disabled, disabled) == []


def test_compare_flags_tests_missing_or_skipped_with_plugin():
    base = run_suite.SuiteResult("disabled", 0, 0.0, {"t::a": "passed", "t::b": "passed"})
    active = run_suite.SuiteResult("active", 0, 0.0, {"t::a": "skipped"})
    regressions = run_suite.compare(active, base)
    assert len(regressions) == 2
    assert any(r.startswith("t::a: skipped") for r in regressions)
    assert any(r.startswith("t::b: not run") for r in regressions)
    assert run_suite.broken(run_suite.SuiteResult("active", 2, 0.0, {"t::a": "passed"}))
    assert run_suite.broken(run_suite.SuiteResult("active", 0, 0.0, {}))
    ok = dict(run_suite.EXPECTED_STATE["active"])
    assert run_suite.broken(run_suite.SuiteResult("active", 0, 0.0, {"t::a": "passed"})), "no state"
    assert (
        run_suite.broken(run_suite.SuiteResult("active", 1, 0.0, {"t::a": "passed"}, state=ok))
        is None
    )
    off = {**ok, "plugin_active": False}
    assert "plugin state" in run_suite.broken(
        run_suite.SuiteResult("active", 0, 0.0, {"t::a": "passed"}, state=off)
    )


@pytest.mark.slow
def test_mergekit_own_suite_unchanged_by_plugin(tmp_path):
    summary = tmp_path / "summary.json"
    cmd = [
        sys.executable,
        str(RUNNER),
        "--workdir",
        str(tmp_path / "work"),
        "--summary",
        str(summary),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode == run_suite.EXIT_NO_SDIST:
        pytest.skip(
            f"mergekit {run_suite.MERGEKIT_VERSION} sdist cannot be downloaded from PyPI: {proc.stderr.strip()[-300:]}"
        )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert summary.is_file()
