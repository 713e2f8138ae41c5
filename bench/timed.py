"""Run a command in a fresh process and measure it: exit code, wall seconds, peak RSS.

The child's own resource usage (``os.wait4``) gives its peak RSS exactly, whatever ran
before it; no GNU time needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def tool(name: str) -> str | None:
    """The console script next to this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def run_measured(
    cmd: list[str], log: Path | None = None, *, timeout_s: float | None = None
) -> tuple[int, float, float]:
    """(exit code, 124 on timeout; wall seconds; peak RSS MiB) of ``cmd`` run offline, its
    output written to ``log`` (or inherited when None)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    fh = open(log, "w") if log is not None else None  # noqa: SIM115 (closed below)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT if fh else None, env=env)
        timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        timed_out = bool(timer) and not timer.is_alive()
        if timer:
            timer.cancel()
    finally:
        if fh is not None:
            fh.close()
    return (124 if timed_out else proc.returncode), wall, usage.ru_maxrss / 1024
