"""Thread choice for fine-grained kernels when other processes hold cores."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from mergekit_tokenplug.compute.threads import (
    available_cores,
    busy_cores_elsewhere,
    threads_for_fine_grained_kernel,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture
def two_busy_processes():
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    time.sleep(0.5)  # both started and spinning
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_busy_processes_are_seen_and_leave_their_cores(two_busy_processes, monkeypatch):
    monkeypatch.delenv("MERGEKIT_TOKENPLUG_ADAPT_THREADS", raising=False)
    assert busy_cores_elsewhere() >= 2
    before = torch.get_num_threads()
    cores = available_cores()
    torch.set_num_threads(max(2, cores))
    try:
        with threads_for_fine_grained_kernel("test") as used:
            assert used == torch.get_num_threads()
            assert 1 <= used <= max(1, cores - 2)
        assert torch.get_num_threads() == max(2, cores)  # restored
    finally:
        torch.set_num_threads(before)


def test_switch_off_keeps_the_setting(two_busy_processes, monkeypatch):
    monkeypatch.setenv("MERGEKIT_TOKENPLUG_ADAPT_THREADS", "0")
    assert busy_cores_elsewhere() is None
    before = torch.get_num_threads()
    with threads_for_fine_grained_kernel("test") as used:
        assert used == before == torch.get_num_threads()
