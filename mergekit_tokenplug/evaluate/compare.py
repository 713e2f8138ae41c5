"""``compare``: which method is best for *this* pair? (leave-out per method and token category)

A seeded fraction of the shared regular tokens is hidden and estimated from the rest by each
method, through the same fill code a transplant runs (``fill._estimate_missing``). The hidden set
is drawn to match the category mix of the tokens the base really lacks: a uniform draw
over-represents frequent whole words, which are the easy case. Hiding is strict, so no method
can read a hidden row back:

* the base matrix the methods see has the hidden rows removed (ids compacted), and shared
  tokens that copy the same base row as a hidden token are dropped from the anchors;
* texts are split by a base tokenizer *without* the hidden tokens (removed from a BPE
  vocabulary with every merge that makes or uses them).

``tokensurgeon:NAME`` entries run mergekit-tokensurgeon's own code on the same leave-out
(``tokensurgeon_ref``). Only the input embeddings are compared. Leave-out scores shared tokens,
which are easier than truly new ones: with ``texts`` each of the plugin's methods also runs a
real transplant and bits per byte on those texts are reported, the figure to decide by.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.evaluate import tokensurgeon_ref
from mergekit_tokenplug.evaluate.bpb import evaluate_models
from mergekit_tokenplug.evaluate.holdout import HoldOut
from mergekit_tokenplug.fill import FillReport, SourceSpace, TextSupport, plan_fill
from mergekit_tokenplug.fill import _estimate_missing as estimate_rows
from mergekit_tokenplug.inputs import check_model_dir
from mergekit_tokenplug.methods.base import TEXT_NEEDS, MethodSpec, Need
from mergekit_tokenplug.registry import all_methods, get
from mergekit_tokenplug.seam.method_resources import method_inputs
from mergekit_tokenplug.seam.roles import role_weight
from mergekit_tokenplug.seam.vocab_task import make_vocab_plan
from mergekit_tokenplug.surgery import transplant
from mergekit_tokenplug.vocab.align import CANONICAL, EXACT
from mergekit_tokenplug.vocab.canonical import canonical_forms
from mergekit_tokenplug.vocab.texts import split_texts, token_texts

LOG = logging.getLogger(__name__)

#: Token categories, a partition: each token gets the first that applies.
CATEGORIES: tuple[str, ...] = (
    "multi-byte",
    "digits",
    "punctuation",
    "long",
    "word-start",
    "continuation",
)


def token_category(form: bytes) -> str:
    """Category of a token from its canonical bytes (leading space = word start)."""
    if any(b >= 0x80 for b in form):
        return "multi-byte"
    text = form.decode("ascii")
    if any(c.isdigit() for c in text):
        return "digits"
    stripped = text.strip()
    if stripped and all(unicodedata.category(c)[0] in "PS" for c in stripped):
        return "punctuation"
    if len(stripped) >= 8:
        return "long"
    return "word-start" if text.startswith(" ") else "continuation"


def draw_matching(
    pool_cats: Sequence[str], mix: dict[str, float], n: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions into ``pool_cats``: ``n`` draws split over categories as ``mix`` says
    (largest remainder), each category capped at what the pool holds."""
    cats = np.asarray(pool_cats)
    raw = {c: n * mix.get(c, 0.0) for c in CATEGORIES}
    quota = {c: int(np.floor(v)) for c, v in raw.items()}
    short = n - sum(quota.values())
    for c in sorted(CATEGORIES, key=lambda c: (-(raw[c] - quota[c]), CATEGORIES.index(c)))[:short]:
        quota[c] += 1
    picked = []
    for c in CATEGORIES:
        pos = np.flatnonzero(cats == c)
        take = min(quota[c], len(pos))
        if take:
            picked.append(rng.choice(pos, size=take, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def tokenizer_without(tokenizer: Any, tokens: set[str]) -> Any:
    """A copy of a BPE ``tokenizer`` that does not know ``tokens``: removed from the vocabulary
    and the added tokens, with every merge that makes or uses one of them. Other ids are
    unchanged, so the result indexes the same matrix. None for other model types."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        return None
    for t in tokens:
        model["vocab"].pop(t, None)

    def pair(m: Any) -> tuple[str, str]:
        return tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1))  # type: ignore[return-value]

    model["merges"] = [m for m in model["merges"] if not ({*pair(m), "".join(pair(m))} & tokens)]
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] not in tokens]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


def _matrix(ref: Any) -> torch.Tensor:
    """A model's input embedding matrix, read through mergekit's lazy loader."""
    from mergekit.io.tasks import LoaderCache

    w = role_weight(ref, "input", False)
    names = [*(w.aliases or ()), *(w.tied_names or ())]
    return LoaderCache().get(ref).get_tensor(w.name, aliases=names).float()


def prepare_holdout(base: str, donor: str, fraction: float = 0.05, seed: int = 0) -> HoldOut:
    """Align, draw the hidden set (seeded, matched to the missing tokens' mix) and hide it."""
    from mergekit.common import ModelReference
    from transformers import AutoTokenizer

    if not 0.0 < fraction < 1.0:
        raise InputError(f"--hold-out must be between 0 and 1 (got {fraction})", where="compare")
    check_model_dir(base, where="BASE")
    check_model_dir(donor, where="DONOR", need_weights=False, need_tokenizer=True)
    base_ref, donor_ref = ModelReference.parse(base), ModelReference.parse(donor)
    donor_has_model = (Path(donor) / "config.json").is_file() and any(
        Path(donor).glob("*.safetensors")
    )
    out_tok = AutoTokenizer.from_pretrained(donor)
    plan = make_vocab_plan(out_tok, [base_ref], donor=donor_ref if donor_has_model else None)
    mv = next(iter(plan.models.values()))
    src, how = mv.alignment.src_ids, mv.alignment.how
    n = plan.n_tokens
    donor_ok = (
        plan.donor.alignment.src_ids >= 0 if plan.donor is not None else np.ones(n, dtype=bool)
    )
    regular = plan.regular
    shared = np.flatnonzero(regular & np.isin(how, [EXACT, CANONICAL]) & donor_ok)
    missing = np.flatnonzero(regular & (src < 0) & donor_ok)
    if len(shared) < 2:
        raise InputError(
            f"{base} and {donor} share fewer than 2 regular tokens; nothing to compare",
            where="compare",
        )
    forms = canonical_forms(out_tok)
    cat_of = {int(i): token_category(forms.get(int(i), b"")) for i in (*shared, *missing)}
    missing_mix = {c: sum(cat_of[int(i)] == c for i in missing) for c in CATEGORIES}
    pool_cats = [cat_of[int(i)] for i in shared]
    if len(missing):
        mix = {c: v / len(missing) for c, v in missing_mix.items()}
    else:  # nothing is missing: the shared tokens' own mix
        mix = {c: pool_cats.count(c) / len(shared) for c in CATEGORIES}
    n_hide = min(max(1, round(fraction * len(shared))), len(shared) - 1)
    rng = np.random.default_rng(seed)
    hidden_out = shared[draw_matching(pool_cats, mix, n_hide, rng)]
    hidden_base = np.unique(src[hidden_out])
    anchor_out = np.setdiff1d(shared, hidden_out)
    anchor_out = anchor_out[~np.isin(src[anchor_out], hidden_base)]

    full = _matrix(base_ref)
    keep = ~np.isin(np.arange(full.shape[0]), hidden_base)
    compact = np.where(keep, np.cumsum(keep) - 1, -1)
    out_to_base = np.where(src >= 0, compact[np.maximum(src, 0)], -1)
    out_to_base[~np.isin(np.arange(n), anchor_out)] = -1  # only anchors are known rows
    compact_base = full[torch.from_numpy(keep)].contiguous()

    donor_space = None
    if plan.donor is not None:
        donor_space = SourceSpace(
            f"donor {donor}", _matrix(donor_ref), plan.donor.alignment.src_ids, anchor_mask=regular
        )
    base_tok = mv.tokenizer
    cut = tokenizer_without(base_tok, set(base_tok.convert_ids_to_tokens(hidden_base.tolist())))
    texts = None
    if cut is not None:
        out_texts = token_texts(out_tok, range(n))

        def split_base(items: list[str]) -> list[list[int]]:
            result = []
            for ids in split_texts(cut, items, running_text=True):
                rows = compact[[i for i in ids if i < len(compact)]]
                if (rows < 0).any():
                    raise RuntimeError("a hidden token came out of the tokenizer without it")
                result.append(rows.tolist())
            return result

        vocab_texts = token_texts(base_tok, range(full.shape[0]))
        texts = TextSupport(
            out_texts=lambda ids: [out_texts[int(i)] for i in ids],
            split_base=split_base,
            base_vocab_texts=lambda: [vocab_texts[i] for i in np.flatnonzero(keep)],
        )
    return HoldOut(
        base=compact_base,
        true=full[torch.from_numpy(src[hidden_out])].clone(),
        hidden_out=hidden_out,
        anchor_out=anchor_out,
        out_to_base=out_to_base,
        hidden_base=hidden_base,
        compact=compact,
        regular=regular,
        donor_space=donor_space,
        texts=texts,
        categories=[cat_of[int(i)] for i in hidden_out],
        missing_mix=missing_mix,
        plan=plan,
        base_ref=base_ref,
        seed=seed,
        info={"shared": int(len(shared)), "missing": int(len(missing)), "requested": int(n_hide)},
        out_tokenizer=out_tok,
        cut_tokenizer=cut,
        donor_ref=donor_ref,
    )


def cannot_run(spec: MethodSpec, holdout: HoldOut) -> str | None:
    """Why ``spec`` cannot run on this pair with its default parameters (None if it can)."""
    if Need.MODEL_FORWARD in spec.needs:  # checked before the other text needs
        return "needs the base model's forward pass, which a leave-out does not run"
    if Need.DONOR_EMBEDDINGS in spec.needs and holdout.donor_space is None:
        return "needs donor embeddings; the donor has no weights"
    if spec.needs & TEXT_NEEDS and holdout.texts is None:
        return "needs the base tokenizer split without hidden tokens (only BPE bases)"
    try:
        spec.parse_params({})
    except ConfigError as exc:
        return f"needs parameters: {exc}"
    return None


def estimate_hidden(
    holdout: HoldOut, spec: MethodSpec, params: Any, *, show_progress: bool = True
) -> torch.Tensor:
    """Rows of the hidden tokens estimated by ``spec``, through the transplant's fill code."""
    texts = holdout.texts
    inputs = method_inputs(
        spec,
        params,
        model=holdout.base_ref,
        plan=holdout.plan,
        role="input",
        device=holdout.base.device,
        show_progress=show_progress,
    )
    if inputs and texts is not None:
        if "context_matrix" in inputs:  # the full matrix holds the hidden rows: never show it
            inputs["context_matrix"] = holdout.base
        texts = dataclasses.replace(texts, inputs={**texts.inputs, **inputs})
    sources = [holdout.donor_space] if holdout.donor_space is not None else []
    # The run's own fill plan, kept to the hidden ids (other missing ids are not scored).
    _, missing, groups = plan_fill(holdout.out_to_base, sources, spec, anchor_mask=holdout.regular)
    hidden_groups = [
        dataclasses.replace(g, positions=g.positions[keep], out_ids=g.out_ids[keep])
        for g in groups
        if (keep := np.isin(g.out_ids, holdout.hidden_out)).any()
    ]
    rows = estimate_rows(
        model="base",
        role="input",
        base=holdout.base,
        src_ids=holdout.out_to_base,
        missing=missing,
        groups=hidden_groups,
        spec=spec,
        params=params,
        texts=texts,
        seed=holdout.seed,
        show_progress=show_progress,
        report=FillReport(model="base", role="input", rows=len(holdout.hidden_out)),
    )
    return rows[torch.as_tensor(np.searchsorted(missing, holdout.hidden_out))]


def score(est: torch.Tensor, true: torch.Tensor, cats: Sequence[str]) -> dict[str, Any]:
    """Mean cosine and relative L2 error, overall and per category."""
    est, true = est.float(), true.float()
    cos = torch.nn.functional.cosine_similarity(est, true, dim=1).numpy()
    rel = ((est - true).norm(dim=1) / true.norm(dim=1).clamp_min(1e-12)).numpy()
    labels = np.asarray(cats)
    per = {
        c: {"n": int(m.sum()), "cos": float(cos[m].mean()), "rel_l2": float(rel[m].mean())}
        for c in CATEGORIES
        if (m := labels == c).any()
    }
    return {"cos": float(cos.mean()), "rel_l2": float(rel.mean()), "categories": per}


def compare_methods(
    base: str,
    donor: str,
    methods: Sequence[str] | None = None,
    *,
    fraction: float = 0.05,
    seed: int = 0,
    texts: Sequence[str] = (),
    show_progress: bool = True,
    on_holdout: Callable[[HoldOut], None] | None = None,
) -> dict[str, Any]:
    """The ``compare`` report (see the module docstring); JSON-ready."""
    specs: list[MethodSpec | tokensurgeon_ref.TokenSurgeonMethod] = (
        [
            tokensurgeon_ref.lookup(m) if m.startswith(tokensurgeon_ref.PREFIX) else get(m)
            for m in methods
        ]
        if methods
        else list(all_methods().values())
    )
    for t in texts:
        if not Path(t).is_file():
            raise InputError(f"{t} is not a file; expected a text file", where="--text")
    holdout = prepare_holdout(base, donor, fraction, seed)
    if on_holdout is not None:
        on_holdout(holdout)
    result: dict[str, Any] = {
        "base": base,
        "donor": donor,
        "hidden": int(len(holdout.hidden_out)),
        "anchors": int(len(holdout.anchor_out)),
        "seed": seed,
        "hold_out": fraction,
        "missing": holdout.missing_mix,
        "methods": {},
        "skipped": {},
    }
    for spec in tqdm(specs, desc="compare", unit="method", disable=not show_progress):
        reference = isinstance(spec, tokensurgeon_ref.TokenSurgeonMethod)
        note = (tokensurgeon_ref.cannot_run if reference else cannot_run)(spec, holdout)
        if note is None:
            try:
                t0 = time.perf_counter()
                if reference:
                    est = tokensurgeon_ref.estimate(spec, holdout)
                else:
                    est = estimate_hidden(
                        holdout, spec, spec.parse_params({}), show_progress=show_progress
                    )
                secs = time.perf_counter() - t0
            except (ConfigError, InputError) as exc:
                note = str(exc)
        if note is not None:
            result["skipped"][spec.name] = note
            LOG.info("compare: %s skipped: %s", spec.name, note)
            continue
        result["methods"][spec.name] = {
            **score(est, holdout.true, holdout.categories),
            "seconds": round(secs, 3),
            **(spec.describe() if reference else {}),
        }
    if texts:  # bits per byte of the base (own tokenizer) and of a real transplant per method

        def bpb_of(model_dir: str) -> dict[str, float]:
            recs = evaluate_models([model_dir], list(texts), show_progress=False)
            return {str(r["text"]): float(r["bpb"]) for r in recs}

        reference_bpb = bpb_of(base)
        # --text transplants run the plugin's methods only
        ran = [name for name, m in result["methods"].items() if "reference" not in m]
        with tempfile.TemporaryDirectory(prefix="tokenplug-compare-") as tmp:
            for name in tqdm(ran, desc="transplant + bpb", disable=not show_progress):
                dest = str(Path(tmp) / name)
                transplant(base, donor, dest, name, {}, seed=seed, quiet=True)
                result["methods"][name]["bpb"] = bpb_of(dest)
        result["reference_bpb"] = reference_bpb
    return result


def _category_sizes(report: dict[str, Any]) -> dict[str, int]:
    """Hidden tokens per category that some method scored, in ``CATEGORIES`` order (every
    method is scored on the same hidden set)."""
    seen = {c: v["n"] for m in report["methods"].values() for c, v in m["categories"].items()}
    return {c: seen[c] for c in CATEGORIES if c in seen}


def format_report(report: dict[str, Any]) -> str:
    """Plain-text table: overall and per-category cosine, relative L2, time, bpb."""
    cats = _category_sizes(report)
    texts = sorted({t for m in report["methods"].values() for t in m.get("bpb", {})})
    head = ["method", "cos", "rel_l2", "s", *(f"cos {c}" for c in cats)]
    head += [f"bpb {Path(t).name}" for t in texts]
    rows = []
    order = sorted(report["methods"].items(), key=lambda kv: -kv[1]["cos"])
    for name, m in order:
        row = [name, f"{m['cos']:.3f}", f"{m['rel_l2']:.3f}", f"{m['seconds']:.1f}"]
        row += [f"{m['categories'][c]['cos']:.3f}" if c in m["categories"] else "-" for c in cats]
        row += [f"{m['bpb'][t]:.3f}" if t in m.get("bpb", {}) else "-" for t in texts]
        rows.append(row)
    if texts and report.get("reference_bpb"):
        ref = report["reference_bpb"]
        rows.append(
            ["(base, own tokenizer)", *[""] * (3 + len(cats)), *(f"{ref[t]:.3f}" for t in texts)]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        )

    lines = [
        f"hidden {report['hidden']} of the shared tokens (seed {report['seed']}), anchors {report['anchors']}; "
        + ", ".join(f"{c} {n}" for c, n in cats.items()),
        fmt(head),
        *(fmt(r) for r in rows),
    ]
    refs = {m["reference"] for m in report["methods"].values() if "reference" in m}
    if refs:
        lines.append(
            f"tokensurgeon:* rows: {', '.join(sorted(refs))}, its own code and default "
            "parameters on the same hidden set and anchors"
            + (" (no bpb: --text transplants use the plugin's methods)" if texts else "")
        )
    lines += [f"skipped {k}: {v}" for k, v in report["skipped"].items()]
    lines += verdict_lines(report)
    return "\n".join(lines)


def pair_name(report: dict[str, Any]) -> str:
    """``gemma3-270m with smollm2-135m's tokenizer`` (directory names, not paths)."""
    base, donor = (Path(str(report.get(k, "?"))).name for k in ("base", "donor"))
    return f"{base} with {donor}'s tokenizer"


def mean_bpb(method: dict[str, Any]) -> float | None:
    values = list(method.get("bpb", {}).values())
    return sum(values) / len(values) if values else None


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """Which method to pick: by bits per byte when texts were given (the figure to decide
    by), else the leave-out leader with a word on what that ranking is worth."""
    scored = {n: b for n, m in report["methods"].items() if (b := mean_bpb(m)) is not None}
    proxy = (
        "leave-out scores are a proxy: shared tokens are easier than the missing ones and "
        "cosine ignores the norm, so their ranking can differ from bits per byte"
    )
    if scored:
        best = min(scored, key=lambda n: scored[n])
        return [
            f"best by bits per byte (mean over {len(report['methods'][best]['bpb'])} text(s)): "
            f"{best} ({scored[best]:.3f}); {proxy}"
        ]
    if report["methods"]:
        top = max(report["methods"], key=lambda n: report["methods"][n]["cos"])
        return [f"leave-out leader: {top}; {proxy}: pass --text FILE to rank by bits per byte"]
    return []


def plot_title(report: dict[str, Any]) -> str:
    """The pair first (a saved chart must say what it compares), then the draw."""
    return (
        f"{pair_name(report)}\nleave-out: {report['hidden']} hidden shared tokens drawn like the "
        f"missing ones (seed {report['seed']})"
    )


def plot_report(report: dict[str, Any], path: str) -> None:
    """Grouped bars: mean cosine per category (and overall) for every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(report["methods"], key=lambda k: -report["methods"][k]["cos"])
    cats = _category_sizes(report)
    groups = ["overall", *cats]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups) + 2), 4.8))
    width = 0.84 / max(len(methods), 1)
    for j, name in enumerate(methods):
        m = report["methods"][name]
        vals = [m["cos"]] + [m["categories"].get(c, {}).get("cos", np.nan) for c in cats]
        xs = np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width
        # tokensurgeon:* (mergekit's own code): hatched bars
        hatched = (
            {"hatch": "//", "edgecolor": "black", "linewidth": 0.4} if "reference" in m else {}
        )
        cmap = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
        ax.bar(xs, vals, width, label=name, color=cmap(j % 20), **hatched)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(
        [f"overall\n(n={report['hidden']})", *(f"{c}\n(n={n})" for c, n in cats.items())]
    )
    ax.set_ylabel("mean cosine to the true row")
    ax.set_title(plot_title(report))
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        ncol=min(len(methods), 4), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15)
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)
