"""Up-front checks of model and donor directories, before any weight is loaded.

Failing here gives the user a one-line error naming the path and what was expected, instead
of a traceback from deep inside transformers halfway through a merge.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergekit_tokenplug import settings
from mergekit_tokenplug.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def model_path(path: str) -> str:
    """Where a model reference points on disk: ``~`` is expanded (validation and runs alike)."""
    return os.path.expanduser(path)


def is_local(path: str) -> bool:
    return os.path.exists(path) or path.startswith((".", "/", "~"))


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / name).exists() for name in TOKENIZER_FILES)


def check_model_dir(
    path: str,
    *,
    where: str,
    need_weights: bool = True,
    need_tokenizer: bool = False,
    allow_pickle: bool = False,
) -> None:
    """Validate a local model directory; hub ids are left to mergekit (offline they fail there)."""
    if not is_local(path):
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{path} does not exist; expected a model directory", where=where)
    if not p.is_dir():
        raise InputError(f"{path} is not a directory; expected a model directory", where=where)
    if need_tokenizer and not has_tokenizer(p):
        raise InputError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); expected a model or tokenizer directory",
            where=where,
        )
    if not need_weights:
        return
    if not (p / "config.json").exists():
        raise InputError(
            f"{path} has no config.json; expected a Hugging Face model directory", where=where
        )
    if any(p.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles and not (allow_pickle or settings.flag(settings.ALLOW_PICKLE)):
        raise InputError(
            f"{path} holds only pickle checkpoints ({', '.join(pickles[:3])}); loading them can run arbitrary code — convert to safetensors, or opt in with --allow-pickle / {settings.ALLOW_PICKLE}=1",
            where=where,
        )
    if not pickles:
        raise InputError(
            f"{path} has no weights (*.safetensors); expected a model directory", where=where
        )
