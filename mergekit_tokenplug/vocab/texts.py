"""Token texts as they appear in running text, and splitting texts with a tokenizer.

Methods that estimate a new token from its pieces need (a) the surface text of the token and
(b) that text split by the base tokenizer. Per-token ``tokenizer.decode`` is both slow on a
262k vocabulary and wrong for this purpose (SentencePiece decoders strip the leading space of
the first token), so texts come from the canonical forms instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mergekit_tokenplug.vocab.canonical import (
    backend_of,
    convert_tokens,
    detect_scheme,
    read_vocab,
    view_added_forms,
    view_canonical,
)


def token_texts(tokenizer: Any, ids: Iterable[int]) -> list[str]:
    """The text each token contributes to running text (``Ġhello`` / ``▁hello`` -> " hello",
    ``<0x0A>`` -> "\\n").

    Choices: a token whose bytes are not valid UTF-8 on their own (a partial multi-byte
    character) is decoded with ``errors="replace"`` (U+FFFD); a special token gives its
    content string; a non-special added token gives the text it decodes to; an id with no
    token (a hole, or beyond the vocabulary) gives "".
    """
    view = read_vocab(tokenizer)
    forms = view_canonical(view)
    forms.update(view_added_forms(view))
    tokens = view.tokens
    size = len(tokens)
    result: list[str] = []
    append = result.append
    for raw in ids:
        i = int(raw)
        form = forms.get(i)
        if form is not None:
            append(form.decode("utf-8", errors="replace"))
        elif 0 <= i < size and tokens[i] is not None:
            append(tokens[i])  # special token: its content
        else:
            append("")
    return result


def _first_forms(tokenizer: Any, pieces: list[list[int]]) -> list[bytes | None]:
    """Canonical bytes of the first piece of each id list (cheap: no full vocabulary read)."""
    backend = backend_of(tokenizer)
    firsts = [backend.id_to_token(p[0]) if p else None for p in pieces]
    known = [t for t in firsts if t is not None]
    forms = iter(convert_tokens(detect_scheme(tokenizer), known))
    return [next(forms) if t is not None else None for t in firsts]


def prepends_space(tokenizer: Any) -> bool:
    """Whether the tokenizer turns the start of a text into a word start (SentencePiece's
    prepended ``▁``, byte-level ``add_prefix_space``): checked on the tokenizer itself."""
    ids = backend_of(tokenizer).encode("a", add_special_tokens=False).ids
    (form,) = _first_forms(tokenizer, [ids])
    return bool(form) and form.startswith(b" ")


def split_texts(
    tokenizer: Any, texts: Sequence[str], *, running_text: bool = False
) -> list[list[int]]:
    """Token ids of each text under ``tokenizer``, without special tokens (one batch call).

    By default a text is encoded as given, i.e. as the start of a sequence. With
    ``running_text=True`` the pieces are those of the text inside running text, for
    tokenizers that prepend a word-start space: a text starting with " " is encoded without
    that space (the prepended marker supplies it), and a lone leading space piece the
    tokenizer added to a text without one is dropped (a text such as "ing" still comes back
    as a word start, ``▁ing``, where the vocabulary has that piece: the tokenizer gives no
    way to ask for a word continuation).
    """
    if not texts:
        return []
    backend = backend_of(tokenizer)
    texts = list(texts)
    adjust = running_text and prepends_space(tokenizer)
    inputs = [t[1:] if adjust and t.startswith(" ") else t for t in texts]
    encodings = backend.encode_batch(inputs, add_special_tokens=False)
    pieces = [list(enc.ids) for enc in encodings]
    if adjust:
        for text, ids, first in zip(texts, pieces, _first_forms(tokenizer, pieces), strict=True):
            if first == b" " and len(ids) > 1 and not text.startswith(" "):
                del ids[0]
    return pieces
