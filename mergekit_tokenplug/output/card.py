"""The model-card section that says how the vocabulary was realigned."""

from __future__ import annotations

import json
from typing import Any

COUNT_KEYS = ("exact", "canonical", "special", "missing")


def vocabulary_section(*, method: str, params: dict[str, Any], report: dict[str, Any]) -> str:
    """Markdown: method + parameters, alignment counts per model, rows per matrix."""
    vocab = report.get("vocabulary", {})
    lines = [
        "## Vocabulary transplant (mergekit-tokenplug)",
        "",
        f"Rows a model lacked in the output vocabulary were estimated in that model's own embedding space with **`{method}`**"
        + (f" (parameters: `{json.dumps(params, sort_keys=True)}`)." if params else "."),
        "",
        f"Output vocabulary: {vocab.get('output_tokens', '?')} tokens in {vocab.get('output_rows', '?')} rows.",
        "",
        "| model | exact | canonical | special | missing |",
        "|---|---:|---:|---:|---:|",
    ]
    per_model = dict(vocab.get("per_model", {}))
    per_model.update({f"{k} (donor)": v for k, v in vocab.get("donor", {}).items()})
    for name, counts in per_model.items():
        lines.append(f"| {name} | " + " | ".join(str(counts.get(k, 0)) for k in COUNT_KEYS) + " |")
    lines += [
        "",
        "| model | matrix | copied | estimated | padded | estimated from |",
        "|---|---|---:|---:|---:|---|",
    ]
    for rec in report.get("matrices", []):
        sources = ", ".join(f"{k}: {v}" for k, v in rec.get("by_source", {}).items()) or "-"
        lines.append(
            f"| {rec['model']} | {rec['weight']} | {rec['copied']} | {rec['estimated']} | {rec['padded']} | {sources} |"
        )
    return "\n".join(lines) + "\n"


def model_card(merge_config: Any, recipe: str, vocabulary_md: str) -> str:
    """The whole README.md: what was built, from what, with which recipe."""
    models = sorted(str(m.model.path) for m in merge_config.referenced_models())
    source = merge_config.tokenizer.source
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- mergekit",
        "- merge",
        "- mergekit-tokenplug",
        "---",
        "",
        "# Merged model",
        "",
        f"Built with [mergekit](https://github.com/arcee-ai/mergekit) (`{merge_config.merge_method}`) and mergekit-tokenplug.",
        "",
        "Models: " + ", ".join(f"`{m}`" for m in models) + ".",
        f"Tokenizer: `{getattr(getattr(source, 'model', None), 'path', source)}`.",
        "",
        vocabulary_md,
        "## Recipe",
        "",
        "```yaml",
        recipe.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def heal_section(summary: dict[str, Any]) -> str:
    """Markdown: what ``heal`` trained, on what, and the held-out figures before/after."""
    rows = summary["rows"]
    lines = [
        "## Heal (mergekit-tokenplug)",
        "",
        f"After the transplant, {rows['count']} rows ({rows['which']}) of the "
        f"{' and '.join(rows['matrices'])} matrix were trained for {summary['steps']} steps "
        f"on {len(summary['corpus'])} corpus file(s), everything else frozen, regularized toward "
        f"their starting rows (lambda = {summary['lam']}).",
    ]
    if summary.get("untied"):
        lines += [
            "",
            "The model was tied; it is now untied (`tie_word_embeddings: false`): the output "
            "matrix is the transplanted one, only the input rows were trained.",
        ]
    before, after = summary.get("heldout_before"), summary.get("heldout_after")
    if before and after:
        lines += [
            "",
            "| held-out | loss | bits per byte |",
            "|---|---:|---:|",
            f"| before | {before['loss']:.4f} | {before['bpb']:.4f} |",
            f"| after | {after['loss']:.4f} | {after['bpb']:.4f} |",
        ]
    lines += ["", "Corpus (sha256):", ""]
    lines += [f"- `{path}`: `{digest}`" for path, digest in summary["corpus"].items()]
    return "\n".join(lines) + "\n"
