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
    lines += ["", "| model | matrix | copied | estimated | padded | estimated from |", "|---|---|---:|---:|---:|---|"]
    for rec in report.get("matrices", []):
        sources = ", ".join(f"{k}: {v}" for k, v in rec.get("by_source", {}).items()) or "-"
        lines.append(f"| {rec['model']} | {rec['weight']} | {rec['copied']} | {rec['estimated']} | {rec['padded']} | {sources} |")
    return "\n".join(lines) + "\n"
