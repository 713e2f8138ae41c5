"""Quality of the method family on real models, side by side with mergekit-tokensurgeon.

Part 1 — leave-out reconstruction (no training, no forward pass). Base = Gemma-3-270M, donor =
SmolLM2-135M. The hidden set, the strict hiding and the scores are those of
``mergekit-tokenplug compare`` (``mergekit_tokenplug/evaluate/compare.py``): 5% of the shared
regular tokens (seed 0), drawn to match the category mix of the tokens Gemma really lacks, are
hidden and estimated from the rest by every method; the score is the mean cosine and relative
L2 error to the true rows, overall and per token category. Our methods run through compare's
path (the transplant's fill code); tokensurgeon's through ``mergekit.tokensurgeon.*`` with the
inputs ``mergekit/scripts/tokensurgeon.py::compute_new_embeddings`` builds (shared rows in
donor-id order, targets in batches of the CLI's default 512), on the same hidden set.

Part 2 — bits per byte after a real transplant: SmolLM2's tokenizer on Gemma-3-270M by every
method through ``transplant(...)`` (float32), plus ``mergekit-tokensurgeon -a omp -k 64``, plus
the original Gemma; and, for methods that need no donor, the GPT-2 vocabulary (a
tokenizer-only target) on SmolLM2. cw2v trains on a slice of the same sources that is
disjoint from the evaluation slices (training on the scored text would be a leak).

    python bench/bench_quality.py [--methods omp,mean,ts-omp] [--skip-leaveout] [--skip-bpb]
        [--skip-gpt2] [--redo] [--out-dir bench/out/quality] [--figure bench/quality_figure.png]

Transplanted models, per-model bpb records and leave-out results are cached under
``--out-dir`` and reused (``--redo`` recomputes). Outputs: ``bench/out/quality.json``,
``bench/out/quality.md`` and the figure. Cost on 2 busy CPU cores: ``tokenadapt-minilm``
embeds Gemma's 262k vocabulary texts with MiniLM (~25 min, once in each part); ``omp``,
``ts-omp``, ``ts-landmark_pca`` and ``cw2v`` take 4-7 min each; the rest seconds to a minute;
bpb is ~40 s per transplanted model and ~3 min per original model.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)
from timed import run_measured  # noqa: E402

from mergekit_tokenplug.evaluate.compare import CATEGORIES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
LEAVE_OUT_FRACTION = 0.05
LEAVE_OUT_SEED = 0
TS_BATCH = 512  # mergekit-tokensurgeon's default --batch-size
CW2V_TRAIN_SLICE = (26_000, 66_000)  # disjoint from assets.TEXT_SLICE (20,000-26,000)

LOG = logging.getLogger("bench_quality")


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One row of the tables: ours (a registered method) or tokensurgeon's."""

    slug: str  # used by --methods and in directory names
    label: str  # shown in tables and the figure
    impl: str  # "ours" | "tokensurgeon"
    name: str  # registry name / tokensurgeon approximation method
    params: dict[str, Any] = field(default_factory=dict)


def all_methods(cw2v_corpus: list[str]) -> list[Method]:
    """Every method of the bench (cw2v's corpus differs between part 1 and part 2)."""
    return [
        Method("omp_map", "omp_map (default)", "ours", "omp_map"),
        Method("omp", "omp k=64", "ours", "omp", {"k": 64}),
        Method("tokenadapt-self", "tokenadapt (self)", "ours", "tokenadapt"),
        Method(
            "tokenadapt-minilm",
            "tokenadapt (MiniLM)",
            "ours",
            "tokenadapt",
            {"embedder": str(assets.minilm_package_dir())},
        ),
        Method("subword_mean", "subword_mean", "ours", "subword_mean"),
        Method("mean", "mean", "ours", "mean"),
        Method("hewitt", "hewitt", "ours", "hewitt"),
        Method("cw2v", "cw2v", "ours", "cw2v", {"corpus": cw2v_corpus}),
        Method("ts-omp", "TS omp k=64", "tokensurgeon", "omp", {"k": 64}),
        Method(
            "ts-common_interpolation",
            "TS common_interp k=64",
            "tokensurgeon",
            "common_interpolation",
            {"k": 64},
        ),
        Method("ts-subword", "TS subword", "tokensurgeon", "subword"),
        Method("ts-landmark_pca", "TS landmark_pca", "tokensurgeon", "landmark_pca"),
        Method("ts-mean", "TS mean", "tokensurgeon", "mean"),
    ]


# --------------------------------------------------------------------------- assets


def load_matrix(model_dir: Path) -> torch.Tensor:
    """The input embedding matrix (both models are tied: it is also the output head)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as fh:
        return fh.get_tensor("model.embed_tokens.weight").float()


def cw2v_train_corpus(dest: Path) -> list[str]:
    """Training text for cw2v in part 2: the same sources as the scored slices, but
    characters 26,000-66,000 (disjoint from the 20,000-26,000 that bpb scores)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    a, b = CW2V_TRAIN_SLICE
    for lang in assets.DEBIAN_LANGS:
        path = dest / f"{lang}.txt"
        if not path.is_file():
            gz = (
                assets.cache_root()
                / "debian"
                / lang
                / "usr/share/debian-reference"
                / f"debian-reference.{lang}.txt.gz"
            )
            with gzip.open(gz, "rt", encoding="utf-8") as fh:
                path.write_text(fh.read()[a:b], encoding="utf-8")
        files.append(str(path))
    path = dest / "py.txt"
    if not path.is_file():
        import argparse as _argparse_module

        src = Path(_argparse_module.__file__).read_text(encoding="utf-8")
        path.write_text(src[a:b], encoding="utf-8")
    files.append(str(path))
    return files


# --------------------------------------------------------------------------- part 1


def holdout_for_bench() -> Any:
    """The hidden set of ``mergekit-tokenplug compare`` on this pair (one implementation)."""
    from mergekit_tokenplug.evaluate.compare import prepare_holdout

    return prepare_holdout(
        str(assets.model_dir("gemma3")),
        str(assets.model_dir("smollm2")),
        LEAVE_OUT_FRACTION,
        LEAVE_OUT_SEED,
    )


def bench_score(est: torch.Tensor, ho: Any) -> dict[str, Any]:
    """compare's score, in this report's layout (overall / by_category)."""
    from mergekit_tokenplug.evaluate.compare import score

    s = score(est, ho.true, ho.categories)
    nan = {"n": 0, "cos": float("nan"), "rel_l2": float("nan")}
    return {
        "overall": {"n": len(ho.categories), "cos": s["cos"], "rel_l2": s["rel_l2"]},
        "by_category": {c: s["categories"].get(c, nan) for c in CATEGORIES},
    }


def run_ours(ho: Any, m: Method) -> torch.Tensor:
    """Our method through compare's path (the transplant's fill code)."""
    from mergekit_tokenplug.evaluate.compare import estimate_hidden
    from mergekit_tokenplug.registry import get

    spec = get(m.name)
    return estimate_hidden(ho, spec, spec.parse_params(m.params), show_progress=False)


def run_tokensurgeon(ho: Any, m: Method) -> torch.Tensor:
    """tokensurgeon's approximation as ``compute_new_embeddings`` invokes it (CLI defaults:
    euclidean distances, distance-proportional weights, subword mean, batches of 512), on
    compare's hidden set. Its ``subword`` indexes the full Gemma matrix by tokenizer id: the
    hidden rows hold NaN there, so a leak would show up as NaN."""
    from mergekit_tokenplug.evaluate.compare import tokenizer_without

    donor = ho.donor_space.matrix.float()
    lo = argparse.Namespace(
        donor=donor,
        base=ho.base,
        anchor_out=ho.anchor_out,
        anchor_base=ho.out_to_base[ho.anchor_out],
        hidden_out=ho.hidden_out,
        smollm2_tok=ho.plan.tokenizer,
    )
    from mergekit.tokenizer.normalization import normalized_vocabulary
    from mergekit.tokensurgeon import (
        SubwordMethod,
        WeightingScheme,
        batch_omp,
        common_interp_approximate,
        landmark_pca_approximate,
        subword_approximate,
    )
    from mergekit.tokensurgeon.common_interpolation import DistanceMetric

    # shared_vocab is sorted by donor id; our anchors already are (output ids = donor ids)
    donor_shared = lo.donor[torch.as_tensor(lo.anchor_out)]
    orig_shared = lo.base[torch.as_tensor(lo.anchor_base)]
    targets_all = lo.donor[torch.as_tensor(lo.hidden_out)]
    if m.name == "subword":
        g_tok = next(iter(ho.plan.models.values())).tokenizer
        lo.gemma_without = tokenizer_without(
            g_tok, set(g_tok.convert_ids_to_tokens(ho.hidden_base.tolist()))
        )
        lo.base_nan = load_matrix(assets.model_dir("gemma3"))
        lo.base_nan[torch.from_numpy(ho.hidden_base)] = float("nan")
        by_id = {i: tok for tok, i in normalized_vocabulary(lo.smollm2_tok).items()}
        target_tokens = [by_id[int(i)] for i in lo.hidden_out]
    torch.manual_seed(0)  # landmark_pca uses torch.pca_lowrank (randomized)
    parts = []
    for s in range(0, len(lo.hidden_out), TS_BATCH):
        targets = targets_all[s : s + TS_BATCH]
        if m.name == "mean":
            parts.append(lo.base.mean(dim=0).unsqueeze(0).expand(len(targets), -1))
            continue
        if m.name == "subword":
            parts.append(
                subword_approximate(
                    lo.base_nan,
                    target_tokens[s : s + TS_BATCH],
                    False,
                    lo.gemma_without,
                    SubwordMethod.MEAN,
                )
            )
            continue
        if m.name == "landmark_pca":
            parts.append(landmark_pca_approximate(targets, donor_shared, orig_shared))
            continue
        if m.name == "omp":
            indices, coeffs = batch_omp(targets, donor_shared, m.params["k"])
        elif m.name == "common_interpolation":
            indices, coeffs = common_interp_approximate(
                targets,
                donor_shared,
                k=m.params["k"],
                metric=DistanceMetric.EUCLIDEAN,
                weight_scheme=WeightingScheme.DISTANCE_PROPORTIONAL,
            )
        else:
            raise ValueError(m.name)
        parts.append(
            torch.bmm(coeffs.unsqueeze(1), orig_shared[indices].to(torch.float)).squeeze(1)
        )
    return torch.cat(parts)


def part_leave_out(methods: list[Method], cache: dict[str, Any], redo: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    lo = holdout_for_bench()
    setup_s = time.perf_counter() - t0
    digest = hashlib.sha256(lo.hidden_out.tobytes()).hexdigest()[:16]
    info = {
        "shared_regular": lo.info["shared"],
        "hidden": int(len(lo.hidden_out)),
        "anchors": int(len(lo.anchor_out)),
        "seed": LEAVE_OUT_SEED,
        "fraction": LEAVE_OUT_FRACTION,
        "missing_mix": lo.missing_mix,
        "hidden_sha": digest,
    }
    print(f"[leave-out] setup {setup_s:.1f}s: {info}", flush=True)
    prev = cache.get("methods", {}) if cache.get("info", {}).get("hidden_sha") == digest else {}
    results: dict[str, Any] = dict(prev)
    for m in methods:
        if m.slug in results and not redo and "error" not in results[m.slug]:
            print(f"[leave-out] {m.slug}: cached", flush=True)
            continue
        print(f"[leave-out] {m.slug} ...", flush=True)
        t1 = time.perf_counter()
        try:
            est = run_ours(lo, m) if m.impl == "ours" else run_tokensurgeon(lo, m)
            secs = time.perf_counter() - t1
            if not bool(torch.isfinite(est).all()):
                raise RuntimeError(
                    f"{int((~torch.isfinite(est).all(dim=1)).sum())} non-finite rows (a hidden row leaked?)"
                )
            res = {
                "label": m.label,
                "impl": m.impl,
                "seconds": round(secs, 2),
                **bench_score(est, lo),
            }
        except Exception as exc:  # report a crashing method instead of stopping the bench
            LOG.exception("leave-out %s failed", m.slug)
            res = {
                "label": m.label,
                "impl": m.impl,
                "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
            }
        results[m.slug] = res
        shown = res.get("overall", {}).get("cos")
        print(
            f"[leave-out] {m.slug}: cos={shown} ({res.get('seconds', '-')}s) {res.get('error', '')}",
            flush=True,
        )
    n_cat = {c: lo.categories.count(c) for c in CATEGORIES}
    return {
        "info": {**info, "categories": n_cat, "setup_seconds": round(setup_s, 1)},
        "methods": results,
    }


# --------------------------------------------------------------------------- part 2


def build_model(m: Method, base: Path, donor: Path, out: Path, redo: bool) -> dict[str, Any]:
    """Transplant ``donor``'s tokenizer onto ``base`` with ``m``; reuse a finished output."""
    done = out / ("tokenplug_manifest.json" if m.impl == "ours" else ".bench-complete")
    if done.is_file() and not redo:
        meta = out.parent / f"{out.name}.run.json"
        return json.loads(meta.read_text()) if meta.is_file() else {"cached": True}
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[transplant] {out.name} ...", flush=True)
    if m.impl == "ours":
        from mergekit_tokenplug.surgery import transplant

        t0 = time.perf_counter()
        summary = transplant(
            str(base),
            str(donor),
            str(out),
            m.name,
            dict(m.params),
            seed=0,
            dtype="float32",
            device="cpu",
            quiet=True,
        )
        run = {"seconds": round(time.perf_counter() - t0, 1), **summary}
    else:
        exe = Path(sys.executable).parent / "mergekit-tokensurgeon"
        cmd = [
            str(exe),
            str(base),
            str(donor),
            str(out),
            "-a",
            m.name,
            "-k",
            str(m.params.get("k", 64)),
            "--device",
            "cpu",
        ]
        rc, wall, rss = run_measured(cmd, out.parent / f"{out.name}.log")
        if rc != 0:
            raise RuntimeError(
                f"mergekit-tokensurgeon exited {rc} (log {out.parent / (out.name + '.log')})"
            )
        done.write_text("ok\n")
        run = {"seconds": round(wall, 1), "peak_rss_mib": rss, "command": " ".join(cmd[1:])}
    print(f"[transplant] {out.name}: {run['seconds']}s", flush=True)
    (out.parent / f"{out.name}.run.json").write_text(json.dumps(run, indent=2, default=str))
    return run


def evaluate_cached(
    model_dir: Path, texts: list[Path], cache_dir: Path, redo: bool
) -> dict[str, Any]:
    """bpb of one model on every text (records cached per model directory name)."""
    from mergekit_tokenplug.evaluate.bpb import evaluate_models

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{model_dir.name}.json"
    if path.is_file() and not redo:
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    records = evaluate_models([model_dir], texts, window=512, show_progress=False)
    res = {Path(r["text"]).stem: round(float(r["bpb"]), 5) for r in records}
    res["mean"] = round(float(np.mean([res[Path(t).stem] for t in texts])), 5)
    res["eval_seconds"] = round(time.perf_counter() - t0, 1)
    res["tokens"] = {Path(r["text"]).stem: r["tokens"] for r in records}
    path.write_text(json.dumps(res, indent=2))
    print(f"[bpb] {model_dir.name}: mean {res['mean']:.4f} ({res['eval_seconds']}s)", flush=True)
    return res


def part_bpb(
    pair: str,
    base: Path,
    donor: Path,
    methods: list[Method],
    work: Path,
    redo: bool,
    references: dict[str, Path],
) -> dict[str, Any]:
    texts = [assets.text_path(n) for n in assets.TEXT_NAMES]
    rows: dict[str, Any] = {}
    for name, path in references.items():
        rows[name] = {
            "label": name,
            "impl": "reference",
            **evaluate_cached(path, texts, work / "bpb", redo),
        }
    for m in methods:
        out = work / "models" / f"{pair}-{m.slug}"
        try:
            run = build_model(m, base, donor, out, redo)
            rows[m.slug] = {
                "label": m.label,
                "impl": m.impl,
                "transplant": run,
                **evaluate_cached(out, texts, work / "bpb", redo),
            }
        except Exception as exc:
            LOG.exception("%s %s failed", pair, m.slug)
            rows[m.slug] = {
                "label": m.label,
                "impl": m.impl,
                "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
            }
    return rows


# --------------------------------------------------------------------------- reports


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def leave_out_tables(lo: dict[str, Any]) -> str:
    info, res = lo["info"], lo["methods"]
    n = info["categories"]
    head = (
        "| method | impl | cos | rel L2 | "
        + " | ".join(f"{c} (n={n[c]})" for c in CATEGORIES)
        + " | time s |"
    )
    sep = "|---|---|---:|---:|" + "---:|" * len(CATEGORIES) + "---:|"
    lines = [
        f"Leave-out: {info['hidden']} of {info['shared_regular']} shared regular tokens hidden "
        f"(seed {info['seed']}), {info['anchors']} anchors; Gemma rows estimated from SmolLM2. "
        "Per-category cells: mean cosine / mean relative L2.",
        "",
        head,
        sep,
    ]
    for r in res.values():
        if "error" in r:
            lines.append(
                f"| {r['label']} | {r['impl']} | crashed: {r['error']} |"
                + " |" * (len(CATEGORIES) + 2)
            )
            continue
        o = r["overall"]
        cells = [
            f"{_f(r['by_category'][c]['cos'])} / {_f(r['by_category'][c]['rel_l2'])}"
            for c in CATEGORIES
        ]
        lines.append(
            f"| {r['label']} | {r['impl']} | {_f(o['cos'])} | {_f(o['rel_l2'])} | "
            + " | ".join(cells)
            + f" | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def bpb_table(rows: dict[str, Any], title: str, ref: str) -> str:
    names = list(assets.TEXT_NAMES)
    base_mean = rows.get(ref, {}).get("mean")
    lines = [
        title,
        "",
        "| model | impl | " + " | ".join(names) + " | mean | Δ mean vs original | transplant s |",
        "|---|---|" + "---:|" * (len(names) + 3),
    ]
    for r in rows.values():
        if "error" in r:
            lines.append(
                f"| {r['label']} | {r['impl']} | failed: {r['error']} |" + " |" * (len(names) + 2)
            )
            continue
        delta = (
            r["mean"] - base_mean if base_mean is not None and r["impl"] != "reference" else None
        )
        secs = (r.get("transplant") or {}).get("seconds")
        lines.append(
            f"| {r['label']} | {r['impl']} | "
            + " | ".join(_f(r.get(n)) for n in names)
            + f" | {_f(r['mean'])} | {_f(delta)} | {secs if secs is not None else '-'} |"
        )
    return "\n".join(lines)


# One colour per algorithm, so ours and tokensurgeon's version of the same idea sit side by
# side in the same colour; tokensurgeon's bars are hatched, reference models grey.
FAMILY_COLOURS = {
    "omp": "tab:blue",
    "omp_map": "tab:gray",
    "tokenadapt-self": "tab:cyan",
    "tokenadapt-minilm": "tab:green",
    "subword_mean": "tab:red",
    "ts-subword": "tab:red",
    "mean": "tab:pink",
    "ts-mean": "tab:pink",
    "hewitt": "tab:brown",
    "cw2v": "tab:purple",
    "ts-omp": "tab:blue",
    "ts-common_interpolation": "tab:olive",
    "ts-landmark_pca": "tab:orange",
}


def _bar_style(slug: str, row: dict[str, Any]) -> dict[str, Any]:
    if row["impl"] == "reference":
        return {"color": "0.25" if "Gemma" in row["label"] else "0.6", "edgecolor": "white"}
    style = {"color": FAMILY_COLOURS.get(slug, "tab:pink"), "edgecolor": "white", "linewidth": 0.3}
    if row["impl"] == "tokensurgeon":
        style.update(hatch="///", edgecolor="black", linewidth=0.0, alpha=0.75)
    return style


def _grouped_bars(ax: Any, rows: dict[str, Any], groups: list[str], value: Callable) -> None:
    items = [(k, r) for k, r in rows.items() if "error" not in r]
    width = 0.84 / max(len(items), 1)
    for j, (slug, r) in enumerate(items):
        xs = np.arange(len(groups)) + (j - (len(items) - 1) / 2) * width
        ax.bar(xs, [value(r, g) for g in groups], width, label=r["label"], **_bar_style(slug, r))
    ax.set_xticks(np.arange(len(groups)))
    ax.grid(axis="y", alpha=0.3)


def make_figure(report: dict[str, Any], path: Path) -> None:
    """Leave-out cosine per category (top) and bpb after transplant (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = report.get("leave_out")
    bpb = report.get("bpb", {}).get("gemma_smollm2")
    panels = [p for p in (lo, bpb) if p]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 5.6 * len(panels)), squeeze=False)
    ax_i = 0
    if lo:
        ax = axes[ax_i, 0]
        ax_i += 1
        n_cat = lo["info"]["categories"]
        shown = [c for c in CATEGORIES if n_cat[c] > 0]
        groups = ["overall", *shown]

        def cos(r: dict[str, Any], g: str) -> float:
            return r["overall"]["cos"] if g == "overall" else r["by_category"][g]["cos"]

        _grouped_bars(ax, lo["methods"], groups, cos)
        ax.set_xticklabels(
            [f"overall\n(n={lo['info']['hidden']})"] + [f"{c}\n(n={n_cat[c]})" for c in shown]
        )
        empty = [c for c in CATEGORIES if n_cat[c] == 0]
        note = "".join(f", {c}: n=0" for c in empty)
        ax.set_ylabel("mean cosine to the true Gemma row")
        ax.set_title(
            "Leave-out reconstruction: hidden Gemma-3-270M rows estimated from SmolLM2-135M\n"
            f"{lo['info']['hidden']} of {lo['info']['shared_regular']} shared tokens hidden{note}; "
            "solid = tokenplug, hatched = tokensurgeon (same colour = same algorithm)",
            fontsize=11,
        )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.legend(ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    if bpb:
        ax = axes[ax_i, 0]
        names = [*assets.TEXT_NAMES, "mean"]
        _grouped_bars(ax, bpb, names, lambda r, g: r[g])
        ax.set_xticklabels(names)
        ax.set_ylabel("bits per byte (lower is better)")
        ax.set_title(
            "Bits per byte of Gemma-3-270M wearing SmolLM2's tokenizer (512-token windows, fp32)\n"
            "dark grey = original Gemma, light grey = original SmolLM2; hatched = tokensurgeon",
            fontsize=11,
        )
        ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--methods", default="", help="comma-separated slugs (default: all)")
    ap.add_argument("--skip-leaveout", action="store_true")
    ap.add_argument("--skip-bpb", action="store_true")
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--redo", action="store_true", help="recompute cached results")
    ap.add_argument("--out-dir", type=Path, default=OUT / "quality")
    ap.add_argument("--json", type=Path, default=OUT / "quality.json")
    ap.add_argument("--md", type=Path, default=OUT / "quality.md")
    ap.add_argument("--figure", type=Path, default=REPO / "bench" / "quality_figure.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    texts = [str(assets.text_path(n)) for n in assets.TEXT_NAMES]
    wanted = {s for s in args.methods.split(",") if s}
    known = {m.slug for m in all_methods(texts)}
    if wanted - known:
        ap.error(f"unknown methods {sorted(wanted - known)}; valid: {', '.join(sorted(known))}")

    def pick(ms: list[Method]) -> list[Method]:
        return [m for m in ms if not wanted or m.slug in wanted]

    report: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    report.setdefault("bpb", {})
    report.pop("wall_seconds", None)
    # this invocation only: cached steps cost ~0; per-step costs are stored with each result
    timings = report["wall_seconds_last_run"] = {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    if not args.skip_leaveout:
        t0 = time.perf_counter()
        report["leave_out"] = part_leave_out(
            pick(all_methods(texts)), report.get("leave_out", {}), args.redo
        )
        timings["leave_out"] = round(time.perf_counter() - t0, 1)
        args.json.write_text(json.dumps(report, indent=2))
    if not args.skip_bpb:
        t0 = time.perf_counter()
        corpus = cw2v_train_corpus(args.out_dir / "cw2v_corpus")
        ms = [m for m in pick(all_methods(corpus)) if m.impl == "ours" or m.slug == "ts-omp"]
        # the MiniLM embedding of Gemma's 262k vocabulary dominates the runtime: run it last
        ms.sort(key=lambda m: m.slug == "tokenadapt-minilm")
        gemma, smollm2 = assets.model_dir("gemma3"), assets.model_dir("smollm2")
        rows = part_bpb(
            "gemma-smollm2",
            gemma,
            smollm2,
            ms,
            args.out_dir,
            args.redo,
            {"Gemma-3-270M (original)": gemma, "SmolLM2-135M (donor, original)": smollm2},
        )
        report["bpb"]["gemma_smollm2"] = {**report["bpb"].get("gemma_smollm2", {}), **rows}
        timings["bpb_gemma_smollm2"] = round(time.perf_counter() - t0, 1)
        args.json.write_text(json.dumps(report, indent=2))
    if not args.skip_gpt2:
        t0 = time.perf_counter()
        gpt2 = assets.prepare_gpt2_tokenizer()
        ms = [
            m
            for m in pick(all_methods(texts))
            if m.slug in ("tokenadapt-self", "subword_mean", "mean")
        ]
        smollm2 = assets.model_dir("smollm2")
        rows = part_bpb(
            "smollm2-gpt2",
            smollm2,
            gpt2,
            ms,
            args.out_dir,
            args.redo,
            {"SmolLM2-135M (original)": smollm2},
        )
        report["bpb"]["smollm2_gpt2"] = {**report["bpb"].get("smollm2_gpt2", {}), **rows}
        report["gpt2_tokenizer"] = str(gpt2)
        timings["bpb_smollm2_gpt2"] = round(time.perf_counter() - t0, 1)
    timings["this_run"] = round(time.perf_counter() - t_all, 1)
    order = [m.slug for m in all_methods(texts)]
    for key, rows in report["bpb"].items():  # references first, then the methods' order
        report["bpb"][key] = dict(
            sorted(
                rows.items(),
                key=lambda kv: (
                    kv[1]["impl"] != "reference",
                    order.index(kv[0]) if kv[0] in order else -1,
                ),
            )
        )

    md = []
    if "leave_out" in report:
        md.append(
            "## Leave-out reconstruction (Gemma-3-270M <- SmolLM2-135M)\n\n"
            + leave_out_tables(report["leave_out"])
        )
    bpb_sections = (  # (report key, heading, note, reference row)
        (
            "gemma_smollm2",
            "Gemma-3-270M with SmolLM2's tokenizer",
            "512-token windows, fp32, CPU. Lower is better.",
            "Gemma-3-270M (original)",
        ),
        (
            "smollm2_gpt2",
            "SmolLM2-135M with the GPT-2 vocabulary (no donor model)",
            "Tokenizer-only target; methods that need no donor.",
            "SmolLM2-135M (original)",
        ),
    )
    for key, heading, note, ref in bpb_sections:
        if report["bpb"].get(key):
            md.append(f"## Bits per byte: {heading}\n\n" + bpb_table(report["bpb"][key], note, ref))
    text = "\n\n".join(md) + "\n"
    print(text)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text)
    args.json.write_text(json.dumps(report, indent=2))
    make_figure(report, args.figure)
    print(f"wrote {args.json}, {args.md}, {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
