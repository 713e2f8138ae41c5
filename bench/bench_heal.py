"""``heal`` on the real pair: SmolLM2-135M's tokenizer on Gemma-3-270M (the default transplant),
then 60 steps of row-only training on a multilingual Debian corpus.

Per language: bits per byte of the original Gemma (its own tokenizer), of the transplant, and
of the healed model, and the share of the transplant's cost (bpb minus the original's) that
healing removed. The heal corpus (``texts/heal/*.txt``), the texts the defaults were chosen on
(``texts/tune``) and the reported texts (``texts/heldout``) are disjoint regions of the same
Debian documents (``bench/assets.py``); ``texts/prose-tune`` and ``texts/prose-heldout`` are
disjoint regions of literature, quotations and poetry in six languages from other sources,
what a heal must not make worse.

    python bench/bench_heal.py [--texts heldout|tune|prose-heldout|prose-tune] [--transplant DIR] [--out-dir DIR]
        [--name NAME] [-- HEAL OPTIONS...]

The transplant is written by ``transplant(...)`` (default method, float32) into ``--out-dir``
unless ``--transplant`` names one; bpb records are cached there. ``heal`` runs as a
subprocess under ``/usr/bin/time -v`` (wall time and peak RSS of the whole command); the
load average before and after is printed, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)

LANGS = ("de", "en", "es", "fr", "ru", "zh")
BIN = Path(sys.executable).parent


def bpb_records(model: Path, texts: list[Path], cache: Path) -> dict[str, float]:
    """{language: bpb} of ``model`` on ``texts`` (cached as JSON next to the runs)."""
    if cache.exists():
        return json.loads(cache.read_text())
    from mergekit_tokenplug.evaluate.bpb import evaluate_models

    recs = evaluate_models([model], texts, show_progress=False)
    result = {Path(r["text"]).stem: r["bpb"] for r in recs}
    cache.write_text(json.dumps(result, indent=2))
    return result


def ensure_transplant(out_dir: Path) -> Path:
    from mergekit_tokenplug.registry import DEFAULT_METHOD

    out = out_dir / DEFAULT_METHOD
    if not (out / "tokenplug_manifest.json").exists():
        from mergekit_tokenplug.surgery import transplant

        root = assets.cache_root()
        transplant(
            str(root / "models/gemma3-270m"),
            str(root / "models/smollm2-135m"),
            str(out),
            dtype="float32",
            overwrite=True,
            quiet=True,
        )
    return out


def with_row_ids(transplant_dir: Path, out_dir: Path) -> Path:
    """A transplant whose manifest predates the estimated-row record: a copy (hard links)
    whose manifest gets the record, computed by the seam's own alignment and checked against
    the manifest's estimated-row count."""
    manifest = json.loads((transplant_dir / "tokenplug_manifest.json").read_text())
    recs = manifest["report"]["matrices"]
    if all("row_ids" in r for r in recs):
        return transplant_dir
    import transformers

    from mergekit_tokenplug.output.manifest import expand_ranges
    from mergekit_tokenplug.seam.vocab_task import _row_ids
    from mergekit_tokenplug.vocab.align import align_vocab

    out = out_dir / f"{transplant_dir.name}-row-ids"
    if (out / "tokenplug_manifest.json").exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    out_tok = transformers.AutoTokenizer.from_pretrained(transplant_dir)
    for rec in recs:
        base = Path(next(i["path"] for i in manifest["inputs"] if i["role"] == "model"))
        base_tok = transformers.AutoTokenizer.from_pretrained(base)
        base_rows = transformers.AutoConfig.from_pretrained(base).get_text_config().vocab_size
        n_tokens = min(max(out_tok.get_vocab().values()) + 1, rec["rows"])
        alignment = align_vocab(out_tok, base_tok, model_rows=base_rows, out_rows=n_tokens)
        rec["row_ids"] = _row_ids(alignment, None, base_tok)
        assert len(expand_ranges(rec["row_ids"]["estimated"])) == rec["estimated"], rec
    for f in transplant_dir.iterdir():
        if f.name != "tokenplug_manifest.json":
            os.link(f, out / f.name)
    (out / "tokenplug_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def timed_heal(
    model: Path,
    out: Path,
    heal_args: list[str],
    summary: Path,
    processes: int = 1,
    corpus: str | None = None,
) -> dict[str, Any]:
    """Run heal; /usr/bin/time's peak RSS is that of the largest single process."""
    corpus = corpus or str(assets.cache_root() / "texts/heal/*.txt")
    launcher = [str(BIN / "mergekit-tokenplug")]
    if processes > 1:  # accelerate's torchrun launcher (works without GPUs)
        launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                    str(processes), "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "-m", "mergekit_tokenplug"]  # fmt: skip
    cmd = ["/usr/bin/time", "-v", *launcher, "heal", str(model), str(out)]
    cmd += ["--corpus", corpus, "--json", str(summary), "--overwrite", *heal_args]
    log = summary.with_suffix(".log")  # progress bar and /usr/bin/time's report
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    report = log.read_text()
    if proc.returncode:
        sys.exit(f"heal failed:\n{report[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
    return {
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(rss_kb / 2**20, 2),
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "summary": json.loads(summary.read_text()),
    }


def table(orig: dict, trans: dict, healed: dict) -> tuple[str, float]:
    lines = [
        "| text | original | transplant | healed | cost cut |",
        "|---|---:|---:|---:|---:|",
    ]
    cuts = []
    for lang in sorted(orig):
        cost, left = trans[lang] - orig[lang], healed[lang] - orig[lang]
        cut = 100.0 * (cost - left) / cost
        cuts.append(cut)
        lines.append(
            f"| {lang} | {orig[lang]:.3f} | {trans[lang]:.3f} | {healed[lang]:.3f} | {cut:+.1f} % |"
        )
    mean = {k: sum(d[lang] for lang in orig) / len(orig) for k, d in (("o", orig), ("t", trans), ("h", healed))}
    mean_cut = sum(cuts) / len(cuts)
    cost_cut = 100.0 * (mean["t"] - mean["h"]) / (mean["t"] - mean["o"])
    lines.append(
        f"| **mean** | {mean['o']:.3f} | {mean['t']:.3f} | {mean['h']:.3f} | "
        f"**{cost_cut:+.1f} %** of the mean cost ({mean_cut:+.1f} % mean of the cuts) |"
    )
    return "\n".join(lines), cost_cut


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--texts",
        choices=("heldout", "tune", "prose-heldout", "prose-tune"),
        default="heldout",
        help="heldout/tune: regions of the Debian documents the heal corpus comes from; "
        "prose-*: literature, quotations and poetry from other sources (assets.py prose).",
    )
    ap.add_argument("--transplant", type=Path, default=None)
    ap.add_argument("--out-dir", type=Path, default=Path("bench/out/heal"))
    ap.add_argument(
        "--name", default="default", help="Name of this heal variant (its cache key: a second "
        "run with the same name scores the healed model it wrote on --texts, without healing again)."
    )
    ap.add_argument("--processes", type=int, default=1, help="Data-parallel CPU processes.")
    ap.add_argument(
        "--corpus", help="Heal corpus (file or glob).  [default: the Debian corpus, texts/heal]"
    )
    ap.add_argument("heal_args", nargs="*", help="Options passed to `heal` (after --).")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    root = assets.cache_root()
    if args.texts.startswith("prose"):
        texts = [assets.prose_path(args.texts, name) for name in assets.PROSE_SOURCES]
    else:
        texts = [root / "texts" / args.texts / f"{lang}.txt" for lang in LANGS]
    model = with_row_ids(args.transplant or ensure_transplant(args.out_dir), args.out_dir)
    tag = args.texts
    healed_dir = args.out_dir / f"healed-{args.name}"
    run_file = args.out_dir / f"run-{args.name}.json"
    if run_file.exists() and (healed_dir / "tokenplug_manifest.json").exists():
        run = json.loads(run_file.read_text())  # the same variant scored on other texts
    else:
        summary = args.out_dir / f"summary-{args.name}.json"
        run = timed_heal(
            model, healed_dir, args.heal_args, summary, args.processes, args.corpus
        )
        run_file.write_text(json.dumps(run, indent=2))
    healed = bpb_records(healed_dir, texts, args.out_dir / f"bpb-{args.name}-{tag}.json")
    trans = bpb_records(model, texts, args.out_dir / f"bpb-transplant-{tag}.json")
    orig = bpb_records(root / "models/gemma3-270m", texts, args.out_dir / f"bpb-original-{tag}.json")
    md, mean_cut = table(orig, trans, healed)
    s = run["summary"]
    print(md)
    print(
        f"\nheal {' '.join(args.heal_args) or '(defaults)'}: {s['rows']['count']} rows, "
        f"wall {run['wall_s']} s, peak RSS {run['peak_rss_gb']} GB, load average "
        f"{run['load_before']:.1f} -> {run['load_after']:.1f}; corpus held-out bpb "
        f"{s['heldout_before']['bpb']:.3f} -> {s['heldout_after']['bpb']:.3f}"
    )
    record = {"name": args.name, "texts": tag, "heal_args": args.heal_args, "mean_cost_cut": mean_cut,
              "original": orig, "transplant": trans, "healed": healed,
              **{k: v for k, v in run.items() if k != "summary"}}
    (args.out_dir / f"result-{args.name}-{tag}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
