"""Writing a healed model: weights in their original dtype (every untrained tensor keeps its
bytes), the model card with a heal section, the manifest with a ``heal`` record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mergekit_tokenplug.output.card import heal_section
from mergekit_tokenplug.output.manifest import MANIFEST_NAME, input_record, write_manifest

# Files the model's own save_pretrained writes or this module rewrites; every other file of
# MODEL (side files such as tool-token priors, recipes) is carried over unchanged.
REWRITTEN = ("config.json", "generation_config.json", "README.md", MANIFEST_NAME)


def carry_side_files(src: Path, out: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        weights = len(rel.parts) == 1 and (
            rel.suffix == ".safetensors" or rel.name.endswith(".safetensors.index.json")
        )  # the model's own shards (save_pretrained rewrote them); side files live below
        if not path.is_file() or rel.name in REWRITTEN or weights or (out / rel).exists():
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / rel)


def write_healed(
    out: Path, *, model: Any, tokenizer: Any, src: Path, summary: dict[str, Any], command: str
) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    carry_side_files(src, out)
    card = (src / "README.md").read_text(encoding="utf-8") if (src / "README.md").is_file() else ""
    (out / "README.md").write_text(
        (card.rstrip() + "\n\n" if card.strip() else "") + heal_section(summary), encoding="utf-8"
    )
    before = {}
    if (src / MANIFEST_NAME).is_file():
        before = json.loads((src / MANIFEST_NAME).read_text(encoding="utf-8"))
    inputs = [{"role": "model", **input_record(str(src))}]
    inputs += [
        {"role": "corpus", "path": path, "sha256": digest}
        for path, digest in summary["corpus"].items()
    ]
    write_manifest(
        out,
        inputs=inputs,
        recipe=command,
        report={**before.get("report", {}), "heal": summary},
        extra={"transplant": {"recipe": before.get("recipe"), "inputs": before.get("inputs")}}
        if before
        else None,
    )
