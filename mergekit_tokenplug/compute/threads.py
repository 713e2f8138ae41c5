"""CPU threads for fine-grained kernels on a machine other processes are also using.

A kernel made of many short parallel operations (OMP's chunked steps: tens of thousands of
OpenMP regions per call) pays a barrier per operation. When another process holds one of the
cores, every barrier waits for a descheduled thread, and two threads run several times slower
than one (measured in bench/RESULTS.md: 249 s with 2 threads, 56 s with 1, on 2 cores shared
with two busy processes). So such a kernel uses only the cores that no other process is
running on right now. Results do not depend on the thread count (no reduction is split across
threads), so this changes speed only, never bytes.

Linux only (it reads ``/proc``); elsewhere, and with ``MERGEKIT_TOKENPLUG_ADAPT_THREADS=0``,
the thread count is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from mergekit_tokenplug import settings

LOG = logging.getLogger(__name__)

SAMPLES = 7
SAMPLE_GAP_S = 0.004


def _running_threads_of_this_process() -> int:
    running = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            # The state follows the parenthesised command name, which may contain spaces.
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        running += state == "R"
    return running


def busy_cores_elsewhere() -> int | None:
    """Threads of other processes running now (median of a few samples over ~30 ms), or None
    where this cannot be read."""
    if not settings.adapt_threads():
        return None
    try:
        counts = []
        for i in range(SAMPLES):
            if i:
                time.sleep(SAMPLE_GAP_S)
            # /proc/loadavg's fourth field: "runnable scheduling entities / all entities".
            system = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            counts.append(system - _running_threads_of_this_process())
    except (OSError, ValueError, IndexError):
        return None
    return max(0, int(statistics.median(counts)))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def threads_for_fine_grained_kernel(label: str = "kernel") -> Iterator[int]:
    """Within the block, torch uses at most the cores that other processes leave free (at
    least one); yields the thread count in use. The previous setting is restored after."""
    before = torch.get_num_threads()
    busy = busy_cores_elsewhere() if before > 1 else None
    cores = available_cores()
    use = max(1, min(before, cores - busy)) if busy else before
    if use != before:
        LOG.info(
            "%s: %d other running thread(s) share this machine's %d cores: using %d of %d "
            "threads (MERGEKIT_TOKENPLUG_ADAPT_THREADS=0 keeps %d)",
            label, busy, cores, use, before, before,
        )  # fmt: skip
        torch.set_num_threads(use)
    try:
        yield use
    finally:
        if use != before:
            torch.set_num_threads(before)
