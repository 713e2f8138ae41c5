"""Peak memory of a real-pair transplant against what its embedding matrices predict.

Why: the transplant should hold little beyond the vocabulary-sized matrices it works on. The
model predicts peak RSS = 2 x (base vocab matrix + donor vocab matrix + output matrix, fp32)
+ a fixed overhead; the overhead (interpreter, torch, mergekit, tokenizers, the rest of the
model streamed through mergekit's graph) is measured as the peak RSS of a no-op run, a
transplant of SmolLM2 onto itself (every token exact, nothing estimated).

Both runs are ``mergekit-tokenplug transplant ... --device cpu``, one run each, measured by
``timed.run_measured`` (the child's own peak RSS, as ``/usr/bin/time -v`` reports it).

    python bench/bench_memory.py [--k 64] [--json bench/out/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)
from timed import run_measured, tool  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20


def vocab_matrices(model_dir: Path) -> dict[str, tuple[int, int]]:
    """Shapes of the checkpoint's vocabulary-sized 2-D tensors (embeddings, untied head),
    read from the safetensors headers (no weights loaded)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg = cfg.get("text_config", cfg) if "vocab_size" not in cfg else cfg
    vocab = int(cfg["vocab_size"])
    out: dict[str, tuple[int, int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                shape = tuple(fh.get_slice(name).get_shape())
                if len(shape) == 2 and shape[0] == vocab:
                    out[name] = (int(shape[0]), int(shape[1]))
    return out


def timed_run(label: str, cmd: list[str], log: Path) -> dict:
    """Run in a fresh process; return exit code, wall seconds and peak RSS (MiB)."""
    print(f"[memory] {label}: {' '.join(cmd)}", flush=True)
    rc, wall, rss = run_measured(cmd, log)
    print(f"[memory] {label}: exit {rc}, {wall:.0f} s, peak RSS {rss:.0f} MiB", flush=True)
    return {
        "label": label,
        "cmd": cmd,
        "returncode": rc,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(rss),
        "log": str(log),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out" / "memory")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "memory.json")
    ap.add_argument("--keep", action="store_true", help="keep the output checkpoints")
    args = ap.parse_args(argv)

    exe = tool("mergekit-tokenplug")
    if exe is None:
        print("mergekit-tokenplug is not installed in this environment", file=sys.stderr)
        return 2
    base, donor = assets.model_dir("gemma3"), assets.model_dir("smollm2")
    for path in (base, donor):
        if not any(path.glob("*.safetensors")):
            print(f"{path}: no checkpoint; run bench/assets.py first", file=sys.stderr)
            return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)

    base_m, donor_m = vocab_matrices(base), vocab_matrices(donor)
    donor_cfg = json.loads((donor / "config.json").read_text())
    d_base = next(iter(base_m.values()))[1]
    out_rows = int(donor_cfg["vocab_size"])  # output rows follow the donor's vocabulary
    # One output matrix per vocabulary matrix of the base (a tied base has one).
    out_bytes = len(base_m) * out_rows * d_base * 4
    base_bytes = sum(r * c * 4 for r, c in base_m.values())
    donor_bytes = sum(r * c * 4 for r, c in donor_m.values())
    matrices_mib = (base_bytes + donor_bytes + out_bytes) / MIB

    common = ["--method", "omp", "--k", str(args.k), "--device", "cpu", "--overwrite"]
    noop = timed_run(
        "no-op (smollm2 -> smollm2)",
        [exe, "transplant", str(donor), str(donor), str(args.out_dir / "noop"), *common],
        args.out_dir / "noop.log",
    )
    real = timed_run(
        f"gemma3 <- smollm2 tokenizer, omp k={args.k}",
        [exe, "transplant", str(base), str(donor), str(args.out_dir / "real"), *common],
        args.out_dir / "real.log",
    )
    if not args.keep:
        for name in ("noop", "real"):
            shutil.rmtree(args.out_dir / name, ignore_errors=True)

    ok = noop["returncode"] == 0 and real["returncode"] == 0
    result: dict[str, object] = {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "base": str(base),
        "donor": str(donor),
        "k": args.k,
        "matrices": {
            "base": {n: list(s) for n, s in base_m.items()},
            "donor": {n: list(s) for n, s in donor_m.items()},
            "output": [out_rows, d_base],
            "base_mib": base_bytes / MIB,
            "donor_mib": donor_bytes / MIB,
            "output_mib": out_bytes / MIB,
            "sum_fp32_mib": matrices_mib,
        },
        "noop": noop,
        "transplant": real,
    }
    if ok and noop["peak_rss_mib"] and real["peak_rss_mib"]:
        predicted = 2 * matrices_mib + noop["peak_rss_mib"]
        result.update(
            predicted_mib=predicted,
            measured_mib=real["peak_rss_mib"],
            ratio_measured_over_predicted=real["peak_rss_mib"] / predicted,
            excess_over_noop_mib=real["peak_rss_mib"] - noop["peak_rss_mib"],
            excess_over_noop_in_matrix_sums=(real["peak_rss_mib"] - noop["peak_rss_mib"])
            / matrices_mib,
        )
        print("\n| quantity | MiB |\n|---|---:|")
        print(f"| base + donor + output vocab matrices (fp32) | {matrices_mib:.0f} |")
        print(f"| no-op run peak RSS (fixed overhead) | {noop['peak_rss_mib']:.0f} |")
        print(f"| predicted: 2 x matrices + overhead | {predicted:.0f} |")
        print(f"| measured transplant peak RSS | {real['peak_rss_mib']:.0f} |")
        print(
            f"\nmeasured / predicted = {result['ratio_measured_over_predicted']:.2f}; "
            f"excess over the no-op = {result['excess_over_noop_in_matrix_sums']:.2f} x "
            "the matrices"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[memory] wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
