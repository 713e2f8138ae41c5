"""Small readers used by several tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
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


# Tensor bytes must not depend on how many threads the run gets: pin them in the runs we compare.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
