"""Batch sizing from free memory, with out-of-memory back-off.

Heavy kernels (OMP, neighbour search) process their rows in batches whose size is a memory
trade-off: larger batches mean larger matmuls (faster), smaller ones fit. The starting size
comes from the memory actually free (``torch.cuda.mem_get_info`` on CUDA; on CPU the
available RAM, capped at :func:`mergekit_tokenplug.settings.cpu_budget_bytes` so a kernel never claims the whole machine).
If a batch still runs out of memory, :func:`run_batched` halves the batch size through
``accelerate.utils.find_executable_batch_size`` and continues from the first unfinished row,
so work already done is kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate.utils import find_executable_batch_size
from accelerate.utils.memory import should_reduce_batch_size

from mergekit_tokenplug import settings

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# CPU working-memory budget: half the available RAM, but never more than this. 1 GiB already
# gives batches of hundreds of targets (full-speed matmuls on CPU) and keeps a transplant's
# peak RSS near the size of the matrices involved; MERGEKIT_TOKENPLUG_CPU_BUDGET_MB overrides.
CPU_BUDGET_FRACTION = 0.5
CUDA_BUDGET_FRACTION = 0.8  # leave room for the allocator's fragmentation and cuBLAS workspaces
_FALLBACK_CPU_BYTES = 1024**3  # when the OS does not tell us what is available


def available_cpu_memory() -> int:
    """Bytes of RAM available now (``os.sysconf``), or a conservative guess."""
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and page_size > 0:
            return int(pages) * int(page_size)
    except (ValueError, OSError, AttributeError):
        pass
    return _FALLBACK_CPU_BYTES


def working_memory_budget(device: torch.device | str, *, free_now: bool = True) -> int:
    """Bytes a kernel may use for its working tensors on ``device``: bounded by the memory free
    at this moment, or (``free_now=False``) what it gets when nothing else holds memory. Batch
    shapes can change a kernel's last bits, so a run is reproducible only while both budgets
    give the same plan."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int((free if free_now else total) * CUDA_BUDGET_FRACTION)
    cap = settings.cpu_budget_bytes()
    return int(min(available_cpu_memory() * CPU_BUDGET_FRACTION, cap)) if free_now else cap


def suggest_batch_size(
    per_item_bytes: int,
    device: torch.device | str,
    *,
    fixed_bytes: int = 0,
    maximum: int | None = None,
    budget_bytes: int | None = None,
) -> int:
    """Largest batch (at least 1) whose working set (``fixed_bytes + n * per_item_bytes``) fits
    the budget."""
    budget = working_memory_budget(device) if budget_bytes is None else int(budget_bytes)
    n = max(1, (budget - int(fixed_bytes)) // max(1, int(per_item_bytes)))
    return n if maximum is None else min(n, max(1, int(maximum)))


def run_batched(fn: Callable[[int, int], T], n_items: int, start_batch_size: int) -> list[T]:
    """Apply ``fn(start, stop)`` to consecutive batches of ``range(n_items)``.

    On an out-of-memory error the batch size is halved and the failed batch is retried; the
    results of finished batches are kept. Raises ``RuntimeError`` if even a batch of one does
    not fit.
    """
    results: list[T] = []
    done = 0
    size = max(1, int(start_batch_size))

    def halve() -> int:
        nonlocal size
        size //= 2
        LOG.warning(
            "out of memory: retrying with batch size %d (the last bits of the result can "
            "differ from a run with more free memory)",
            size,
        )
        return size

    def body(batch_size: int) -> None:
        nonlocal done
        while done < n_items:
            stop = min(n_items, done + batch_size)
            try:
                out = fn(done, stop)
            except Exception as exc:
                # accelerate only recognises some messages; normalise torch's OOM to one it knows.
                if isinstance(exc, torch.OutOfMemoryError) and not should_reduce_batch_size(exc):
                    raise RuntimeError(
                        f"DefaultCPUAllocator: can't allocate memory ({exc})"
                    ) from exc
                raise
            results.append(out)
            done = stop

    find_executable_batch_size(body, starting_batch_size=size, reduce_batch_size_fn=halve)()
    return results
