"""Token texts as they appear in running text, and splitting texts with a tokenizer.

Methods that estimate a new token from its pieces need (a) the surface text of the token and
(b) that text split by the base tokenizer. Per-token ``tokenizer.decode`` is both slow on a
262k vocabulary and wrong for this purpose (SentencePiece decoders strip the leading space of
the first token), so texts come from the canonical forms instead.

Raw bytes: a token that is not valid UTF-8 on its own (a byte of a multi-byte character, the
CJK fragments of byte-level vocabularies) keeps its bytes: its text carries each undecodable
byte as a lone surrogate (Python's ``surrogateescape``, U+DC80..U+DCFF), so ``\xe6`` and
``\xe3`` stay different texts. :func:`split_texts` turns such bytes into the base's own byte
tokens (byte-level symbols or ``<0xNN>`` pieces); :func:`display_text` replaces them with
U+FFFD for consumers that need valid Unicode (a sentence embedder).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from mergekit_tokenplug.vocab.canonical import (
    BYTE_PIECES,
    _bytes_to_unicode,
    backend_of,
    convert_tokens,
    detect_scheme,
    read_vocab,
    view_added_forms,
    view_canonical,
)

#: A lone surrogate standing for one undecodable byte (``surrogateescape``).
_RAW_BYTES = re.compile("([\udc80-\udcff]+)")  # a group, so that split() keeps the runs
#: Put in front of a text so that the text is encoded as it appears *inside* running text; a
#: private-use character that vocabularies do not hold and that merges with nothing after it.
SENTINEL = "\ue000"


def display_text(text: str) -> str:
    """``text`` with every raw byte (lone surrogate) replaced by U+FFFD: valid Unicode."""
    return _RAW_BYTES.sub(lambda m: "\ufffd" * len(m.group()), text)


def token_texts(tokenizer: Any, ids: Iterable[int], *, specials: bool = True) -> list[str]:
    """The text each token contributes to running text (``Ġhello`` / ``▁hello`` -> " hello",
    ``<0x0A>`` -> "\\n").

    Choices: a token whose bytes are not valid UTF-8 on their own (a partial multi-byte
    character) keeps them as lone surrogates (see the module docstring); a special token gives
    its content string, or "" with ``specials=False`` (the convention for "no text": such a
    row is never a neighbour); a non-special added token gives the text it decodes to; an id
    with no token (a hole, or beyond the vocabulary) gives "".
    """
    view = read_vocab(tokenizer)
    forms = view_canonical(view) | view_added_forms(view)
    tokens = view.tokens
    size = len(tokens)
    result: list[str] = []
    append = result.append
    for raw in ids:
        i = int(raw)
        form = forms.get(i)
        if form is not None:
            append(form.decode("utf-8", errors="surrogateescape"))
        elif specials and 0 <= i < size and tokens[i] is not None:
            append(tokens[i])  # special token: its content
        else:
            append("")
    return result


def prepends_space(tokenizer: Any) -> bool:
    """Whether the tokenizer turns the start of a text into a word start (SentencePiece's
    prepended ``▁``, byte-level ``add_prefix_space``): checked on the tokenizer itself (the
    canonical form of its first piece of "a"; no full vocabulary read)."""
    backend = backend_of(tokenizer)
    ids = backend.encode("a", add_special_tokens=False).ids
    if not ids:
        return False
    (form,) = convert_tokens(detect_scheme(tokenizer), [backend.id_to_token(ids[0])])
    return form.startswith(b" ")


def _byte_token_ids(tokenizer: Any) -> dict[int, int]:
    """byte value -> id of the tokenizer's token for that single byte (byte-level alphabet
    symbol, or ``<0xNN>`` byte-fallback piece); bytes it has no token for are absent."""
    backend = backend_of(tokenizer)
    scheme = detect_scheme(tokenizer)
    if scheme.kind == "byte_level":
        names = _bytes_to_unicode()
    elif scheme.byte_fallback:
        names = dict(enumerate(BYTE_PIECES))
    else:
        return {}
    ids = {b: backend.token_to_id(name) for b, name in names.items()}
    return {b: i for b, i in ids.items() if i is not None}


def _encode_inside(backend: Any, texts: list[str]) -> list[list[int]]:
    """Pieces of each text as it appears inside running text, for a tokenizer that prepends a
    word-start marker: encode ``SENTINEL + text`` and drop the pieces the sentinel produced
    (by character offsets). A text starting with " " stays a word start (``▁the``); one without
    stays a continuation (``ing``, not ``▁ing``). Where the sentinel merged into a piece of the
    text, that text is encoded on its own instead."""
    n = len(SENTINEL)
    behind = backend.encode_batch([SENTINEL + t for t in texts], add_special_tokens=False)
    alone: list[int] = []
    pieces: list[list[int]] = []
    for k, enc in enumerate(behind):
        spans = list(zip(enc.ids, enc.offsets, strict=True))
        pieces.append([i for i, (start, _) in spans if start >= n])
        if any(start < n < end for _, (start, end) in spans):  # the sentinel merged into the text
            alone.append(k)
    if alone:
        encs = backend.encode_batch([texts[k] for k in alone], add_special_tokens=False)
        for k, enc in zip(alone, encs, strict=True):
            pieces[k] = list(enc.ids)
    return pieces


def split_texts(
    tokenizer: Any, texts: Sequence[str], *, running_text: bool = False
) -> list[list[int]]:
    """Token ids of each text under ``tokenizer``, without special tokens (one batch call).

    By default a text is encoded as given, i.e. as the start of a sequence. With
    ``running_text=True`` the pieces are those of the text inside running text: for a
    tokenizer that prepends a word-start marker (SentencePiece's ``▁``), the text is encoded
    behind a sentinel whose pieces are dropped, so "ing" gives the continuation ``ing`` and
    " the" gives ``▁the``. Raw bytes in a text (lone surrogates, see the module docstring)
    become the tokenizer's own single-byte tokens (dropped where it has none).
    """
    if not texts:
        return []
    backend = backend_of(tokenizer)
    inside = running_text and prepends_space(tokenizer)
    # Every text is cut into runs of text and runs of raw bytes; text runs are encoded in one
    # batch. Without a prepended marker a run inside running text encodes as it does alone.
    runs = [
        [(k % 2 == 1, part) for k, part in enumerate(_RAW_BYTES.split(t)) if part] for t in texts
    ]
    text_runs = [part for parts in runs for raw, part in parts if not raw]
    if inside:
        encoded = iter(_encode_inside(backend, text_runs))
    else:
        encoded = (list(e.ids) for e in backend.encode_batch(text_runs, add_special_tokens=False))
    byte_ids = _byte_token_ids(tokenizer) if any(raw for p in runs for raw, _ in p) else {}
    pieces: list[list[int]] = []
    for parts in runs:
        ids: list[int] = []
        for raw, part in parts:
            if raw:
                data = part.encode("utf-8", errors="surrogateescape")
                ids.extend(byte_ids[b] for b in data if b in byte_ids)
            else:
                ids.extend(next(encoded))
        pieces.append(ids)
    return pieces
