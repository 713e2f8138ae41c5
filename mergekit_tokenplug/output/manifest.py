"""``tokenplug_manifest.json``: what went in, what came out, and how to check it later."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import mergekit_tokenplug
from mergekit_tokenplug.inputs import weight_files

MANIFEST_NAME = "tokenplug_manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative posix paths, sorted) but the top-level
    manifest itself, which cannot hold its own hash."""
    base = Path(root)
    files = {p.relative_to(base).as_posix(): p for p in base.rglob("*") if p.is_file()}
    return {rel: sha256_file(files[rel]) for rel in sorted(files) if rel != MANIFEST_NAME}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import torch

    return {
        "mergekit-tokenplug": mergekit_tokenplug.__version__,
        "mergekit": version("mergekit"),
        "torch": torch.__version__,
        "transformers": version("transformers"),
    }


def input_record(path: str) -> dict[str, Any]:
    """A model input: its path and the sha256 of each weight file mergekit read from it."""
    p = Path(path)
    files = weight_files(p) if p.is_dir() else []
    return {
        "path": str(p.resolve()) if p.exists() else path,
        "safetensors": {f.relative_to(p).as_posix(): sha256_file(f) for f in files},
    }


def write_manifest(
    out_dir: str | os.PathLike,
    *,
    inputs: list[dict[str, Any]],
    recipe: str,
    report: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the manifest last, hashing every other output file."""
    out = Path(out_dir)
    manifest = {
        "format": 1,
        "versions": versions(),
        "inputs": inputs,
        "recipe": recipe,
        "report": report,
        **(extra or {}),
        "outputs": hash_tree(out),
    }
    path = out / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def verify_manifest(out_dir: str | os.PathLike) -> list[str]:
    """Differences between the files in ``out_dir`` and its manifest (empty when it matches)."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    recorded: dict[str, str] = manifest["outputs"]
    actual = hash_tree(out)
    problems = [f"missing: {n}" for n in recorded if n not in actual]
    problems += [f"changed: {n}" for n in recorded if n in actual and actual[n] != recorded[n]]
    problems += [f"unexpected: {n}" for n in actual if n not in recorded]
    return problems


CARD_NAME = "README.md"  # the model card: a person edits it before publishing


def split_card_differences(problems: list[str]) -> tuple[list[str], list[str]]:
    """(failures, notes): an edited or removed model card is a note, not a failure; weights,
    tokenizer, config and every other output must match their recorded hashes."""
    notes = [p for p in problems if p.split(": ", 1)[1] == CARD_NAME and not p.startswith("unexp")]
    return [p for p in problems if p not in notes], notes


def id_ranges(ids: Any) -> list[list[int]]:
    """Sorted ids as ``[[first, last], ...]`` inclusive runs: a row set that stays short in
    JSON however many rows it holds (estimated rows come in long runs)."""
    runs: list[list[int]] = []
    for i in sorted({int(x) for x in ids}):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def expand_ranges(runs: list[list[int]]) -> list[int]:
    """The ids of :func:`id_ranges` runs, sorted."""
    return [i for first, last in runs for i in range(int(first), int(last) + 1)]
