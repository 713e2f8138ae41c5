"""Chunks: stretches of text that both tokenizers end a token at (ALM, arXiv 2503.20083).

A transplanted model and its original read the same text through different tokenizers; their
likelihoods and hidden states can only be compared where both token sequences have just
finished the same bytes. Each side's tokens carry the character span the tokenizer reports
(its offsets); a token ends at a *boundary* unless the next token starts inside it, which is
how a multi-byte character split over several tokens shows (byte-level BPE pieces and
SentencePiece ``<0xNN>`` byte pieces of one character all report that character's span), so
no boundary ever falls inside a character. Tokens the tokenizer inserted (BOS, EOS between
files) have an empty span and no bytes; they belong to the chunk around them. A chunk is the
run of tokens of each side between two consecutive positions that are boundaries of both.

Both sequences start with a BOS of span ``(start, start)``, a boundary of both: the first
chunk begins right after it, and tokens of a side that lie before the common start (a window
cut inside a character) belong to no chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]  # [start, end) in characters of a shared text


@dataclass(frozen=True)
class Chunks:
    """Aligned chunks as token-index ranges: chunk ``k`` is tokens ``a_lo[k]..a_hi[k]-1`` of
    side A and ``b_lo[k]..b_hi[k]-1`` of side B (never empty on either side)."""

    a_lo: list[int]
    a_hi: list[int]
    b_lo: list[int]
    b_hi: list[int]

    def __len__(self) -> int:
        return len(self.a_hi)


def boundary_ends(spans: Sequence[Span], start: int | None = None) -> dict[int, int]:
    """{character position: index of the last token ending there at a boundary}.

    Token ``i`` ends at a boundary when the next token does not start inside it (a later
    piece of the same character starts before ``i``'s end). ``start``: a boundary before
    the first token (index -1), for a sequence without BOS."""
    ends: dict[int, int] = {} if start is None else {start: -1}
    for i, (_, end) in enumerate(spans):
        nxt = spans[i + 1][0] if i + 1 < len(spans) else None
        if nxt is None or nxt >= end:
            ends[end] = i
    return ends


def align_chunks(
    a: Sequence[Span],
    b: Sequence[Span],
    start_a: int | None = None,
    start_b: int | None = None,
) -> Chunks:
    """Chunks of two token sequences over the same text (see the module doc);
    ``start_a``/``start_b``: where a side without BOS starts reading."""
    ea, eb = boundary_ends(a, start_a), boundary_ends(b, start_b)
    common = sorted(set(ea) & set(eb))
    out = Chunks([], [], [], [])
    for prev, pos in zip(common, common[1:], strict=False):
        a_lo, a_hi, b_lo, b_hi = ea[prev] + 1, ea[pos] + 1, eb[prev] + 1, eb[pos] + 1
        if a_hi > a_lo and b_hi > b_lo:
            out.a_lo.append(a_lo)
            out.a_hi.append(a_hi)
            out.b_lo.append(b_lo)
            out.b_hi.append(b_hi)
    return out


def token_spans(tokenizer: object, text: str, base: int = 0) -> tuple[list[int], list[Span]]:
    """Ids and character spans (shifted by ``base``) of ``text`` without added BOS/EOS."""
    enc = tokenizer(  # type: ignore[operator]
        text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    spans = [(base + s, base + e) for s, e in enc["offset_mapping"]]
    return list(enc["input_ids"]), spans


def encode_segments(
    tokenizer: object, segments: Sequence[tuple[int, str]], *, bos: int | None, sep: int | None
) -> tuple[list[int], list[Span]]:
    """One sequence over text segments ``(char base, text)`` of a shared coordinate system:
    BOS (span at the first segment's start), each segment's tokens, ``sep`` between segments
    (an empty span where the previous segment ends), as the heal corpus joins its files."""
    ids: list[int] = []
    spans: list[Span] = []
    if bos is not None:
        start = segments[0][0] if segments else 0
        ids.append(bos)
        spans.append((start, start))
    for k, (base, text) in enumerate(segments):
        if k and sep is not None:
            end = spans[-1][1] if spans else base
            ids.append(sep)
            spans.append((end, end))
        seg_ids, seg_spans = token_spans(tokenizer, text, base)
        ids += seg_ids
        spans += seg_spans
    return ids, spans
