"""Real-pair transplant benchmark: mergekit-tokenplug vs mergekit-tokensurgeon.

Base = Gemma-3-270M, donor = SmolLM2-135M (the base gets SmolLM2's tokenizer). Each tool
runs as a subprocess (wall time and peak RSS measured from outside, so both are measured the
same way); then bits per byte of the original base, both outputs and (for reference) the
donor on the four fixed text slices from ``bench/assets.py``. Lower bpb is better; the
original base is the ceiling a transplant tries to keep, the donor shows what its tokenizer
allows a trained model.

    python bench/bench_transplant_real.py [--k 64] [--json bench/out/transplant_real.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)
from timed import run_measured, tool  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def run_timed(name: str, cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; record exit code, wall time and peak RSS; keep its output in ``log``."""
    print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
    rc, wall, rss = run_measured(cmd, log)
    res = {
        "name": name,
        "cmd": cmd,
        "returncode": rc,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(rss, 0),
        "log": str(log),
    }
    status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {log})"
    print(f"[bench] {name}: {status} wall={wall:.1f}s peak_rss={rss}MiB", flush=True)
    return res


def _has_weights(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=64, help="OMP sparsity for both tools")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out" / "transplant_real")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--reuse", action="store_true", help="keep existing outputs, skip reruns")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-tokensurgeon", action="store_true")
    ap.add_argument("--no-donor", action="store_true", help="do not score the donor model")
    ap.add_argument("--no-eval", action="store_true", help="only run the transplants")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument(
        "--bos",
        choices=("auto", "on", "off"),
        default="auto",
        help="BOS per window: auto = when the tokenizer defines one (see evaluate/bpb.py)",
    )
    args = ap.parse_args(argv)

    paths = assets.ensure_all()
    base, donor = paths["gemma3"], paths["smollm2"]
    texts = [paths[f"text:{n}"] for n in assets.TEXT_NAMES]
    args.out_dir.mkdir(parents=True, exist_ok=True)

    runs: list[dict] = []
    outputs: dict[str, Path] = {}
    plans = []
    if not args.skip_ours:
        exe = tool("mergekit-tokenplug")
        out = args.out_dir / f"tokenplug-omp-k{args.k}"
        cmd = [exe or "mergekit-tokenplug", "transplant", str(base), str(donor), str(out)]
        cmd += ["--method", "omp", "--k", str(args.k), "--device", "cpu", "--overwrite"]
        plans.append((f"tokenplug omp k={args.k}", exe, cmd, out))
    if not args.skip_tokensurgeon:
        exe = tool("mergekit-tokensurgeon")
        out = args.out_dir / f"tokensurgeon-omp-k{args.k}"
        cmd = [exe or "mergekit-tokensurgeon", str(base), str(donor), str(out)]
        cmd += ["-a", "omp", "-k", str(args.k)]  # CPU is its default (no --cuda)
        plans.append((f"tokensurgeon omp k={args.k}", exe, cmd, out))

    for label, exe, cmd, out in plans:
        if exe is None:
            print(f"[bench] {label}: SKIPPED, {Path(cmd[0]).name} is not installed", flush=True)
            runs.append({"name": label, "skipped": "command not installed"})
            continue
        if args.reuse and _has_weights(out):
            print(f"[bench] {label}: reusing {out}", flush=True)
            runs.append({"name": label, "reused": str(out)})
            outputs[label] = out
            continue
        if out.exists() and "tokensurgeon" in label:
            shutil.rmtree(out)  # tokensurgeon has no overwrite switch
        res = run_timed(label, cmd, args.out_dir / f"{out.name}.log")
        runs.append(res)
        if res["returncode"] == 0 and _has_weights(out):
            outputs[label] = out

    records: list[dict] = []
    if not args.no_eval:
        from mergekit_tokenplug.evaluate.bpb import evaluate_models, format_table

        models = {"gemma3-270m (original base)": base, **outputs}
        if not args.no_donor:
            models["smollm2-135m (donor)"] = donor
        labels = {str(p): k for k, p in models.items()}
        records = evaluate_models(
            [str(p) for p in models.values()],
            [str(t) for t in texts],
            window=args.window,
            bos={"auto": None, "on": True, "off": False}[args.bos],
        )
        for r in records:
            r["label"] = labels[r["model"]]

    print("\n## Runs (wall time and peak RSS of the whole subprocess)\n")
    print("| tool | exit | wall s | peak RSS MiB |\n|---|---:|---:|---:|")
    for r in runs:
        if "returncode" in r:
            print(f"| {r['name']} | {r['returncode']} | {r['wall_s']} | {r['peak_rss_mib']} |")
        else:
            print(f"| {r['name']} | - | {r.get('skipped') or 'reused'} | - |")
    if records:
        print(f"\n## Bits per byte ({args.window}-token windows, lower is better)\n")
        print(format_table([{**r, "model": r["label"]} for r in records]))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "base": str(base),
            "donor": str(donor),
            "k": args.k,
            "window": args.window,
            "bos": args.bos,
            "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "runs": runs,
            "bpb": records,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\n[bench] wrote {args.json}")
    return 0 if all(r.get("returncode", 0) == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
