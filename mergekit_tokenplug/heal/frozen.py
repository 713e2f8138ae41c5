"""Tensors heal did not train keep MODEL's bytes and dtype in OUT; trained ones its dtype.

``save_pretrained`` writes the whole model in one dtype, so the float32 norms of a bfloat16
checkpoint (kept in float32 by the model's authors) would come out rounded to bfloat16.
After saving, every tensor that was not trained is put back exactly as MODEL's safetensors
hold it (same name and shape), and a shard index's ``total_size`` follows.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_tokenplug.inputs import is_pickle, weight_files


def _source_tensors(src: Path) -> dict[str, Path]:
    files = weight_files(src)
    if not files or is_pickle(files):
        return {}
    found: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), "pt") as fh:
            found.update({k: f for k in fh.keys()})
    return found


def restore_frozen(out: Path, src: Path, trained: set[str]) -> int:
    """Put MODEL's own bytes back for every untrained tensor of OUT; return how many changed."""
    source = _source_tensors(src)
    changed = 0
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as fh:
            meta = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        edits = 0
        for name, tensor in tensors.items():
            if name not in source:
                continue
            with safe_open(str(source[name]), "pt") as fh:
                original = fh.get_tensor(name)
            if original.shape != tensor.shape:
                continue
            if name in trained:  # new rows, in the dtype MODEL stores this matrix in
                if tensor.dtype != original.dtype:
                    tensors[name] = tensor.to(original.dtype)
                    edits += 1
            elif original.dtype != tensor.dtype or not torch.equal(original, tensor):
                tensors[name] = original
                edits += 1
        if edits:
            save_file(tensors, str(shard), metadata=meta)
            changed += edits
    if changed:
        _fix_index_size(out)
    return changed


def _fix_index_size(out: Path) -> None:
    """The index's ``total_size`` is the tensors' byte count, which a dtype change moves."""
    for index in out.glob("*.safetensors.index.json"):
        data = json.loads(index.read_text(encoding="utf-8"))
        total = 0
        for shard in sorted(set(data.get("weight_map", {}).values())):
            with safe_open(str(out / shard), "pt") as fh:
                total += sum(fh.get_tensor(k).nbytes for k in fh.keys())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
