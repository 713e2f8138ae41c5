"""The model-card section that says how the vocabulary was realigned."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from mergekit_tokenplug import settings
from mergekit_tokenplug.output.bos import bos_sentence
from mergekit_tokenplug.output.side_files import TOOL_PRIORS
from mergekit_tokenplug.vocab.specials import table_markdown

COUNT_KEYS = ("exact", "canonical", "special", "missing")


def vocabulary_section(
    *,
    method: str,
    params: dict[str, Any],
    report: dict[str, Any],
    bos: dict[str, Any] | None = None,
    method_note: str | None = None,
    chat: dict[str, Any] | None = None,
) -> str:
    """Markdown: method + parameters, BOS convention, alignment counts per model, rows per matrix."""
    vocab = report.get("vocabulary", {})
    notes = [f"Method: {method_note[0].upper()}{method_note[1:]}."] if method_note else []
    notes += [bos_sentence(bos)] if bos else []
    notes += chat_sentences(chat) if chat else []
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
        "| model | matrix | copied | estimated | padded | estimated from | rows by method |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for rec in report.get("matrices", []):
        sources = ", ".join(f"{k}: {v}" for k, v in rec.get("by_source", {}).items()) or "-"
        methods = ", ".join(f"{k}: {v}" for k, v in rec.get("by_method", {}).items()) or "-"
        lines.append(
            f"| {rec['model']} | {rec['weight']} | {rec['copied']} | {rec['estimated']} | {rec['padded']} | {sources} | {methods} |"
        )
    lines += fallback_lines(report.get("matrices", []))
    for model, table in (report.get("special_tokens") or {}).items():
        lines += ["", *table_markdown(model, table)]
    return "\n".join(lines).rstrip("\n") + "\n"


def chat_sentences(chat: dict[str, Any]) -> list[str]:
    """What the output's chat template is, where it comes from, and what it renders."""
    if chat["mode"] == "recipe":
        return ["Chat template: set by the recipe's top-level `chat_template` (mergekit's key)."]
    if not chat.get("template_sha256"):
        return [
            f"Chat template: none ({chat['note']}; `tokenizer.chat_template: {chat['mode']}`). "
            "`tokenizer.chat_template: source` (`transplant --chat-template source`) adopts the "
            "tokenizer source's."
        ]
    out = [
        f"Chat template: {chat['note']} (`tokenizer.chat_template: {chat['mode']}`). "
        "A one-message conversation renders as:",
        "```\n" + chat.get("example", "").rstrip("\n") + "\n```",
    ]
    if chat.get("doubled_bos"):
        out.append(
            "Note: the template writes BOS itself, as the base model's does, and the tokenizer "
            "adds one: tokenize its text with `add_special_tokens=False` (as "
            "`apply_chat_template(tokenize=True)` does)."
        )
    return out


def _tokens(rec: dict[str, Any]) -> str:
    shown = ", ".join(f"`{t!r}`" for t in rec.get("tokens", []))
    more = rec["count"] - len(rec.get("tokens", []))
    return f" ({shown}{f' and {more} more' if more > 0 and shown else ''})" if shown else ""


def fallback_lines(matrices: list[dict[str, Any]]) -> list[str]:
    """What the counts above do not say: rows that got a fallback instead of the method's
    estimate (and why), and rows estimated from little evidence."""
    items = []
    for rec in matrices:
        where = f"{rec['model']} {rec['weight']}"
        for fb in rec.get("fallbacks", []):
            items.append(
                f"- {where}: {fb['count']} rows got the `{fb['to']}` row, not a "
                f"`{fb['method']}` estimate: {fb['reason']}{_tokens(fb)}."
            )
        for thin in rec.get("thin", []):
            items.append(
                f"- Warning: {where}: {thin['count']} `{thin['method']}` rows are estimated "
                f"from little evidence: {thin['reason']}{_tokens(thin)}."
            )
    return ["", "Fallbacks and thin estimates:", "", *items] if items else []


def _declared_license(model: str) -> str | None:
    """The license in a model's README.md front matter (None when undeclared or unreadable)."""
    try:
        text = (Path(model) / "README.md").read_text(encoding="utf-8")
        data = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    license_ = data.get("license") if isinstance(data, dict) else None
    return str(license_) if license_ else None


def license_metadata(licenses: dict[str, str | None]) -> tuple[str, str]:
    """The card's ``license`` (inherited when every input declares the same one, else
    ``other``: the Hub needs a value) and a sentence naming each input's terms."""
    declared = set(licenses.values())
    if len(declared) == 1 and None not in declared:
        value = declared.pop()
        return value, f"License: `{value}`, the license every input declares."
    listing = ", ".join(f"`{m}`: {lic or 'not declared'}" for m, lic in licenses.items())
    if declared == {None}:
        return (
            "other",
            f"License: `other`; the inputs declare none ({listing}): the terms each input is "
            "published under apply; check them before publishing.",
        )
    return (
        "other",
        f"License: `other`; the inputs' licenses differ ({listing}); the terms of each apply.",
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_id(ref: str) -> str | None:
    """The Hub id of an input: ``MERGEKIT_TOKENPLUG_HUB_IDS`` (by the path as the recipe
    names it or resolved), else a hub-id ``_name_or_path`` in its config.json, else the
    reference itself when it is not a local path; None for a local path with no id."""
    ids = settings.hub_ids()
    local = Path(ref).expanduser()
    for key in (ref, str(local.resolve()) if local.exists() else None):
        if key in ids:
            return ids[key]
    resolved = {str(Path(p).expanduser().resolve()): h for p, h in ids.items()}
    if local.exists() and str(local.resolve()) in resolved:
        return resolved[str(local.resolve())]
    if not local.exists():
        return ref if _HUB_ID.fullmatch(ref) else None
    try:
        name = json.loads((local / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(name, str) and _HUB_ID.fullmatch(name) and not Path(name).exists():
        return name
    return None


def card_header(
    name: str, inputs: list[str], donors: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """Front matter (Hub model-card metadata) and title. ``base_model`` lists the merged
    models only (it builds the Hub's model tree); a tokenizer donor goes under
    ``tokenizer_source``. Inputs are named by Hub id where one is known (:func:`hub_id`)."""
    license_, sentence = license_metadata({m: _declared_license(m) for m in inputs})
    named = {m: hub_id(m) or m for m in inputs}
    bases = [named[m] for m in inputs if m not in donors]
    donor_ids = [named[m] for m in inputs if m in donors]
    meta = {
        "base_model": bases,
        **({"tokenizer_source": donor_ids} if donor_ids else {}),
        "license": license_,
        "library_name": "transformers",
        "tags": ["mergekit", "merge", "mergekit-tokenplug"],
    }
    local = [m for m in inputs if hub_id(m) is None]
    publish = (
        [
            "Local paths in `base_model` / `tokenizer_source` ("
            + ", ".join(f"`{m}`" for m in local)
            + f"): give their Hub ids with `{settings.HUB_IDS}=PATH=ORG/NAME,...` (or "
            "`transplant --hub-id PATH=ORG/NAME`) when building, before publishing.",
            "",
        ]
        if local
        else []
    )
    return [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        sentence,
        "",
        *publish,
    ]


def card_inputs(merge_config: Any) -> list[str]:
    """The recipe's inputs as it names them: merged models, then a tokenizer-source donor."""
    models = sorted(str(m) for m in merge_config.referenced_models())
    source = merge_config.tokenizer.source if merge_config.tokenizer else None
    if source is not None and not isinstance(source, str) and str(source) not in models:
        models.append(str(source))
    return models


def card_donors(merge_config: Any) -> list[str]:
    """The tokenizer-source donor of a recipe when it is not also a merged model."""
    models = {str(m) for m in merge_config.referenced_models()}
    source = merge_config.tokenizer.source if merge_config.tokenizer else None
    if source is not None and not isinstance(source, str) and str(source) not in models:
        return [str(source)]
    return []


def gguf_note() -> list[str]:
    """How to get a GGUF for llama.cpp (its converter needs a staged view: output/gguf.py)."""
    return [
        "## GGUF (llama.cpp)",
        "",
        "Convert with llama.cpp's own `convert_hf_to_gguf.py` through "
        "`mergekit-tokenplug gguf THIS_DIR model.gguf --converter path/to/convert_hf_to_gguf.py`: "
        "run on this directory as is, the converter stops when the tokenizer adds BOS where its "
        "source's did not (its pre-tokenizer check hashes the encoded text, BOS included).",
        "",
    ]


def model_card(
    merge_config: Any, recipe: str, vocabulary_md: str, name: str = "Merged model"
) -> str:
    """The whole README.md: what was built, from what, with which recipe."""
    models = sorted(str(m.model.path) for m in merge_config.referenced_models())
    source = merge_config.tokenizer.source
    lines = [
        *card_header(name, card_inputs(merge_config), card_donors(merge_config)),
        f"Built with [mergekit](https://github.com/arcee-ai/mergekit) (`{merge_config.merge_method}`) and mergekit-tokenplug.",
        "",
        "Models: " + ", ".join(f"`{m}`" for m in models) + ".",
        f"Tokenizer: `{getattr(getattr(source, 'model', None), 'path', source)}`.",
        "",
        vocabulary_md,
        *gguf_note(),
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
    frozen = "everything else frozen" + (" but the adapter below" if summary.get("adapter") else "")
    lines = [
        "## Heal (mergekit-tokenplug)",
        "",
        f"After the transplant, {rows['count']} rows ({rows['which']}) of the "
        f"{' and '.join(rows['matrices'])} matrix were trained for {summary['steps']} steps "
        f"on {len(summary['corpus'])} corpus file(s), {frozen}, regularized toward "
        f"their starting rows (lambda = {summary['lam']}).",
    ]
    if summary.get("untied"):
        trained_output = "output" in rows["matrices"]
        lines += [
            "",
            "The model was tied; it is now untied (`tie_word_embeddings: false`): "
            + (
                f"the output rows were trained on their own (peak lr {summary['output_lr']}, "
                f"input rows {summary['lr']})."
                if trained_output
                else "the output matrix is the transplanted one, only the input rows were trained."
            ),
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
            f"tokenizers end + {o.get('next_piece', 0.0)} x next-piece distribution; teacher cache {cache['bytes']} bytes over {cache['windows']} windows.",
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
