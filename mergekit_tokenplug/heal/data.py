"""The heal corpus: text files -> a held-out text per file and fixed-length training windows;
JSONL files -> prompt/completion examples, a seeded share of them held out.

Text: the held-out part is the tail of every file (cut at a line break), so it is text the
rows never trained on, in every language of the corpus. The training parts are tokenized once,
joined (EOS between files when the tokenizer has one) and cut into full windows of
``seq_len`` tokens, each led by BOS when the tokenizer defines one (the convention of
``evaluate/bpb.py``, so training and scoring see the same kind of input).

JSONL (``{"prompt", "completion"}`` per line, e.g. tool-use data): rows are shuffled with the
seed and the first ``eval_fraction`` of them held out (rows are independent, unlike a text's
tail); the loss is on completions only (``heal/examples.py``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.heal.examples import Examples, encode_examples
from mergekit_tokenplug.output.manifest import sha256_file
from mergekit_tokenplug.resources.corpus import read_text_strict, resolve_corpus
from mergekit_tokenplug.tooltokens.data import read_jsonl

WHERE = "--corpus"
LOG = logging.getLogger("mergekit_tokenplug")


@dataclass
class HealCorpus:
    sha256: dict[str, str]  # every corpus file, in order -> its sha256
    train: Examples  # text: (n, seq_len [+1 with BOS]) windows, every position a label
    heldout: dict[str, str] = field(default_factory=dict)  # text file -> its held-out tail
    heldout_examples: Examples | None = None  # JSONL: the held-out rows


def split_text(text: str, eval_fraction: float) -> tuple[str, str]:
    """(train, held-out): the last ``eval_fraction`` of the characters, moved back to the
    start of a line when there is one in the train part."""
    if eval_fraction <= 0:
        return text, ""
    cut = int(len(text) * (1.0 - eval_fraction))
    line = text.rfind("\n", 0, cut)
    if line > 0:
        cut = line + 1
    return text[:cut], text[cut:]


def load_corpus(
    patterns: list[str],
    tokenizer: Any,
    *,
    seq_len: int,
    eval_fraction: float,
    seed: int = 0,
    tool_ids: set[int] | None = None,
) -> HealCorpus:
    """Read, split and window the corpus; every problem is one line naming the file or option."""
    if not patterns:
        raise ConfigError("no corpus given; expected at least one text file or glob", where=WHERE)
    if seq_len < 2:
        raise ConfigError(f"must be >= 2 tokens, got {seq_len}", where="--seq-len")
    if not 0 <= eval_fraction < 1:
        raise ConfigError(f"must be in [0, 1), got {eval_fraction}", where="--eval-fraction")
    files = resolve_corpus(list(patterns), where=WHERE)
    jsonl = [f.endswith(".jsonl") for f in files]
    if any(jsonl) and not all(jsonl):
        raise InputError(
            "mixes .jsonl and text files; expected either prompt/completion JSONL files or text files",
            where=WHERE,
        )
    if all(jsonl):
        return _load_examples(files, tokenizer, eval_fraction, seed, tool_ids or set(), seq_len)
    train_ids: list[int] = []
    heldout: dict[str, str] = {}
    sep = getattr(tokenizer, "eos_token_id", None)
    for f in files:
        train, held = split_text(read_text_strict(f), eval_fraction)
        heldout[f] = held if held.strip() else ""
        if train_ids and sep is not None:
            train_ids.append(sep)
        train_ids.extend(tokenizer(train, add_special_tokens=False, verbose=False)["input_ids"])
    n = len(train_ids) // seq_len
    if n == 0:
        raise InputError(
            f"the corpus gives {len(train_ids)} training tokens, shorter than one sequence of "
            f"--seq-len {seq_len}; expected more text (or a smaller --seq-len)",
            where=WHERE,
        )
    windows = torch.tensor(train_ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        windows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), windows], dim=1)
    if eval_fraction > 0 and not any(heldout.values()):
        raise InputError(
            "the held-out split is empty; expected longer files or a larger --eval-fraction",
            where=WHERE,
        )
    train = Examples(windows, windows.clone(), None, torch.full((n,), -1, dtype=torch.long))
    return HealCorpus({f: sha256_file(f) for f in files}, train, heldout=heldout)


def _load_examples(
    files: list[str],
    tokenizer: Any,
    eval_fraction: float,
    seed: int,
    tool_ids: set[int],
    seq_len: int,
) -> HealCorpus:
    rows = [r for f in files for r in read_jsonl(f)]
    if not rows:
        raise InputError(
            f"{', '.join(files[:3])} hold no rows; expected prompt/completion JSON lines",
            where=WHERE,
        )
    check_tool_tokens_used(rows, tokenizer, tool_ids)
    n_eval = max(1, round(len(rows) * eval_fraction)) if eval_fraction > 0 else 0
    if len(rows) - n_eval < 1:
        raise InputError(
            f"has {len(rows)} usable rows, {n_eval} of them held out; expected at least one "
            "training row (more rows or a smaller --eval-fraction)",
            where=WHERE,
        )
    random.Random(seed).shuffle(rows)
    held = encode_examples(tokenizer, rows[:n_eval], tool_ids, WHERE, seq_len) if n_eval else None
    train = encode_examples(tokenizer, rows[n_eval:], tool_ids, WHERE, seq_len)
    return HealCorpus({f: sha256_file(f) for f in files}, train, heldout_examples=held)


def check_tool_tokens_used(rows: list[dict[str, str]], tokenizer: Any, tool_ids: set[int]) -> None:
    """Tool rows trained on data that never shows a tool token only learn not to predict it:
    refused, naming the tokens."""
    if not tool_ids:
        return
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ordinary = sorted(tool_ids - added - set(tokenizer.all_special_ids))
    if ordinary:
        LOG.warning(
            "tool token(s) %s are ordinary tokens of the vocabulary, not added ones: training them "
            "as tool tokens moves rows the model uses for text",
            tokenizer.convert_ids_to_tokens(ordinary)[:5],
        )
    for row in rows:
        ids = tokenizer(row["completion"], add_special_tokens=False, verbose=False)["input_ids"]
        if tool_ids & set(ids):
            return
    names = tokenizer.convert_ids_to_tokens(sorted(tool_ids))[:5]
    raise InputError(
        f"no completion holds the tool token(s) {names}; expected rows whose completions call the tool",
        where=WHERE,
    )
