"""Multi-process sharding of row estimation (``accelerate launch --num_processes N ...``).

Every process runs the same merge graph; only the estimation of missing rows is split. The
rows of a group are cut into fixed-size chunks (the same chunks whatever the number of
processes), chunk ``i`` is computed by process ``i % N``, and the results are all-gathered so
every process continues with identical tensors. Because a chunk is computed the same way
wherever it runs, the output is byte-identical to a single-process run. The main process
writes the checkpoint; the others write nothing.

The process group comes from ``accelerate.PartialState`` (gloo on CPU, NCCL on GPU), created
only when the launcher set ``WORLD_SIZE > 1``. Launch with
``accelerate launch --multi_gpu --num_processes N -m mergekit_tokenplug transplant ...`` (the
flag only selects accelerate's torchrun launcher; it works without GPUs) or
``torchrun --nproc_per_node N -m mergekit_tokenplug ...``.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from mergekit_tokenplug import settings
from mergekit_tokenplug.errors import TokenplugError


def launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@functools.cache
def _state():
    from accelerate import PartialState
    from accelerate.utils import InitProcessGroupKwargs

    kwargs = InitProcessGroupKwargs(
        timeout=datetime.timedelta(minutes=settings.dist_timeout_min())
    ).to_kwargs()
    # Without CUDA, accelerate only forms a CPU group (gloo) when asked to with cpu=True.
    state = PartialState(cpu=not torch.cuda.is_available(), **kwargs)
    # A group still alive at interpreter exit is torn down by C++ static destructors, which
    # can abort (SIGABRT, "terminate called without an active exception") after a run that
    # succeeded; closing it explicitly makes the exit status mean what it says.
    atexit.register(state.destroy_process_group)
    return state


def rank_and_world() -> tuple[int, int]:
    """(this process's index, number of processes); (0, 1) when not launched distributed."""
    if launched_world_size() <= 1:
        return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def chunk_bounds(n: int, chunk: int | None = None) -> list[tuple[int, int]]:
    chunk = chunk or settings.shard_chunk()
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


def _moved(value: Any, device: Any) -> Any:
    """A chunk's result (a tensor, or a tuple/dict holding tensors) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device)
    if isinstance(value, tuple | list):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def sharded_rows(
    n: int,
    compute: Callable[[int, int, int], Any],
    *,
    shardable: bool = True,
    chunk: int | None = None,
) -> list[torch.Tensor]:
    """Row blocks for ``[0, n)``: ``compute(chunk_index, lo, hi)`` per chunk, all-gathered.

    Returns the chunks' results (tensors, or tuples/dicts of tensors) in order. A method that is not row-independent
    (``shardable=False``) is computed whole, as one chunk, by every process.
    """
    if not shardable:
        return [compute(0, 0, n)] if n else []
    bounds = chunk_bounds(n, chunk)
    rank, world = rank_and_world()
    mine = {i: compute(i, lo, hi) for i, (lo, hi) in enumerate(bounds) if i % world == rank}
    if world == 1:
        return [mine[i] for i in range(len(bounds))]
    gathered: list[dict[int, torch.Tensor] | None] = [None] * world
    try:
        torch.distributed.all_gather_object(gathered, _moved(mine, "cpu"))
    except RuntimeError as exc:  # a peer died or timed out
        raise TokenplugError(
            f"a process of the group failed during row estimation ({str(exc).splitlines()[0]}); the run is aborted",
            where="accelerate",
        ) from None
    merged = {i: t for part in gathered for i, t in (part or {}).items()}
    first = next(iter(mine.values()), None)
    first = first[0] if isinstance(first, tuple | list) else first
    device = first.device if isinstance(first, torch.Tensor) else None  # None: on the CPU
    return [_moved(merged[i], device) for i in range(len(bounds))]
