"""Provenance for ``mergekit-multi``: the final OUT carries every stage's transplant record.

Each plugin stage writes its own manifest into its intermediate directory; the final merge
is often a stock one (e.g. TIES over the aligned models). After the whole run, the final OUT
gets a ``tokenplug_manifest.json`` with a ``stages`` map (each stage's recipe, report, BOS
record, inputs and output hashes) and, unless ``--no-write-model-card``, a model card whose
front matter lists the original inputs (not intermediate paths) and whose body has each
stage's vocabulary section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mergekit_tokenplug.output.card import (
    card_donors,
    card_header,
    card_inputs,
    vocabulary_section,
)
from mergekit_tokenplug.output.manifest import MANIFEST_NAME, input_record, write_manifest
from mergekit_tokenplug.output.modes import apply_umask

STAGE_KEYS = ("recipe", "inputs", "report", "bos", "side_files", "config_changes", "outputs")


def _stage_section(name: str, manifest: dict[str, Any]) -> str:
    approx = (yaml.safe_load(manifest["recipe"]).get("tokenizer") or {}).get("approximation") or {}
    params = {k: v for k, v in approx.items() if k not in ("method", "seed")}
    section = vocabulary_section(
        method=approx.get("method", "omp"),
        params=params,
        report=manifest["report"],
        bos=manifest.get("bos"),
    )
    return section.replace(
        "## Vocabulary transplant (mergekit-tokenplug)",
        f"## Stage `{name}`: vocabulary transplant (mergekit-tokenplug)",
        1,
    )


def finalize_multi(
    config_file: str, intermediate_dir: str, out_path: str | None, write_card: bool
) -> None:
    """Write the final OUT's manifest (and card) when any stage used the plugin."""
    from mergekit.config import MergeConfiguration

    if not out_path or not (Path(out_path) / "config.json").exists():
        return
    text = Path(config_file).read_text(encoding="utf-8")
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    names = [str(d["name"]) for d in docs if "name" in d]
    paths = {n: Path(intermediate_dir) / n / MANIFEST_NAME for n in names}
    stages = {n: json.loads(p.read_text(encoding="utf-8")) for n, p in paths.items() if p.exists()}
    out = Path(out_path)
    own_path = out / MANIFEST_NAME
    own = json.loads(own_path.read_text(encoding="utf-8")) if own_path.exists() else None
    if own is not None and "stages" in own:  # left by an earlier run into the same OUT
        own = None
    if not stages and own is None:
        return
    configs = [
        MergeConfiguration.model_validate({k: v for k, v in d.items() if k != "name"}) for d in docs
    ]
    refs = (ref for config in configs for ref in card_inputs(config))
    inputs = list(dict.fromkeys(ref for ref in refs if ref not in names))  # in order, once
    donors = [d for config in configs for d in card_donors(config)]
    if write_card:
        final = next((d for d in docs if "name" not in d), docs[-1])
        sections = [_stage_section(n, m) for n, m in stages.items()]
        if own is not None:
            sections.append(_stage_section("final", own))
        lines = [
            *card_header(out.name, inputs, donors),
            f"Built with [mergekit](https://github.com/arcee-ai/mergekit)'s `mergekit-multi` in "
            f"{len(docs)} stages (final merge: `{final.get('merge_method')}`) and mergekit-tokenplug.",
            "",
            "Inputs: " + ", ".join(f"`{m}`" for m in inputs) + ".",
            "",
            *sections,
            "## Recipe",
            "",
            "```yaml",
            text.rstrip(),
            "```",
            "",
        ]
        (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    local = [m for m in inputs if Path(m).expanduser().exists()]
    records = [{"role": "model", **input_record(m)} for m in local]
    records += [{"role": "hub", "path": m} for m in inputs if m not in local]
    extra: dict[str, Any] = {
        "stages": {n: {k: m[k] for k in STAGE_KEYS if k in m} for n, m in stages.items()}
    }
    if own is not None:
        extra["final"] = {k: own[k] for k in STAGE_KEYS if k in own and k != "outputs"}
    write_manifest(
        out,
        inputs=records,
        recipe=text,
        report=own["report"] if own else {"vocabulary": {}, "matrices": []},
        extra=extra,
    )
    apply_umask(out)
