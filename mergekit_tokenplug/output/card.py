"""The model-card section that says how the vocabulary was realigned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mergekit_tokenplug.output.bos import bos_sentence
from mergekit_tokenplug.output.side_files import TOOL_PRIORS

COUNT_KEYS = ("exact", "canonical", "special", "missing")


def vocabulary_section(
    *,
    method: str,
    params: dict[str, Any],
    report: dict[str, Any],
    bos: dict[str, Any] | None = None,
) -> str:
    """Markdown: method + parameters, BOS convention, alignment counts per model, rows per matrix."""
    vocab = report.get("vocabulary", {})
    notes = [bos_sentence(bos)] if bos else []
    if any("tool" in rec.get("by_method", {}) for rec in report.get("matrices", [])):
        notes.append(
            "Tool tokens (`tool`): their rows are the re-initialization prior (the frozen "
            "model reading the tool's name and description), exported to "
            f"`{TOOL_PRIORS}` for training."
        )
    lines = [
        "## Vocabulary transplant (mergekit-tokenplug)",
        "",
        f"Rows a model lacked in the output vocabulary were estimated in that model's own embedding space with **`{method}`**"
        + (f" (parameters: `{json.dumps(params, sort_keys=True)}`)." if params else "."),
        "",
        f"Output vocabulary: {vocab.get('output_tokens', '?')} tokens in {vocab.get('output_rows', '?')} rows.",
        "",
        *(line for note in notes for line in (note, "")),
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


def _declared_license(model: str) -> str | None:
    """The license in a model's README.md front matter (None when undeclared or unreadable)."""
    try:
        text = (Path(model) / "README.md").read_text(encoding="utf-8")
        data = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    license_ = data.get("license") if isinstance(data, dict) else None
    return str(license_) if license_ else None


def license_metadata(licenses: dict[str, str | None]) -> tuple[str | None, str]:
    """The card's ``license`` (inherited when every input declares the same one) and a
    sentence saying where it comes from."""
    declared = set(licenses.values())
    if len(declared) == 1 and None not in declared:
        value = declared.pop()
        return value, f"License: `{value}`, the license every input declares."
    listing = ", ".join(f"`{m}`: {lic or 'not declared'}" for m, lic in licenses.items())
    if declared == {None}:
        return (
            None,
            f"License: not declared by the inputs ({listing}); check them before publishing.",
        )
    return "other", f"License: the inputs' licenses differ ({listing}); the terms of each apply."


def card_header(name: str, inputs: list[str]) -> list[str]:
    """Front matter (Hub model-card metadata: ``base_model`` builds the model tree) and title."""
    license_, sentence = license_metadata({m: _declared_license(m) for m in inputs})
    meta = {
        "base_model": inputs,
        **({"license": license_} if license_ else {}),
        "library_name": "transformers",
        "tags": ["mergekit", "merge", "mergekit-tokenplug"],
    }
    return [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        sentence,
        "",
    ]


def card_inputs(merge_config: Any) -> list[str]:
    """The recipe's inputs as it names them: merged models, then a tokenizer-source donor."""
    models = sorted(str(m) for m in merge_config.referenced_models())
    source = merge_config.tokenizer.source if merge_config.tokenizer else None
    if source is not None and not isinstance(source, str) and str(source) not in models:
        models.append(str(source))
    return models


def model_card(
    merge_config: Any, recipe: str, vocabulary_md: str, name: str = "Merged model"
) -> str:
    """The whole README.md: what was built, from what, with which recipe."""
    models = sorted(str(m.model.path) for m in merge_config.referenced_models())
    source = merge_config.tokenizer.source
    lines = [
        *card_header(name, card_inputs(merge_config)),
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


HEAL_FIGURES = {  # held-out figures heal records, in the order the card shows them
    "loss": "loss",
    "bpb": "bits per byte",
    "tool_acc": "tool-token accuracy",
    "tool_logprob": "tool-token log-prob",
    "tool_rank": "tool-token rank",
}


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
    lines += _teacher_lines(summary)
    before, after = summary.get("heldout_before"), summary.get("heldout_after")
    if before and after:
        cols = [k for k in HEAL_FIGURES if k in before and k in after]
        lines += [
            "",
            "| held-out | " + " | ".join(HEAL_FIGURES[k] for k in cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for name, rec in (("before", before), ("after", after)):
            lines.append(f"| {name} | " + " | ".join(f"{rec[k]:.4f}" for k in cols) + " |")
    lines += ["", "Corpus (sha256):", ""]
    lines += [f"- `{path}`: `{digest}`" for path, digest in summary["corpus"].items()]
    return "\n".join(lines) + "\n"


def _teacher_lines(summary: dict[str, Any]) -> list[str]:
    """The distillation teacher and objective, and the merged adapter, when heal used them."""
    lines: list[str] = []
    teacher, adapter = summary.get("teacher"), summary.get("adapter")
    if teacher:
        o, cache = summary["objective"], summary["cache"]
        digests = ", ".join(f"`{f}`: `{d}`" for f, d in teacher["safetensors"].items())
        lines += [
            "",
            f"Distilled from the original model `{teacher['path']}` ({digests}): loss = "
            f"{o['lm']} x LM + {o['chunk_likelihood']} x chunk likelihood (tau {o['tau']}) + "
            f"{o['hidden_state']} x hidden state (layer {o['layer']}) at chunks both "
            f"tokenizers end; teacher cache {cache['bytes']} bytes over {cache['windows']} windows.",
        ]
    if adapter:
        lines += [
            "",
            f"A rank-{adapter['rank']} LoRA adapter (alpha {adapter['alpha']}) on "
            f"{', '.join(adapter['targets'])} was trained with the rows and **merged** into the "
            f"weights: {len(adapter['modules_changed'])} weight matrices changed "
            f"({', '.join(adapter['modules_changed'][:3])}, ...). OUT is a plain checkpoint.",
        ]
    return lines
