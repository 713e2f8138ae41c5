"""Text corpora for methods that train on text (``cw2v``): files or globs -> token-id sequences."""

from __future__ import annotations

import glob
import os
from typing import Any

import torch

from mergekit_tokenplug.errors import ConfigError

CORPUS_KEY = "tokenizer.approximation.corpus"


def resolve_corpus(patterns: list[str]) -> list[str]:
    """Expand files/globs (sorted, deduplicated); every pattern must match at least one file."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError(f"{pattern!r} matches no file; expected text files or globs", where=CORPUS_KEY)
        files.extend(m for m in matches if m not in files)
    return files


def read_corpus(files: list[str], max_chars: int | None = None) -> list[str]:
    """The text of each file (UTF-8, undecodable bytes replaced); an all-empty corpus is an error."""
    texts = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            texts.append(fh.read(max_chars) if max_chars else fh.read())
    if not any(t.strip() for t in texts):
        raise ConfigError(f"the corpus files are empty ({', '.join(files[:3])}); expected text", where=CORPUS_KEY)
    return texts


def tokenize_corpus(tokenizer: Any, texts: list[str]) -> list[torch.Tensor]:
    """Token ids of each text under ``tokenizer`` (no special tokens), one tensor per text."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded]
