"""Text corpora for methods that train on text (``cw2v``): files or globs -> token-id sequences."""

from __future__ import annotations

import glob
import os
from typing import Any

import torch

from mergekit_tokenplug.errors import ConfigError, InputError

CORPUS_KEY = "tokenizer.approximation.corpus"


def corpus_matches(pattern: str) -> list[str]:
    """The files a corpus file or glob names, sorted (``recipes validate`` checks each)."""
    return sorted(
        p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)
    )


def no_match_message(pattern: str) -> str:
    return f"{pattern!r} matches no file; expected text files or globs"


def resolve_corpus(patterns: list[str], where: str = CORPUS_KEY) -> list[str]:
    """Expand files/globs (sorted, deduplicated); every pattern must match at least one file."""
    files: list[str] = []
    for pattern in patterns:
        matches = corpus_matches(pattern)
        if not matches:
            raise ConfigError(no_match_message(pattern), where=where)
        files.extend(m for m in matches if m not in files)
    return files


def read_corpus(files: list[str], max_chars: int | None = None) -> list[str]:
    """The text of each file (UTF-8 without NUL bytes, like every other corpus the plugin
    reads); an all-empty corpus is an error."""
    texts = []
    for path in files:
        text = decode_text(path)
        texts.append(text[:max_chars] if max_chars else text)
    if not any(t.strip() for t in texts):
        raise ConfigError(
            f"the corpus files are empty ({', '.join(files[:3])}); expected text", where=CORPUS_KEY
        )
    return texts


def tokenize_corpus(tokenizer: Any, texts: list[str]) -> list[torch.Tensor]:
    """Token ids of each text under ``tokenizer`` (no special tokens), one tensor per text."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded]


def read_text_strict(path: str) -> str:
    """A training text must be what it claims: UTF-8 without NUL bytes (a binary file
    decoded with replacements would train the rows on garbage), and not blank."""
    text = decode_text(path)
    if not text.strip():
        raise InputError("is empty; expected text", where=path)
    return text


def decode_text(path: str) -> str:
    """A text file's content: UTF-8 without NUL bytes, or one line naming the file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(
            f"cannot read: {exc.strerror or exc}; expected a text file", where=path
        ) from None
    if b"\x00" in data:
        raise InputError("is a binary file (NUL bytes); expected UTF-8 text", where=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"is not UTF-8 text (byte {exc.start}); expected UTF-8 text", where=path
        ) from None
    return text
