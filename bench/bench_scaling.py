"""Scaling of our OMP kernel: time vs number of targets, atoms and k (log-log fits).

Three sweeps from one base point (default 1000 targets x 8000 atoms x 256 dims, k = 16): the
targets double three times, then the atoms, then k. The first-order prediction is linear in
each (the correlation phase, 2 B N D k flops, dominates; the per-target least-squares work is
O(k^2) and small next to it), so the fitted log-log slopes should be close to 1. The kernel's
own rule refines this, and ``model_cost`` evaluates it (its exponent is reported and drawn
next to the measured one): the first steps use the Batch-OMP Gram form (while
(t + 1) * GRAM_COST_RATIO < D), whose cost per step grows with t, so the exponent in k comes
out above 1; and the Gram rows are computed once per distinct selected atom, which targets
share, so that part grows more slowly than the number of targets. Each point is the median
of ``--repeats`` timings in this process after one warm-up; the data are the first rows of one
fixed embedding-like pool (``bench_omp.make_data``), so a larger point contains the smaller
one's inputs.

Writes ``bench/scaling.png`` (the figure) and ``bench/out/scaling.json`` (all timings).

    python bench/bench_scaling.py [--targets 1000 --atoms 8000 --dim 256 --k 16]
        [--steps 4] [--repeats 5] [--threads 1] [--strategy auto]

One thread by default: on a shared 2-core machine, two OpenMP threads competing with other
processes ran this kernel 3-5x slower and far less repeatably than one (measured here).

Plotting needs matplotlib (the ``bench`` extra); without it the JSON is still written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_omp import add_problem_args, make_data  # noqa: E402  (sibling module: bench/ is not a package)

from mergekit_tokenplug.methods.omp import (  # noqa: E402
    GRAM_COST_RATIO,
    _use_gram_step,
    batch_omp,
)

REPO = Path(__file__).resolve().parent.parent
SWEEPS = ("targets", "atoms", "k")


def fit_loglog(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of log y = slope * log x + intercept."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sxx
    return slope, my - slope * mx


def model_cost(b: int, n: int, dim: int, k: int, strategy: str, distinct: int) -> float:
    """Multiply-adds predicted by the kernel's own step rule: a direct step costs B N D, a
    Gram-form step at t B N (t + 1) ratio (ratio = GRAM_COST_RATIO['cpu']; t cached Gram rows
    and alpha0); once a step is direct the rest are. While the Gram form is used, each atom
    some target selected (``distinct``, counted in the run) costs one Gram row, N D. The
    O(k^2) per-target fit is left out."""
    cpu = torch.device("cpu")
    per_target_atom = float(dim)  # step 0: alpha0 = A x
    gram = strategy != "direct" and k > 1 and _use_gram_step(1, dim, cpu, strategy)
    rows = 0
    for t in range(1, k):
        if gram and _use_gram_step(t, dim, cpu, strategy):
            per_target_atom += (t + 1) * GRAM_COST_RATIO["cpu"]
            rows = distinct
        else:
            gram = False
            per_target_atom += dim
    return b * n * per_target_atom + rows * n * dim


def time_point(
    x: torch.Tensor, atoms: torch.Tensor, k: int, repeats: int, strategy: str
) -> tuple[list[float], int]:
    """(wall times, number of distinct atoms selected)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        idx, _ = batch_omp(x, atoms, k, strategy=strategy)
        times.append(time.perf_counter() - start)
    return times, int(torch.unique(idx).numel())


def plot(result: dict, path: Path) -> bool:
    """Three log-log panels (time vs targets / atoms / k) with fitted and linear lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install matplotlib): no figure", file=sys.stderr)
        return False
    base = result["base"]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4), sharey=True)
    for ax, name in zip(axes, SWEEPS, strict=True):
        sweep = result["sweeps"][name]
        xs, ys = sweep["values"], sweep["median_s"]
        slope, icpt = sweep["slope"], sweep["intercept"]
        ax.loglog(xs, ys, "o", color="C0", label="median time")
        for x, t in zip(xs, sweep["times_s"], strict=True):
            ax.plot([x] * len(t), t, ".", color="C0", alpha=0.35, ms=4)
        fx = [xs[0], xs[-1]]
        ax.loglog(fx, [math.exp(icpt) * v**slope for v in fx], "-", color="C1",
                  label=f"fit: slope {slope:.2f}")  # fmt: skip
        model = sweep["model_cost"]
        ax.loglog(xs, [ys[0] * c / model[0] for c in model], ":", color="C2",
                  label=f"cost model: slope {sweep['model_slope']:.2f}")  # fmt: skip
        ax.loglog(fx, [ys[0] * v / xs[0] for v in fx], "--", color="0.5", label="linear (slope 1)")
        ax.set_xlabel({"targets": "targets B", "atoms": "atoms N", "k": "sparsity k"}[name])
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("OMP time (s)")
    fig.suptitle(
        f"batch_omp scaling from B={base['targets']}, N={base['atoms']}, D={base['dim']}, "
        f"k={base['k']} ({result['threads']} CPU threads, strategy={result['strategy']}, "
        f"median of {result['repeats']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_problem_args(
        ap, targets=1000, atoms=8000, dim=256, k=16, repeats=5, threads=1,
        threads_help="1: stable on a shared machine",
    )  # fmt: skip
    ap.add_argument("--steps", type=int, default=4, help="sizes per sweep (doubling)")
    ap.add_argument("--png", type=Path, default=REPO / "bench" / "scaling.png")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "scaling.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    grow = 2 ** (args.steps - 1)
    pool_x, pool_a = make_data(args.targets * grow, args.atoms * grow, args.dim, args.seed)
    base = {"targets": args.targets, "atoms": args.atoms, "dim": args.dim, "k": args.k}
    print(f"base {base}, {args.steps} sizes per sweep, torch {torch.__version__}", flush=True)
    time_point(pool_x[:64], pool_a[: args.atoms], args.k, 1, args.strategy)  # warm-up

    t_start = time.perf_counter()
    cache: dict[tuple[int, int, int], tuple[list[float], int]] = {}
    sweeps: dict[str, dict] = {}
    for name in SWEEPS:
        values, times, distinct = [], [], []
        for step in range(args.steps):
            point = dict(base)
            point[name] = base[name] * 2**step
            key = (point["targets"], point["atoms"], point["k"])
            if key not in cache:  # the base point is shared by the three sweeps
                x = pool_x[: point["targets"]]
                a = pool_a[: point["atoms"]]
                cache[key] = time_point(x, a, point["k"], args.repeats, args.strategy)
            t, used = cache[key]
            values.append(point[name])
            times.append(t)
            distinct.append(used)
            print(
                f"{name:7s} B={key[0]:6d} N={key[1]:6d} k={key[2]:4d}  median "
                f"{statistics.median(t):7.3f} s  ({', '.join(f'{v:.3f}' for v in t)})",
                flush=True,
            )
        medians = [statistics.median(t) for t in times]
        slope, icpt = fit_loglog([float(v) for v in values], medians)
        costs = []
        for v, used in zip(values, distinct, strict=True):
            p = {**base, name: v}
            costs.append(
                model_cost(p["targets"], p["atoms"], args.dim, p["k"], args.strategy, used)
            )
        sweeps[name] = {
            "values": values,
            "times_s": times,
            "median_s": medians,
            "distinct_atoms": distinct,
            "slope": slope,
            "intercept": icpt,
            "model_cost": costs,
            "model_slope": fit_loglog([float(v) for v in values], costs)[0],
        }
    total = time.perf_counter() - t_start

    result = {
        "base": base,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "strategy": args.strategy,
        "torch": torch.__version__,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "predicted_slope": 1.0,
        "sweeps": sweeps,
        "total_s": total,
    }
    print(
        "\n| sweep | sizes | median times (s) | fitted exponent | cost-model exponent |"
        "\n|---|---|---|---:|---:|"
    )
    for name in SWEEPS:
        s = sweeps[name]
        print(
            f"| {name} | {', '.join(map(str, s['values']))} | "
            f"{', '.join(f'{v:.3f}' for v in s['median_s'])} | {s['slope']:.2f} | "
            f"{s['model_slope']:.2f} |"
        )
    print(f"\nfirst-order prediction: exponent 1 for each; timed in {total:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if plot(result, args.png):
        print(f"wrote {args.png} ({args.png.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
