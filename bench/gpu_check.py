"""GPU checks for the OMP kernel and the transplant (driven by ``bench/gpu_check.sh``).

Subcommands (each writes JSON; the shell script runs them under per-step timeouts):

* ``pack DEST``: here, before a device run. Copies what the device needs of the two real
  models (config, tokenizer, chat template; no weights: the device tool carries at most
  64 MiB and the fp32 checkpoints are 1.1 GB + 0.5 GB) into DEST; files over 4 MiB are
  gzipped. ``--with-weights`` also copies the checkpoints (for a machine that can take them).
* ``env``: versions, device name, memory.
* ``omp``: (a) our ``batch_omp`` vs mergekit's ``batch_omp`` on the same device and data,
  (b) our correlation phase's achieved TFLOP/s against a dense bf16 matmul measured in the
  same process. Sizes shrink automatically to fit the time budget (see ``--help``).
* ``models SRC DEST``: the two models for the end-to-end run: SRC/<name> is used as is when
  it holds weights, else a stand-in with the real config and tokenizer and seeded random
  weights is built in DEST (``--shrink``: tiny hidden sizes, for CPU dry runs).
* ``e2e``: (c) ``transplant --device cuda`` of the pair, ``verify``, and bits per byte when
  the weights are real and texts were packed.
* ``summarize DIR``: one markdown summary of DIR's JSON files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

MODEL_NAMES = {"base": "gemma3-270m", "donor": "smollm2-135m"}
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)
GZIP_OVER = 4 * 2**20


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def _log(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ pack


def cmd_pack(args: argparse.Namespace) -> int:
    """Copy configs + tokenizers (+ optionally weights) of the two models into DEST."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import assets

    dest = Path(args.dest)
    total = 0
    for key, name in (("gemma3", MODEL_NAMES["base"]), ("smollm2", MODEL_NAMES["donor"])):
        src = assets.model_dir(key)
        if not (src / "config.json").is_file():
            print(f"{src}: missing; run bench/assets.py first", file=sys.stderr)
            return 2
        out = dest / name
        out.mkdir(parents=True, exist_ok=True)
        files = [src / f for f in MODEL_FILES if (src / f).is_file()]
        if args.with_weights:
            files += sorted(src.glob("*.safetensors"))
        for f in files:
            if f.suffix != ".safetensors" and f.stat().st_size > GZIP_OVER:
                target = out / (f.name + ".gz")
                with open(f, "rb") as fi, gzip.open(target, "wb", compresslevel=6) as fo:
                    shutil.copyfileobj(fi, fo)
            else:
                target = out / f.name
                shutil.copy2(f, target)
            total += target.stat().st_size
    texts = dest / "texts"
    for name in assets.TEXT_NAMES:
        path = assets.text_path(name)
        if path.is_file():
            texts.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, texts / path.name)
            total += path.stat().st_size
    _log(f"packed {dest} ({total / 2**20:.1f} MiB)")
    return 0


# ------------------------------------------------------------------------------------- env


def cmd_env(args: argparse.Namespace) -> int:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
    }
    for mod in ("mergekit", "transformers", "accelerate", "pydantic", "safetensors"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod)
        except Exception as exc:  # noqa: BLE001 - report whatever is missing
            info[mod] = f"MISSING ({exc.__class__.__name__})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            device_memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    import mergekit_tokenplug
    from mergekit_tokenplug.seam.activation import activate, is_active

    activate()
    import mergekit

    info["tokenplug"] = mergekit_tokenplug.__version__
    info["paths"] = {
        "mergekit_tokenplug": mergekit_tokenplug.__file__,
        "mergekit": mergekit.__file__,
    }
    info["tokenplug_active"] = is_active()
    _write(Path(args.json), info)
    _log(json.dumps(info))
    if args.require_cuda and not info["cuda_available"]:
        print("no CUDA device (drop --require-cuda, or use --dry-small)", file=sys.stderr)
        return 1
    return 0 if info["tokenplug_active"] else 1


# ------------------------------------------------------------------------------------- omp


def embedding_like(
    n_targets: int, n_atoms: int, dim: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and atoms shaped like embeddings (as bench_omp.make_data, built on device)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, device=device))
    scales = (torch.arange(1, dim + 1, dtype=torch.float32, device=device) ** -0.5) * 4.0
    mean = torch.randn(dim, generator=gen, device=device) * 0.5

    def rows(n: int) -> torch.Tensor:
        out = torch.empty((n, dim), device=device)
        for lo in range(0, n, 16384):
            hi = min(n, lo + 16384)
            z = torch.randn(hi - lo, dim, generator=gen, device=device) * scales
            spread = torch.exp(0.25 * torch.randn(hi - lo, 1, generator=gen, device=device))
            out[lo:hi] = (z @ basis.T + mean) * spread
        return out

    atoms = rows(n_atoms)
    return rows(n_targets), atoms


def matmul_tflops(m: int, n: int, kdim: int, device: torch.device, dtype=torch.bfloat16) -> float:
    """TFLOP/s of (m x kdim) @ (kdim x n) in ``dtype``: median of 10 after 3 warm-ups."""
    a = torch.randn(m, kdim, device=device).to(dtype)
    b = torch.randn(kdim, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2.0 * m * n * kdim / statistics.median(times) / 1e12


class CorrelationTimer:
    """Times every ``_Dictionary.correlate`` call of our OMP (the correlation phase) with
    CUDA events (no extra synchronisation), or wall time on CPU, and counts its flops."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.cpu_s = 0.0
        self.flops = 0.0
        self.calls = 0
        self.max_rows = 0
        self.max_cols = 0
        self._orig = None

    def __enter__(self) -> CorrelationTimer:
        from mergekit_tokenplug.methods import omp

        self._orig = orig = omp._Dictionary.correlate
        timer = self

        def correlate(dic, rows, lo, hi):
            d = dic.atoms.shape[1]
            timer.flops += 2.0 * rows.shape[0] * (hi - lo) * d
            timer.calls += 1
            timer.max_rows = max(timer.max_rows, int(rows.shape[0]))
            timer.max_cols = max(timer.max_cols, hi - lo)
            if timer.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                out = orig(dic, rows, lo, hi)
                end.record()
                timer.events.append((start, end))
                return out
            t0 = time.perf_counter()
            out = orig(dic, rows, lo, hi)
            timer.cpu_s += time.perf_counter() - t0
            return out

        omp._Dictionary.correlate = correlate
        return self

    def __exit__(self, *exc) -> None:
        from mergekit_tokenplug.methods import omp

        omp._Dictionary.correlate = self._orig

    def seconds(self) -> float:
        if not self.cuda:
            return self.cpu_s
        torch.cuda.synchronize()
        return sum(s.elapsed_time(e) for s, e in self.events) / 1e3


def _quality(x, atoms, idx, coef) -> float:
    """Mean relative residual ||x - A_I c|| / ||x|| (chunked)."""
    vals = []
    for lo in range(0, x.shape[0], 1024):
        xs = x[lo : lo + 1024]
        recon = torch.einsum("bk,bkd->bd", coef[lo : lo + 1024].float(), atoms[idx[lo : lo + 1024]])
        vals.append(((xs - recon).norm(dim=1) / xs.norm(dim=1).clamp_min(1e-30)).double())
    return float(torch.cat(vals).mean())


def _compare(idx_a, coef_a, idx_b, coef_b) -> dict[str, float | None]:
    same = (idx_a == idx_b).all(dim=1)
    same_set = (idx_a.sort(dim=1).values == idx_b.sort(dim=1).values).all(dim=1)
    rel = (coef_a.float() - coef_b.float()).norm(dim=1) / coef_b.float().norm(dim=1).clamp_min(
        1e-30
    )
    return {
        "identical_support_fraction": float(same.float().mean()),
        "same_support_set_fraction": float(same_set.float().mean()),
        "max_rel_coef_diff_on_identical": float(rel[same].max()) if bool(same.any()) else None,
    }


def cmd_omp(args: argparse.Namespace) -> int:
    from mergekit.tokensurgeon.omp import batch_omp as mergekit_omp

    from mergekit_tokenplug.methods.omp import batch_omp, select_settings

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_begin = time.perf_counter()
    deadline = t_begin + args.budget_s
    out_path = Path(args.json)
    res: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "requested": {"targets": args.targets, "atoms": args.atoms, "dim": args.dim, "k": args.k},
        "select_precision": args.select,
        "budget_s": args.budget_s,
        "notes": [],
    }
    notes: list[str] = res["notes"]  # type: ignore[assignment]

    # Dense bf16 matmul throughput of this device (the reference for the correlation phase).
    n = args.peak_n
    res["dense_bf16_tflops"] = matmul_tflops(n, n, n, device)
    res["dense_bf16_shape"] = [n, n, n]
    _log(f"dense bf16 matmul {n}^3: {res['dense_bf16_tflops']:.1f} TFLOP/s")
    _write(out_path, res)

    # Data: the full target pool is built once; smaller runs use its first rows.
    x_all, atoms = embedding_like(args.targets, args.atoms, args.dim, device, args.seed)
    _sync(device)
    k = args.k
    select_dtype, select_tf32 = select_settings(args.select, device)
    res["select_dtype"] = str(select_dtype) if select_dtype else f"fp32 (tf32={select_tf32})"

    def ours(n_targets: int, timer: CorrelationTimer | None = None, **kw):
        opts = {"select_dtype": select_dtype, "select_tf32": select_tf32, **kw}
        _sync(device)
        t0 = time.perf_counter()
        if timer is None:
            out = batch_omp(x_all[:n_targets], atoms, k, **opts)
        else:
            with timer:
                out = batch_omp(x_all[:n_targets], atoms, k, **opts)
        _sync(device)
        return time.perf_counter() - t0, out

    # Probe our kernel, then size the targets to the budget (atoms, dim, k stay).
    ours(min(64, args.targets))  # warm-up: CUDA context, cuBLAS handles, allocator
    probe_n = min(args.probe_targets, args.targets)
    probe_s, _ = ours(probe_n)
    per_target = probe_s / probe_n
    fit = max(probe_n, int(args.ours_budget_s / per_target))
    n_ours = min(args.targets, fit)
    res["probe"] = {"targets": probe_n, "seconds": probe_s}
    if n_ours < args.targets:
        notes.append(
            f"our OMP timed on {n_ours} of {args.targets} targets to fit {args.ours_budget_s} s "
            f"(probe: {probe_s:.2f} s for {probe_n})"
        )
    _log(f"probe: ours {probe_s:.2f} s for {probe_n} targets -> full run on {n_ours}")

    timer = CorrelationTimer(device)
    ours_s, (idx_ours, coef_ours) = ours(n_ours, timer)
    corr_s = timer.seconds()
    flops = timer.flops
    res["ours"] = {
        "targets": n_ours,
        "seconds": ours_s,
        "projected_full_s": ours_s * args.targets / n_ours,
        "correlation_calls": timer.calls,
        "correlation_s": corr_s,
        "correlation_share": corr_s / ours_s,
        "correlation_tflop": flops / 1e12,
        "correlation_tflops_achieved": flops / corr_s / 1e12 if corr_s > 0 else None,
        "effective_tflops_whole_omp": flops / ours_s / 1e12,
        "relative_residual": _quality(x_all[:n_ours], atoms, idx_ours, coef_ours),
    }
    # The same product shape as one correlation call, alone (the ceiling for that shape).
    rows, cols = max(timer.max_rows, 1), max(timer.max_cols, 1)
    res["corr_shape_bf16_tflops"] = matmul_tflops(rows, cols, args.dim, device)
    res["corr_shape"] = [rows, args.dim, cols]
    ach = res["ours"]["correlation_tflops_achieved"]
    res["correlation_vs_dense_bf16"] = ach / res["dense_bf16_tflops"] if ach else None
    _log(
        f"ours: {ours_s:.2f} s for {n_ours} targets; correlation phase {corr_s:.2f} s "
        f"({100 * corr_s / ours_s:.0f}%), {ach or 0:.1f} TFLOP/s achieved vs dense bf16 "
        f"{res['dense_bf16_tflops']:.1f} and same-shape matmul {res['corr_shape_bf16_tflops']:.1f}"
    )
    _write(out_path, res)

    # mergekit's batch_omp (fp32, its default) on a subset of the same targets, extrapolated.
    mergekit_omp(x_all[:16], atoms, k)  # warm-up
    n_mk = min(args.mk_probe_targets, n_ours)
    cap = n_ours  # lowered after an out-of-memory error, so the subset never grows back
    while True:
        try:
            _sync(device)
            t0 = time.perf_counter()
            idx_mk, coef_mk = mergekit_omp(x_all[:n_mk], atoms, k)
            _sync(device)
            mk_s = time.perf_counter() - t0
        except torch.cuda.OutOfMemoryError:
            if n_mk <= 16:
                raise
            n_mk //= 2
            cap = n_mk
            notes.append(f"mergekit's batch_omp ran out of memory; subset halved to {n_mk}")
            torch.cuda.empty_cache()
            continue
        left = deadline - time.perf_counter() - args.reserve_s
        want = min(cap, int(min(args.mk_budget_s, left) / (mk_s / n_mk)))
        if want >= 2 * n_mk:  # enough time for a larger, more representative subset
            n_mk = want
            del idx_mk, coef_mk
            continue
        break
    mk_full = mk_s * args.targets / n_mk
    res["mergekit"] = {
        "targets_timed": n_mk,
        "seconds": mk_s,
        "extrapolated_full_s": mk_full,
        "extrapolated_to_targets": args.targets,
        "relative_residual": _quality(x_all[:n_mk], atoms, idx_mk, coef_mk),
    }
    res["speedup_mergekit_over_ours"] = mk_full / res["ours"]["projected_full_s"]
    res["agreement_ours_vs_mergekit"] = _compare(idx_ours[:n_mk], coef_ours[:n_mk], idx_mk, coef_mk)
    notes.append(
        f"mergekit's batch_omp timed on {n_mk} targets and extrapolated linearly to "
        f"{args.targets} (its cost is linear in targets)"
    )
    _log(
        f"mergekit: {mk_s:.2f} s for {n_mk} targets -> {mk_full:.1f} s extrapolated; "
        f"speedup {res['speedup_mergekit_over_ours']:.1f}x; {res['agreement_ours_vs_mergekit']}"
    )
    del idx_mk, coef_mk
    _write(out_path, res)

    # Selection precisions side by side on one subset (fidelity + speed of each).
    n_var = min(args.variant_targets, n_ours)
    variants: dict[str, dict] = {}
    reference = None
    for prec in ("fp32", "tf32", "bf16"):
        left = deadline - time.perf_counter() - args.reserve_s
        if left < 3 * per_target * n_var + 5:
            notes.append(f"select-precision variants stopped before {prec}: time budget")
            break
        sd, tf = select_settings(prec, device)
        _sync(device)
        t0 = time.perf_counter()
        idx_v, coef_v = batch_omp(x_all[:n_var], atoms, k, select_dtype=sd, select_tf32=tf)
        _sync(device)
        entry = {"targets": n_var, "seconds": time.perf_counter() - t0}
        if reference is None:
            reference = (idx_v, coef_v)
        else:
            entry.update(_compare(idx_v, coef_v, *reference))
        entry["relative_residual"] = _quality(x_all[:n_var], atoms, idx_v, coef_v)
        variants[prec] = entry
        _log(f"select {prec}: {entry}")
    res["select_variants_vs_fp32"] = variants
    res["elapsed_s"] = time.perf_counter() - t_begin
    _write(out_path, res)
    return 0


# ---------------------------------------------------------------------------------- models


def _restore_file(src: Path, dest_dir: Path) -> None:
    if src.suffix == ".gz":
        with gzip.open(src, "rb") as fi, open(dest_dir / src.name[:-3], "wb") as fo:
            shutil.copyfileobj(fi, fo)
    else:
        shutil.copy2(src, dest_dir / src.name)


def _shrink(cfg) -> None:
    """Tiny hidden sizes (vocabulary unchanged) so a CPU dry run is quick."""
    text = getattr(cfg, "text_config", None) or cfg
    text.hidden_size = 64
    text.intermediate_size = 128
    text.num_hidden_layers = 1
    text.num_attention_heads = 2
    text.num_key_value_heads = 1
    if getattr(text, "head_dim", None):
        text.head_dim = 32
    if getattr(text, "layer_types", None):
        text.layer_types = list(text.layer_types)[:1]


def cmd_models(args: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    src_root, dest_root = Path(args.src), Path(args.dest)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict[str, dict] = {}
    for role, name in MODEL_NAMES.items():
        src = src_root / name
        if not src.is_dir():
            print(f"{src}: missing (expected {list(MODEL_NAMES.values())} in {src_root})")
            return 2
        if any(src.glob("*.safetensors")) and not args.shrink:
            report[role] = {"path": str(src), "weights": "real"}
            _log(f"{role}: {src} (real weights)")
            continue
        out = dest_root / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors"):
                _restore_file(f, out)
        cfg = AutoConfig.from_pretrained(out)
        if args.shrink:
            _shrink(cfg)
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        n_params = sum(t.numel() for t in model.parameters())
        model.save_pretrained(out)  # rewrites config.json; the tokenizer files stay as packed
        del model
        report[role] = {
            "path": str(out),
            "weights": "random stand-in (real config and tokenizer, seeded init)"
            + (", shrunk" if args.shrink else ""),
            "build_s": time.perf_counter() - t0,
            "params": n_params,
        }
        _log(f"{role}: built stand-in {out} in {report[role]['build_s']:.1f} s")
    _write(Path(args.json), report)
    return 0


# ------------------------------------------------------------------------------------- e2e


def _run_logged(cmd: list[str], log: Path, timeout_s: float) -> tuple[int, float, float | None]:
    """Run cmd (under GNU time -v when present), appending its output to log; returns
    (exit code, wall seconds, peak RSS MiB or None). A timeout is exit code 124."""
    import re
    import subprocess

    timed = Path("/usr/bin/time").exists()
    full = ["/usr/bin/time", "-v", *cmd] if timed else cmd
    _log(" ".join(cmd))
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        start = fh.tell()
        try:
            rc = subprocess.run(
                full, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.perf_counter() - t0
    rss = None
    if timed:
        with open(log, errors="replace") as fh:
            fh.seek(start)
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", fh.read())
        rss = int(m.group(1)) / 1024 if m else None
    _log(f"exit {rc} in {wall:.1f} s")
    return rc, wall, rss


def cmd_e2e(args: argparse.Namespace) -> int:
    """Transplant (base <- donor's tokenizer) on the device, verify it; bits per byte of the
    base and the output when the weights are real and the texts were packed."""
    deadline = time.perf_counter() + args.budget_s
    models = json.loads(Path(args.models_json).read_text())
    base, donor = models["base"]["path"], models["donor"]["path"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out, summary_path, log = (
        work / "transplant_out",
        work / "transplant_summary.json",
        Path(args.log),
    )
    cli = [sys.executable, "-m", "mergekit_tokenplug"]
    cmd = [*cli, "transplant", base, donor, str(out), "--method", "omp", "--k", str(args.k)]
    cmd += ["--device", args.device, "--overwrite", "--json", str(summary_path), "--quiet"]
    res: dict[str, object] = {"cmd": cmd, "device": args.device, "k": args.k, "models": models}
    rc, wall, rss = _run_logged(cmd, log, deadline - time.perf_counter())
    res.update(returncode=rc, wall_s=wall, peak_rss_mib=rss)
    if summary_path.is_file():
        res["summary"] = json.loads(summary_path.read_text())
    _write(Path(args.json), res)
    if rc != 0:
        return rc
    vrc, vwall, _ = _run_logged([*cli, "verify", str(out)], log, deadline - time.perf_counter())
    res.update(verify_returncode=vrc, verify_s=vwall)
    texts = sorted(Path(args.texts).glob("*.txt")) if args.texts else []
    real = all(m.get("weights") == "real" for m in models.values())
    left = deadline - time.perf_counter()
    if real and texts and left > 30:
        bpb_json = work / "bpb.json"
        ecmd = [*cli, "evaluate", base, str(out), "--device", args.device, "--quiet"]
        ecmd += [a for t in texts for a in ("--text", str(t))] + ["--json", str(bpb_json)]
        erc, ewall, _ = _run_logged(ecmd, log, left)
        res.update(evaluate_returncode=erc, evaluate_s=ewall)
        if bpb_json.is_file():
            res["bpb"] = json.loads(bpb_json.read_text())
    else:
        res["bpb"] = "skipped: " + (
            "stand-in weights (bits per byte would mean nothing)" if not real else
            "no texts packed" if not texts else "time budget"
        )  # fmt: skip
    _write(Path(args.json), res)
    return vrc


# ------------------------------------------------------------------------------- summarize


def _fmt(v: object, spec: str = ".2f") -> str:
    if isinstance(v, float) and math.isfinite(v):
        return format(v, spec)
    return "-" if v is None else str(v)


def cmd_summarize(args: argparse.Namespace) -> int:
    d = Path(args.dir)

    def load(name: str) -> dict:
        p = d / name
        return json.loads(p.read_text()) if p.is_file() else {}

    env, omp, models, e2e = (
        load("env.json"),
        load("omp.json"),
        load("models.json"),
        load("e2e.json"),
    )
    lines = ["# GPU check", ""]
    if args.mode:
        lines += [f"mode: {args.mode}", ""]
    if env:
        lines += [
            f"device: {env.get('device', 'cpu')}; torch {env.get('torch')}; mergekit "
            f"{env.get('mergekit')}; transformers {env.get('transformers')}",
            "",
        ]
    if omp:
        req = omp.get("requested", {})
        lines += [
            "## (a) OMP: ours vs mergekit's batch_omp, same device and data",
            "",
            f"size: {req.get('targets')} targets x {req.get('atoms')} atoms x {req.get('dim')} "
            f"dims, k = {req.get('k')}; our selection: {omp.get('select_dtype')}",
            "",
        ]
        o, m = omp.get("ours", {}), omp.get("mergekit", {})
        if o:
            lines.append(
                f"- ours: {_fmt(o.get('seconds'))} s for {o.get('targets')} targets "
                f"(full size: {_fmt(o.get('projected_full_s'))} s); relative residual "
                f"{_fmt(o.get('relative_residual'), '.4f')}"
            )
        if m:
            lines.append(
                f"- mergekit: {_fmt(m.get('seconds'))} s for {m.get('targets_timed')} targets, "
                f"extrapolated linearly to {_fmt(m.get('extrapolated_full_s'), '.1f')} s; "
                f"relative residual {_fmt(m.get('relative_residual'), '.4f')}"
            )
            lines.append(
                f"- speedup (mergekit / ours, full size): "
                f"{_fmt(omp.get('speedup_mergekit_over_ours'), '.1f')}x; agreement: "
                f"{omp.get('agreement_ours_vs_mergekit')}"
            )
        lines += ["", "## (b) correlation phase vs dense bf16 matmul", ""]
        lines.append(
            f"- dense bf16 matmul {omp.get('dense_bf16_shape')}: "
            f"{_fmt(omp.get('dense_bf16_tflops'), '.4g')} TFLOP/s; same shape as one "
            f"correlation call {omp.get('corr_shape')}: "
            f"{_fmt(omp.get('corr_shape_bf16_tflops'), '.4g')} TFLOP/s"
        )
        if o:
            lines.append(
                f"- our correlation phase: {_fmt(o.get('correlation_tflops_achieved'), '.4g')} "
                f"TFLOP/s achieved ({_fmt(100 * (omp.get('correlation_vs_dense_bf16') or 0), '.0f')}"
                f"% of dense), {_fmt(100 * o.get('correlation_share', 0), '.0f')}% of OMP time; "
                f"whole OMP {_fmt(o.get('effective_tflops_whole_omp'), '.4g')} TFLOP/s effective"
            )
        for prec, v in (omp.get("select_variants_vs_fp32") or {}).items():
            extra = {key: v[key] for key in v if key not in ("targets", "seconds")}
            lines.append(
                f"- select {prec} on {v.get('targets')} targets: {_fmt(v.get('seconds'))} s; "
                f"{extra}" + (" (agreement vs fp32)" if prec != "fp32" else "")
            )
        for note in omp.get("notes", []):
            lines.append(f"- note: {note}")
        lines.append("")
    if models or e2e:
        lines += ["## (c) end-to-end transplant", ""]
        for role, info in models.items():
            lines.append(f"- {role}: {info.get('path')} ({info.get('weights')})")
        if e2e:
            lines.append(
                f"- transplant exit {e2e.get('returncode')}, wall {_fmt(e2e.get('wall_s'), '.1f')} s, "
                f"peak RSS {_fmt(e2e.get('peak_rss_mib'), '.0f')} MiB, verify exit "
                f"{e2e.get('verify_returncode')}"
            )
            if e2e.get("summary"):
                lines.append(f"- summary: {json.dumps(e2e['summary'])[:1500]}")
        lines.append("")
    text = "\n".join(lines)
    (d / "summary.md").write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("pack", help="copy configs + tokenizers of the two models (run here)")
    p.add_argument("dest")
    p.add_argument("--with-weights", action="store_true")

    p = sub.add_parser("env")
    p.add_argument("--require-cuda", action="store_true")
    p.add_argument("--json", required=True)

    p = sub.add_parser("omp", help="(a) + (b)")
    p.add_argument("--targets", type=int, default=30_000)
    p.add_argument("--atoms", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--select", default="auto", choices=["auto", "fp32", "tf32", "bf16"])
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-n", type=int, default=8192, help="dense matmul size (n^3)")
    p.add_argument("--probe-targets", type=int, default=1000)
    p.add_argument("--ours-budget-s", type=float, default=60.0)
    p.add_argument("--mk-probe-targets", type=int, default=128)
    p.add_argument("--mk-budget-s", type=float, default=45.0)
    p.add_argument("--variant-targets", type=int, default=2000)
    p.add_argument("--budget-s", type=float, default=180.0, help="whole step")
    p.add_argument("--reserve-s", type=float, default=10.0)
    p.add_argument("--json", required=True)

    p = sub.add_parser("models", help="models for the end-to-end run")
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--shrink", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)

    p = sub.add_parser("e2e", help="(c) end-to-end transplant")
    p.add_argument("--models-json", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--texts", default=None, help="folder of .txt files (packed texts)")
    p.add_argument("--budget-s", type=float, default=200.0)
    p.add_argument("--log", required=True)
    p.add_argument("--json", required=True)

    p = sub.add_parser("summarize")
    p.add_argument("dir")
    p.add_argument("--mode", default="")

    args = ap.parse_args(argv)
    return {
        "pack": cmd_pack,
        "env": cmd_env,
        "omp": cmd_omp,
        "models": cmd_models,
        "e2e": cmd_e2e,
        "summarize": cmd_summarize,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
