"""Benchmark: our batch_omp against mergekit's tokensurgeon batch_omp on the same inputs.

Either random data shaped like embeddings (anisotropic Gaussian: a shared mean direction, a
decaying spectrum and per-row norm spread, fixed seed) or, with ``--rows real``, real rows of
SmolLM2-135M's embedding matrix (D = 576; targets drawn without replacement from the rows that are
not atoms, seeded; needs ``python bench/assets.py --only smollm2``). Synthetic rows flatter the
kernel: the real-row figure is the one to quote. Each run happens in a fresh child
process so its peak RSS (the child's ``resource`` rusage) is its own and no run warms caches for
another.

    python bench/bench_omp.py --targets 2000 --atoms 20000 --dim 512 --k 64 --repeats 1 \
        --threads 2 --json omp.json
    python bench/bench_omp.py --rows real --targets 2000 --atoms 20000 --k 64 --repeats 3

Besides the same-run speed ratio it prints each kernel's fraction of the direct form's limit:
k plain matmuls of one correlation pass's shape, timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timed import run_measured  # noqa: E402  (sibling module: bench/ is not a package)


def make_data(
    n_targets: int, n_atoms: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding-like rows: mean offset + power-law spectrum in a random basis + norm spread."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    scales = (torch.arange(1, dim + 1, dtype=torch.float32) ** -0.5) * 4.0
    mean = torch.randn(dim, generator=gen) * 0.5

    def rows(n: int) -> torch.Tensor:
        z = torch.randn(n, dim, generator=gen) * scales
        norm_spread = torch.exp(0.25 * torch.randn(n, 1, generator=gen))
        return ((z @ basis.T) + mean) * norm_spread

    rows_all = rows(n_atoms + n_targets)
    return rows_all[n_atoms:].contiguous(), rows_all[:n_atoms].contiguous()


def real_rows(n_targets: int, n_atoms: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of SmolLM2-135M's (tied) embedding matrix: the first ``n_atoms`` rows are atoms,
    ``n_targets`` seeded draws from the other rows are targets."""
    from safetensors import safe_open

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from assets import model_dir

    path = model_dir("smollm2") / "model.safetensors"
    if not path.is_file():
        raise SystemExit(f"error: {path} missing; run: python bench/assets.py --only smollm2")
    with safe_open(str(path), "pt") as fh:
        matrix = fh.get_tensor("model.embed_tokens.weight").float()
    if n_atoms + n_targets > matrix.shape[0]:
        raise SystemExit(f"error: --atoms + --targets exceeds the {matrix.shape[0]} real rows")
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(matrix.shape[0] - n_atoms, generator=gen)[:n_targets] + n_atoms
    return matrix[pick].contiguous(), matrix[:n_atoms].contiguous()


def problem_rows(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The (targets, atoms) pair the options describe, identical in parent and children."""
    if args.rows == "real":
        return real_rows(args.targets, args.atoms, args.seed)
    return make_data(args.targets, args.atoms, args.dim, args.seed)


def run_in_child(
    argv: list[str], which: str
) -> tuple[float, int, tuple[torch.Tensor, torch.Tensor]]:
    """Run one implementation in a fresh interpreter (``--worker``); return (seconds, peak RSS
    bytes from the child's rusage, (indices, coefficients)). A fresh process, not a fork:
    forking after OpenMP threads have started can deadlock."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            *argv,
            "--worker",
            which,
            "--worker-out",
            out,
        ]
        rc, _wall, rss_mib = run_measured(cmd)
        if rc != 0:
            raise RuntimeError(f"{which} worker failed with exit code {rc}")
        payload = torch.load(out)
    return payload["seconds"], int(rss_mib * 2**20), (payload["idx"], payload["coef"])


def worker(args: argparse.Namespace) -> int:
    """Child side: build the same data from the seed, time one implementation, save results."""
    torch.set_num_threads(args.threads)
    x, atoms = problem_rows(args)
    if args.worker == "ours":
        from mergekit_tokenplug.methods.omp import batch_omp

        start = time.perf_counter()
        idx, coef = batch_omp(x, atoms, args.k, strategy=args.strategy)
    else:
        from mergekit.tokensurgeon.omp import batch_omp as mergekit_omp

        start = time.perf_counter()
        idx, coef = mergekit_omp(x, atoms, args.k)
    seconds = time.perf_counter() - start
    torch.save({"seconds": seconds, "idx": idx, "coef": coef}, args.worker_out)
    return 0


def matmul_gflops(x: torch.Tensor, atoms: torch.Tensor, repeats: int = 3) -> float:
    """GFLOP/s of one plain (B, D) @ (D, N) fp32 matmul, the shape of a correlation pass."""
    x @ atoms.T
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x @ atoms.T
        times.append(time.perf_counter() - start)
    return 2 * x.shape[0] * atoms.shape[0] * x.shape[1] / statistics.median(times) / 1e9


def add_problem_args(
    ap: argparse.ArgumentParser,
    *,
    targets: int,
    atoms: int,
    dim: int,
    k: int,
    repeats: int,
    threads: int,
    threads_help: str | None = None,
) -> None:
    """The OMP problem and timing options shared by the OMP benchmarks (their defaults differ)."""
    ap.add_argument("--targets", type=int, default=targets)
    ap.add_argument("--atoms", type=int, default=atoms)
    ap.add_argument("--dim", type=int, default=dim)
    ap.add_argument("--k", type=int, default=k)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=threads, help=threads_help)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategy", default="auto", choices=["auto", "gram", "direct"])
    ap.add_argument(
        "--rows", default="synthetic", choices=["synthetic", "real"],
        help="synthetic embedding-like rows (--dim) or real SmolLM2-135M rows (D = 576)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_problem_args(ap, targets=2000, atoms=20000, dim=512, k=64, repeats=1, threads=2)
    ap.add_argument("--skip-mergekit", action="store_true", help="time only ours")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--worker", choices=["ours", "mergekit"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    torch.set_num_threads(args.threads)
    x, atoms = problem_rows(args)
    print(
        f"rows={args.rows} B={args.targets} N={args.atoms} D={x.shape[1]} k={args.k} threads={args.threads} "
        f"strategy={args.strategy} torch={torch.__version__}",
        flush=True,
    )
    child_argv = [
        f"--targets={args.targets}", f"--atoms={args.atoms}", f"--dim={args.dim}",
        f"--k={args.k}", f"--threads={args.threads}", f"--seed={args.seed}",
        f"--strategy={args.strategy}", f"--rows={args.rows}",
    ]  # fmt: skip
    runs: dict[str, list[tuple[float, int]]] = {"ours": [], "mergekit": []}
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    impls = ["ours"] + ([] if args.skip_mergekit else ["mergekit"])
    for rep in range(args.repeats):
        for name in impls:  # interleaved, so machine load affects both alike
            seconds, rss, res = run_in_child(child_argv, name)
            runs[name].append((seconds, rss))
            results[name] = res
            print(
                f"run {rep + 1} {name:9s} {seconds:8.2f} s  peak RSS {rss / 2**20:8.0f} MiB",
                flush=True,
            )

    gflops_plain = matmul_gflops(x, atoms)
    corr_flops = 2.0 * args.targets * args.atoms * x.shape[1] * args.k  # k residual passes
    summary: dict[str, object] = {"args": vars(args), "matmul_gflops": gflops_plain}
    for name in runs:
        if not runs[name]:
            continue
        med = statistics.median(s for s, _ in runs[name])
        summary[name] = {
            "seconds": [s for s, _ in runs[name]],
            "median_s": med,
            "peak_rss_mib": max(r for _, r in runs[name]) / 2**20,
            "effective_corr_gflops": corr_flops / med / 1e9,
            # the direct form's limit: k plain matmuls of one pass's shape, this run
            "fraction_of_matmul_limit": corr_flops / med / 1e9 / gflops_plain,
        }
        print(
            f"{name:9s} median {med:8.2f} s  effective correlation-phase {corr_flops / med / 1e9:6.1f} "
            f"GFLOP/s = {corr_flops / med / 1e9 / gflops_plain:.2f} of the matmul limit "
            f"(plain torch.matmul of the same shape: {gflops_plain:6.1f} GFLOP/s)"
        )
    idx_ours = results["ours"][0]
    summary["unique_atoms_ours"] = int(torch.unique(idx_ours).numel())
    print(f"distinct atoms selected (ours): {summary['unique_atoms_ours']}")
    if "mergekit" in results:
        idx_mk, coef_mk = results["mergekit"]
        coef_ours = results["ours"][1]
        same = (idx_ours == idx_mk).all(dim=1)
        same_set = (idx_ours.sort(dim=1).values == idx_mk.sort(dim=1).values).all(dim=1)
        rel = (coef_ours - coef_mk).norm(dim=1) / coef_mk.norm(dim=1).clamp_min(1e-30)
        speedup = summary["mergekit"]["median_s"] / summary["ours"]["median_s"]
        summary.update(
            speedup=speedup,
            identical_support_fraction=float(same.float().mean()),
            identical_support_set_fraction=float(same_set.float().mean()),
            max_rel_coef_diff_on_identical=float(rel[same].max()) if bool(same.any()) else None,
        )
        print(
            f"speedup (mergekit / ours, medians): {speedup:.2f}x; identical supports "
            f"(same order): {same.float().mean():.4f}; same sets: {same_set.float().mean():.4f}; "
            f"max relative coefficient difference on identical rows: "
            f"{summary['max_rel_coef_diff_on_identical']}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
