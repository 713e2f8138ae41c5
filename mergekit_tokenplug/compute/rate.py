"""This machine's float32 matrix-multiply rate, measured in a fraction of a second.

``plan`` turns a method's flop count into seconds with it: a figure for *this* machine and its
current load, where a fixed table of device speeds would be wrong on most machines.
"""

from __future__ import annotations

import functools
import time

import torch

PROBE_SECONDS = 0.25


@functools.cache
def matmul_rate(device: str = "cpu", size: int = 512) -> float:
    """Flop/s of float32 ``size x size`` matrix products on ``device`` (measured once per
    process, after one warm-up product)."""
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dev)
    b = torch.randn(size, size, generator=gen).to(dev)
    (a @ b).sum().item()  # warm-up: kernels, caches, lazy CUDA init
    runs, start = 0, time.perf_counter()
    while True:
        (a @ b).sum().item()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= PROBE_SECONDS:
            return 2.0 * size**3 * runs / elapsed
