"""Held-out bits per byte of transplanted models, and where the cost sits per token class.

Every model is scored on the held-out texts (``texts/heldout/*.txt`` of ``bench/assets.py``;
the default method was chosen on ``texts/tune/`` only). The cost of a transplanted model is
its bits per byte minus the original Gemma's. It is split over the *classes of the tokens
being predicted* (SmolLM2 tokens, classed by the plugin's alignment onto Gemma):

* ``exact`` / ``canonical``: the row is a copy of a Gemma row (same string / same bytes);
* ``byte-fallback copy``: a copy of a Gemma ``<0xNN>`` byte piece;
* ``special``: mapped by role;
* ``estimated``: the row was estimated by the method.

Per token t: cost(t) = bits the model spends on t minus the bits Gemma (own tokenizer) spends
on the same bytes (each Gemma token's bits spread evenly over its bytes). Summed over a class
and divided by the text's bytes, the classes add up to the text's cost. Both models read with
a BOS token in 512-token windows, as ``mergekit-tokenplug evaluate`` does (so every token is
scored and the per-token sum equals evaluate's bits per byte; checked at run time).

    python bench/bench_default.py --model "omp_map=DIR" --model "omp=DIR" \\
        --model "tokensurgeon=DIR" [--json bench/out/default.json] [--md bench/out/default.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)

REPO = Path(__file__).resolve().parent.parent
LANGS = ("en", "de", "es", "fr", "ru", "zh")
CLASSES = ("exact", "canonical", "byte-fallback copy", "special", "estimated")


@torch.inference_mode()
def token_bits(model: Any, tokenizer: Any, text: str, window: int = 512) -> np.ndarray:
    """Bits per text token, scored as ``evaluate.bpb.bits_per_byte`` scores them (BOS first)."""
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is None:
        raise SystemExit("this bench expects tokenizers with a BOS token")
    out = []
    for i in range(0, len(ids), window):
        chunk = torch.tensor([[bos, *ids[i : i + window]]])
        logits = model(input_ids=chunk).logits[0, :-1].float()
        out.append(F.cross_entropy(logits, chunk[0, 1:], reduction="none") / np.log(2))
    return torch.cat(out).numpy().astype(np.float64)


def byte_lengths(tokenizer: Any, text: str) -> np.ndarray:
    from mergekit_tokenplug.evaluate.bpb import _token_byte_lengths

    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return np.asarray(_token_byte_lengths(tokenizer, text, ids), dtype=np.int64)


def token_classes(tokenizer: Any) -> np.ndarray:
    """Class index (into CLASSES) of every SmolLM2 id, from the plugin's alignment onto Gemma."""
    from mergekit.common import ModelReference

    from mergekit_tokenplug.seam.vocab_task import make_vocab_plan
    from mergekit_tokenplug.vocab.align import CANONICAL, EXACT, SPECIAL
    from mergekit_tokenplug.vocab.canonical import is_byte_piece

    gemma = assets.model_dir("gemma3")
    plan = make_vocab_plan(tokenizer, [ModelReference.parse(str(gemma))])
    mv = next(iter(plan.models.values()))
    src, how = mv.alignment.src_ids, mv.alignment.how
    g_tokens = mv.tokenizer.convert_ids_to_tokens([int(max(s, 0)) for s in src])
    cls = np.full(len(src), CLASSES.index("estimated"), dtype=np.int64)
    cls[how == EXACT] = CLASSES.index("exact")
    cls[how == CANONICAL] = CLASSES.index("canonical")
    byte = np.array([is_byte_piece(t) for t in g_tokens]) & (how == CANONICAL)
    cls[byte] = CLASSES.index("byte-fallback copy")
    cls[how == SPECIAL] = CLASSES.index("special")
    return cls


def load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, tok


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


def score_to(out_dir: Path, label: str, model_dir: Path, texts: dict[str, str], redo: bool) -> None:
    """Per-token bits, byte lengths and ids of one model, one ``LABEL-LANG.npz`` per text."""
    todo = [g for g in texts if redo or not (out_dir / f"{slug(label)}-{g}.npz").is_file()]
    if not todo:
        return
    model, tok = load(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for lang in todo:
        text = texts[lang]
        ids = np.asarray(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
        bits = token_bits(model, tok, text)
        lens = byte_lengths(tok, text)
        np.savez(out_dir / f"{slug(label)}-{lang}.npz", ids=ids, bits=bits, lens=lens)
        print(f"[{label}] {lang}: {bits.sum() / len(text.encode('utf-8')):.4f}", flush=True)


def scores(out_dir: Path, label: str) -> dict[str, np.ndarray]:
    """What ``score_to`` saved, as {"bits_LANG": ..., "lens_LANG": ..., "ids_LANG": ...}."""
    result = {}
    for lang in LANGS:
        with np.load(out_dir / f"{slug(label)}-{lang}.npz") as f:
            result.update({f"{k}_{lang}": f[k] for k in f.files})
    return result


def gemma_per_byte(ref: Any, lang: str) -> np.ndarray:
    """Gemma's bits spread evenly over the bytes of each of its tokens."""
    lens = ref[f"lens_{lang}"]
    return np.repeat(ref[f"bits_{lang}"] / np.maximum(lens, 1), lens)


def model_rows(ref: Any, arrays: Any, classes: np.ndarray, texts: dict[str, str]) -> dict[str, Any]:
    """bpb, cost and the cost split by class of one model (see the module docstring)."""
    rows: dict[str, Any] = {}
    for lang, text in texts.items():
        n_bytes = len(text.encode("utf-8"))
        per_byte = gemma_per_byte(ref, lang)
        cum = np.concatenate([[0.0], np.cumsum(per_byte)])
        ids, bits, lens = arrays[f"ids_{lang}"], arrays[f"bits_{lang}"], arrays[f"lens_{lang}"]
        ends = np.cumsum(lens)
        cost = bits - (cum[ends] - cum[ends - lens])
        c = classes[ids]
        bpb, g_bpb = float(bits.sum() / n_bytes), float(per_byte.sum() / n_bytes)
        rows[lang] = {
            "bpb": bpb,
            "cost": bpb - g_bpb,
            "tokens": int(len(ids)),
            "by_class": {
                name: {"tokens": int((c == i).sum()), "cost": float(cost[c == i].sum() / n_bytes)}
                for i, name in enumerate(CLASSES)
            },
        }
    rows["mean"] = {
        "bpb": float(np.mean([rows[g]["bpb"] for g in LANGS])),
        "cost": float(np.mean([rows[g]["cost"] for g in LANGS])),
        "by_class": {
            name: float(np.mean([rows[g]["by_class"][name]["cost"] for g in LANGS]))
            for name in CLASSES
        },
    }
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", action="append", default=[], help="LABEL=DIR; repeatable")
    ap.add_argument("--texts", type=Path, default=assets.cache_root() / "texts" / "heldout")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out" / "default")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "default.json")
    ap.add_argument("--md", type=Path, default=REPO / "bench" / "out" / "default.md")
    ap.add_argument("--redo", action="store_true", help="re-score models already scored")
    ap.add_argument(
        "--score-only", action="store_true", help="score the models given, write no report"
    )
    ap.add_argument("--langs", default="", help="score only these texts (e.g. ru,zh)")
    ap.add_argument("--gemma", action="store_true", help="with --score-only: score Gemma too")
    args = ap.parse_args(argv)
    texts = {lang: (args.texts / f"{lang}.txt").read_text(encoding="utf-8") for lang in LANGS}
    # Each model's per-token scores are kept in --out-dir: several processes may score models
    # in parallel (--score-only), and a last call assembles the report from what is there.
    models = [("Gemma-3-270M, own tokenizer", str(assets.model_dir("gemma3")))]
    models += [tuple(spec.rpartition("=")[::2]) for spec in args.model]
    if args.score_only and not args.gemma:
        models = models[1:]
    wanted = {g: texts[g] for g in args.langs.split(",")} if args.langs else texts
    for label, path in models:
        score_to(args.out_dir, label, Path(path), wanted, args.redo)
    if args.score_only:
        return 0
    ref = scores(args.out_dir, models[0][0])
    from transformers import AutoTokenizer

    classes = token_classes(AutoTokenizer.from_pretrained(str(assets.model_dir("smollm2"))))
    report: dict[str, Any] = {
        "texts": str(args.texts),
        "gemma": {
            g: float(gemma_per_byte(ref, g).sum() / len(texts[g].encode("utf-8"))) for g in LANGS
        },
        "models": {},
    }
    for label, path in models[1:]:
        rows = model_rows(ref, scores(args.out_dir, label), classes, texts)
        report["models"][label] = {**rows, "path": path}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    md = tables(report)
    args.md.write_text(md)
    print(md)
    return 0


def tables(report: dict[str, Any]) -> str:
    """bpb per text (+ cost and ratio to tokensurgeon's cost) and the cost split per class."""
    g = report["gemma"]
    lines = [
        "| model | " + " | ".join(LANGS) + " | mean | cost | cost / tokensurgeon's |",
        "|---|" + "---:|" * (len(LANGS) + 3),
        f"| Gemma-3-270M, own tokenizer | {' | '.join(f'{g[x]:.3f}' for x in LANGS)} | {np.mean([g[x] for x in LANGS]):.3f} | 0 | |",
    ]
    ts = next((r["mean"]["cost"] for k, r in report["models"].items() if "tokensurgeon" in k), None)
    for label, r in report["models"].items():
        ratio = f"{r['mean']['cost'] / ts:.2f}" if ts else ""
        lines.append(
            f"| {label} | {' | '.join(format(r[x]['bpb'], '.3f') for x in LANGS)} | {r['mean']['bpb']:.3f} | {r['mean']['cost']:.3f} | {ratio} |"
        )
    lines += [
        "",
        "Cost (bits per byte over Gemma) by class of the predicted token, mean over the texts; tokens per class in brackets for zh / ru:",
        "",
    ]
    lines += ["| model | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for label, r in report["models"].items():
        cells = [
            f"{r['mean']['by_class'][c]:+.3f} ({r['zh']['by_class'][c]['tokens']} / {r['ru']['by_class'][c]['tokens']})"
            for c in CLASSES
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
