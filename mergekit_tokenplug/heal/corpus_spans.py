"""Where each heal training window lies in the corpus text, and the teacher's reading of it.

``heal/data.py`` tokenizes each file's training part, joins the files with EOS and cuts the
stream into windows of ``seq_len`` tokens. This module rebuilds that stream with the character
span of every token (files placed one after another in one coordinate system, one character
apart so no token touches two files) and checks that the ids are the very ones the windows
hold. The teacher's tokenizer reads the same files into its own stream once; a window's
teacher sequence is the run of the teacher's tokens that lie inside the window's text, so the
teacher sees each stretch tokenized as in the whole document (for the same tokenizer, exactly
the student's window).

A window cut inside a character (a byte-level piece of a multi-byte character) starts after
that character and ends before a trailing partial one; the pieces outside belong to no chunk.
BOS gets the span of where its sequence's text starts: when both sides start at the same
place it is the first chunk's left edge, otherwise the first chunk starts at the first
position both sides end a token at.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_tokenplug.heal.align import Span, token_spans
from mergekit_tokenplug.heal.data import split_text
from mergekit_tokenplug.resources.corpus import read_text_strict, resolve_corpus


@dataclass
class Stream:
    """A tokenizer's reading of the training texts: ids and character spans."""

    ids: list[int]
    spans: list[Span]
    bos: int | None

    def clean_start(self, i: int) -> bool:
        """Token ``i`` does not start inside the previous token (a split character)."""
        return i == 0 or self.spans[i][0] >= self.spans[i - 1][1]

    def between(self, start: int, end: int) -> tuple[list[int], list[Span]]:
        """BOS and the tokens lying inside ``[start, end)`` (the teacher's side)."""
        starts = [s for s, _ in self.spans]
        lo = bisect.bisect_left(starts, start)
        hi = lo
        while hi < len(self.spans) and self.spans[hi][1] <= end:
            hi += 1
        ids, spans = self.ids[lo:hi], self.spans[lo:hi]
        if self.bos is not None:
            first = spans[0][0] if spans else start
            ids, spans = [self.bos, *ids], [(first, first), *spans]
        return ids, spans


@dataclass
class Windows:
    """The student's training stream cut into windows of ``seq_len`` tokens."""

    stream: Stream
    seq_len: int

    def window(self, index: int) -> tuple[list[int], list[Span], int, int]:
        """(ids with BOS, spans, start, end of the text the window covers whole)."""
        s, lo, hi = self.stream, index * self.seq_len, (index + 1) * self.seq_len
        start = s.spans[lo][0] if s.clean_start(lo) else s.spans[lo][1]
        end = start
        for j in range(hi - 1, lo - 1, -1):
            if j + 1 >= len(s.spans) or s.clean_start(j + 1):
                end = max(start, s.spans[j][1])
                break
        ids, spans = list(s.ids[lo:hi]), list(s.spans[lo:hi])
        if s.bos is not None:
            ids, spans = [s.bos, *ids], [(start, start), *spans]
        return ids, spans, start, end


def training_texts(patterns: list[str], eval_fraction: float) -> list[str]:
    """Each corpus file's training part, as ``heal/data.py`` splits it."""
    files = resolve_corpus(list(patterns), where="--corpus")
    return [split_text(read_text_strict(f), eval_fraction)[0] for f in files]


def read_stream(tokenizer: Any, texts: list[str]) -> Stream:
    """``texts`` tokenized one by one and joined with EOS, with spans."""
    ids: list[int] = []
    spans: list[Span] = []
    sep = getattr(tokenizer, "eos_token_id", None)
    base = 0
    for text in texts:
        if ids and sep is not None:
            ids.append(sep)
            spans.append((spans[-1][1], spans[-1][1]))
        f_ids, f_spans = token_spans(tokenizer, text, base)
        ids += f_ids
        spans += f_spans
        base += len(text) + 1
    return Stream(ids, spans, getattr(tokenizer, "bos_token_id", None))


def student_windows(
    tokenizer: Any, texts: list[str], seq_len: int, windows: torch.Tensor
) -> Windows:
    """The student's stream, checked id for id against the training ``windows``."""
    stream = read_stream(tokenizer, texts)
    n = windows.shape[0]
    body = windows[:, 1:] if stream.bos is not None else windows
    if stream.ids[: n * seq_len] != body.reshape(-1).tolist():
        raise RuntimeError("the training windows do not match the corpus stream")  # a bug
    return Windows(stream, seq_len)
