"""Small readers used by several tests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def tensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("model*.safetensors")):
        out.update(load_file(f))
    return out


def config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def safetensors_digest(model_dir: str | Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("model*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


HASHES_FILE = Path(__file__).parent / "fixtures" / "output_hashes.json"
RECORD_ENV = "TOKENPLUG_RECORD_OUTPUT_HASHES"
# Tensor bytes must not depend on how many threads the run gets: pin them in the runs we hash.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tensor_file_digest(path: Path) -> str:
    """sha256 of a safetensors file's tensors (name, dtype, shape, bytes) and sorted metadata.

    Not of the file itself: the safetensors writer orders metadata keys by a hash map."""
    h = hashlib.sha256()
    with safe_open(str(path), "pt") as fh:
        h.update(json.dumps(fh.metadata() or {}, sort_keys=True).encode())
        for name in sorted(fh.keys()):
            t = fh.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def output_hashes(out_dir: str | Path) -> dict[str, str]:
    """Digest of every tensor file a run wrote (relative path -> digest)."""
    root = Path(out_dir)
    return {
        str(f.relative_to(root)): tensor_file_digest(f) for f in sorted(root.rglob("*.safetensors"))
    }


def check_output_hashes(case: str, out_dir: str | Path) -> None:
    """Compare a run's tensor files with the digests recorded in fixtures/output_hashes.json.

    Record (after a change that is meant to change output bytes, and only then):
    ``TOKENPLUG_RECORD_OUTPUT_HASHES=1 .venv/bin/python -m pytest tests/test_output_hashes.py
    tests/test_recipes.py`` rewrites the digests of the cases it runs.
    """
    got = output_hashes(out_dir)
    recorded = json.loads(HASHES_FILE.read_text()) if HASHES_FILE.exists() else {}
    if os.environ.get(RECORD_ENV):
        recorded[case] = got
        HASHES_FILE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert case in recorded, f"no recorded digests for {case}; record them with {RECORD_ENV}=1"
    assert got == recorded[case], f"{case}: output tensor bytes changed"
