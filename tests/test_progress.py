"""Progress bars: one line each on a terminal, a few plain lines in a log, none with --quiet."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tqdm.auto

from mergekit_tokenplug.compute.progress import PERIOD_ENV, bar_policy, bar_settings

BIN = Path(sys.executable).parent


def test_a_terminal_keeps_tqdm_as_it_is():
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            assert tty.isatty()
            assert bar_settings(quiet=False, stream=tty) == {}
            assert bar_settings(quiet=True, stream=tty) == {"disable": True}
    finally:
        os.close(master)


def test_a_log_gets_plain_periodic_lines(monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "0.05")
    log = io.StringIO()
    with bar_policy(quiet=False):
        for _ in tqdm.auto.tqdm(range(8), desc="outer", file=log):
            for _ in tqdm.auto.tqdm(range(3), desc="inner", leave=False, file=log):
                time.sleep(0.01)
    text = log.getvalue()
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert lines and all(line.strip() for line in lines)
    assert any(line.startswith("outer:") for line in lines)
    assert lines[-1].startswith("outer: 100%")


def test_a_slow_bar_prints_once_a_period_not_at_tqdms_pace(monkeypatch):
    """tqdm's monitor thread redraws a slow bar every ``maxinterval`` (10 s) unless told."""
    monkeypatch.setenv(PERIOD_ENV, "45")
    settings = bar_settings(quiet=False, stream=io.StringIO())
    assert settings["mininterval"] == settings["maxinterval"] == settings["delay"] == 45


def test_a_bar_shorter_than_the_period_prints_nothing(monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "60")
    log = io.StringIO()
    with bar_policy(quiet=False):
        for _ in tqdm.auto.tqdm(range(100), desc="quick", file=log):
            pass
    assert log.getvalue() == ""


def test_quiet_silences_bars_made_by_other_code():
    log = io.StringIO()
    with bar_policy(quiet=True):
        for _ in tqdm.auto.tqdm(range(5), desc="mergekit's own", file=log):
            pass
    assert log.getvalue() == ""


def test_the_policy_is_undone_after_the_run(monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "60")
    with bar_policy(quiet=True):
        pass
    log = io.StringIO()
    for _ in tqdm.auto.tqdm(range(3), desc="after", file=log, mininterval=0):
        pass
    assert "after" in log.getvalue()


def test_a_bad_period_is_refused_with_the_variable_named(monkeypatch):
    monkeypatch.setenv(PERIOD_ENV, "soon")
    with pytest.raises(ValueError, match=PERIOD_ENV):
        bar_settings(quiet=False, stream=io.StringIO())


def test_a_transplant_logged_to_a_file_has_no_redraws(zoo, tmp_path):
    """The whole command, mergekit's bars included, writes plain lines to a log."""
    env = {**os.environ, PERIOD_ENV: "0", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "mergekit-tokenplug"), "transplant", str(zoo.sp_untied)]
    cmd += [str(zoo.bl_untied), str(tmp_path / "out"), "--k", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    assert "%|" in proc.stderr  # bars were drawn, as lines
