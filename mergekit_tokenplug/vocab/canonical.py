"""Canonical token forms: what bytes each vocabulary entry stands for, whatever the scheme.

Two tokenizers can only be compared token by token once their entries are written in one
convention. Raw strings do not do that: byte-level BPE writes a word-start space as ``Ġ`` and
"é" as ``Ã©``, SentencePiece writes the space as ``▁`` and bytes as ``<0xNN>`` pieces, WordPiece
marks the *continuation* (``##``) instead of the word start. The canonical form of a token is
the UTF-8 bytes it contributes to running text, where a leading space marks a word start:

=====================  ===========================  ==================
scheme                 token                         canonical bytes
=====================  ===========================  ==================
byte_level             ``Ġhello`` / ``Ã©`` / ``Ċ``  ``b" hello"`` / ``"é".encode()`` / ``b"\\n"``
metaspace              ``▁hello`` / ``<0x0A>``      ``b" hello"`` / ``b"\\n"``
wordpiece              ``hello`` / ``##ing``        ``b" hello"`` / ``b"ing"``
plain                  ``hello``                    ``b"hello"``
=====================  ===========================  ==================

WordPiece decision: a piece without the ``##`` prefix starts a word, so it gets the leading
space (that is what the WordPiece decoder writes, and what makes ``hello`` meet ``Ġhello`` /
``▁hello``). Exception: a single punctuation or CJK character. BERT's pre-tokenizer splits those
off as words of their own regardless of spacing, and in running text they attach to their
neighbour ("hello," / "東京"), so ``,`` -> ``b","`` (matching byte-level ``,``, not ``Ġ,``).

The scheme is read from the backend tokenizer's own JSON (model, normalizer, pre-tokenizer,
decoder), never from the Python class name, so an unknown wrapper class cannot mislead it.
"""

from __future__ import annotations

import json
import string
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenizers import Tokenizer, normalizers

from mergekit_tokenplug.errors import InputError

SchemeKind = Literal["byte_level", "metaspace", "wordpiece", "plain"]

#: Roles mapped between tokenizers when their strings differ (in this preference order).
ROLES: tuple[str, ...] = ("eos", "bos", "unk", "pad", "cls", "sep", "mask")


@dataclass(frozen=True)
class TokenScheme:
    """How a tokenizer spells its vocabulary entries (see the module docstring)."""

    kind: SchemeKind
    space_marker: str = "\u2581"  # metaspace: the character standing for a space
    byte_fallback: bool = False  # `<0xNN>` pieces stand for single bytes
    continuation_prefix: str = "##"  # wordpiece: marks a piece continuing a word


# --------------------------------------------------------------------------- backend access


def backend_of(tokenizer: Any) -> Tokenizer:
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer (or the object itself)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise InputError(
        f"expected a fast tokenizer backed by the `tokenizers` library (tokenizer.json), "
        f"got {type(tokenizer).__name__}"
    )


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every component inside a (possibly nested) Sequence normalizer/pre-tokenizer/decoder."""
    if not isinstance(node, dict):
        return
    yield node
    for value in node.values():
        if isinstance(value, list):
            for child in value:
                yield from _walk(child)


def _string_pattern(node: dict[str, Any]) -> str | None:
    pattern = node.get("pattern")
    return pattern.get("String") if isinstance(pattern, dict) else None


def detect_scheme(tokenizer: Any) -> TokenScheme:
    """Read the token spelling scheme from the tokenizer's model/normalizer/pre-tokenizer/decoder.

    Reads each component's own JSON (small; the vocabulary is not serialised for this).
    """
    return _read_scheme(backend_of(tokenizer))


def _read_scheme(backend: Tokenizer, data: dict[str, Any] | None = None) -> TokenScheme:
    """The scheme from the model settings, normalizer, pre_tokenizer and decoder.

    ``byte_fallback`` falls back to the model's JSON: the Python model objects do not all
    expose it (Unigram has no such attribute), and a tokenizer may fall back to bytes without
    a ByteFallback decoder. That JSON is ``data``'s (the already parsed tokenizer.json) when
    given, else serialised only then.
    """
    pre, dec, norm = (
        list(_walk(json.loads(part.__getstate__()))) if part is not None else []
        for part in (backend.pre_tokenizer, backend.decoder, backend.normalizer)
    )
    model = backend.model
    byte_fallback = getattr(model, "byte_fallback", None)
    if byte_fallback is None:
        model_json = (data or {}).get("model") or json.loads(model.__getstate__())
        byte_fallback = model_json.get("byte_fallback", False)
    byte_fallback = bool(byte_fallback) or any(n.get("type") == "ByteFallback" for n in dec)

    if any(n.get("type") == "ByteLevel" for n in pre + dec + norm):
        return TokenScheme("byte_level", byte_fallback=byte_fallback)

    metaspace = [
        n.get("replacement") or "\u2581" for n in pre + dec if n.get("type") == "Metaspace"
    ]
    # SentencePiece conversions without Metaspace (Llama-2, Gemma): a Replace decoder writes
    # the marker as a space, or a Replace normalizer writes the space as the marker
    replaces = [(_string_pattern(n), n.get("content")) for n in dec if n.get("type") == "Replace"]
    spelled = [pat for pat, content in replaces if content == " "]
    spelled += [
        n.get("content") for n in norm if n.get("type") == "Replace" and _string_pattern(n) == " "
    ]
    marker = metaspace[0] if metaspace else next((m for m in spelled if m and m != " "), None)
    if marker is not None:
        return TokenScheme("metaspace", space_marker=marker, byte_fallback=byte_fallback)

    wp_decoder = next((n for n in dec if n.get("type") == "WordPiece"), None)
    if type(model).__name__ == "WordPiece" or wp_decoder is not None:
        prefix = (
            getattr(model, "continuing_subword_prefix", None)
            or (wp_decoder or {}).get("prefix")
            or "##"
        )
        return TokenScheme("wordpiece", byte_fallback=byte_fallback, continuation_prefix=prefix)

    return TokenScheme("plain", byte_fallback=byte_fallback)


# --------------------------------------------------------------------------- conversion


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    moved = [b for b in range(256) if b not in keep]  # to 256, 257, ... in byte order
    return {b: chr(b) for b in keep} | {b: chr(256 + k) for k, b in enumerate(moved)}


#: str.translate table: alphabet char -> chr(byte); other chars <= 255 -> an unencodable
#: sentinel, so `.encode("latin-1")` fails for any token outside the alphabet.
_BYTE_LEVEL_TABLE = {c: "\uffff" for c in range(256)} | {
    ord(ch): chr(b) for b, ch in _bytes_to_unicode().items()
}
#: The 256 SentencePiece byte-fallback pieces, `<0x00>` .. `<0xFF>`.
BYTE_PIECES: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))


#: `<0xNN>` spelling (either hex case) -> the single byte it stands for.
_BYTE_PIECE_MAP = {f"<0x{b:02{x}}>": bytes([b]) for x in "Xx" for b in range(256)}


def _splits_off_alone(token: str) -> bool:
    """One punctuation or CJK character: BERT makes it a word of its own (no leading space)."""
    if len(token) != 1:
        return False
    if token in string.punctuation or unicodedata.category(token).startswith("P"):
        return True
    cp = ord(token)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def convert_tokens(scheme: TokenScheme, tokens: Iterable[str]) -> list[bytes]:
    """Canonical bytes of each token string spelled in ``scheme`` (one pass, C-level str ops).

    Byte-level tokens with a character outside the GPT-2 alphabet are taken as their literal
    UTF-8, as the ByteLevel decoder does.
    """
    fallback = scheme.byte_fallback
    pieces = _BYTE_PIECE_MAP
    out: list[bytes] = []
    append = out.append
    if scheme.kind == "byte_level":
        table = _BYTE_LEVEL_TABLE
        for tok in tokens:
            try:
                append(tok.translate(table).encode("latin-1"))
            except UnicodeEncodeError:
                append((fallback and pieces.get(tok)) or tok.encode("utf-8"))
        return out
    if scheme.kind == "wordpiece":
        prefix = scheme.continuation_prefix
        n = len(prefix)
        for tok in tokens:
            if len(tok) > n and tok.startswith(prefix):
                append(tok[n:].encode("utf-8"))
            elif _splits_off_alone(tok):
                append(tok.encode("utf-8"))
            else:
                append(b" " + tok.encode("utf-8"))
        return out
    marker = scheme.space_marker if scheme.kind == "metaspace" else None
    for tok in tokens:
        text = tok if marker is None else tok.replace(marker, " ")
        append((fallback and pieces.get(tok)) or text.encode("utf-8"))
    return out


# --------------------------------------------------------------------------- vocabulary view


@dataclass
class VocabView:
    """One tokenizer's vocabulary by id, read once: what alignment and texts need."""

    scheme: TokenScheme
    size: int  # max id + 1 (ids without a token in between are holes)
    tokens: list[str | None]  # token string by id, None for a hole
    regular_ids: list[int]  # ids of model-vocabulary entries that are neither added nor special
    added: dict[int, tuple[str, bool]]  # added-token id -> (content, special flag)
    special_ids: set[int]  # special added tokens plus every role token
    roles: dict[str, int] = field(default_factory=dict)  # "bos"/"eos"/... -> id, in ROLES order


def read_vocab(tokenizer: Any, scheme: TokenScheme | None = None) -> VocabView:
    """Collect ids, added/special tokens and roles (bos/eos/... from the transformers wrapper)."""
    backend = backend_of(tokenizer)
    # one serialisation gives scheme, vocab and added tokens (on a 262k vocabulary, faster
    # than get_vocab)
    data = json.loads(backend.to_str())
    scheme = scheme or _read_scheme(backend, data)
    vocab = (data.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        tokens: list[str | None] = [entry[0] for entry in vocab]
    else:
        tokens = [None] * (max(vocab.values(), default=-1) + 1)
        for tok, i in vocab.items():
            tokens[i] = tok
    added: dict[int, tuple[str, bool]] = {
        int(t["id"]): (t["content"], bool(t.get("special"))) for t in data.get("added_tokens") or []
    }
    regular_ids = [i for i, tok in enumerate(tokens) if tok is not None and i not in added]
    tokens.extend([None] * (max(added, default=-1) + 1 - len(tokens)))
    for i, (content, _) in added.items():  # the added content wins over a model entry
        tokens[i] = content
    special_ids = {i for i, (_, special) in added.items() if special}
    roles: dict[str, int] = {}
    if not isinstance(tokenizer, Tokenizer):
        by_string = {content: i for i, (content, _) in sorted(added.items(), reverse=True)}
        for role in ROLES:
            tok = getattr(tokenizer, f"{role}_token", None)
            if tok is None:
                continue
            i = by_string.get(str(tok), backend.token_to_id(str(tok)))
            if i is not None:
                roles[role] = i
                special_ids.add(i)
        for i in getattr(tokenizer, "all_special_ids", None) or []:
            if i is not None and 0 <= int(i) < len(tokens) and tokens[int(i)] is not None:
                special_ids.add(int(i))
    if not special_ids.issubset(added):  # a role token that is a plain vocab entry is special
        regular_ids = [i for i in regular_ids if i not in special_ids]
    return VocabView(scheme, len(tokens), tokens, regular_ids, added, special_ids, roles)


def canonical_forms(tokenizer: Any, scheme: TokenScheme | None = None) -> dict[int, bytes]:
    """Canonical bytes of every regular token (neither added nor special), keyed by token id.

    Keyed by id rather than string because callers work in ids (alignment, decoded texts) and
    a hole-free id lookup is what they need. Added/special tokens are left out on purpose:
    they are matched by string and role, not by the text they spell.
    """
    return view_canonical(read_vocab(tokenizer, scheme))


def view_canonical(view: VocabView) -> dict[int, bytes]:
    forms = convert_tokens(view.scheme, [view.tokens[i] for i in view.regular_ids])  # type: ignore[misc]
    return dict(zip(view.regular_ids, forms, strict=True))


def view_added_forms(view: VocabView) -> dict[int, bytes]:
    """Bytes each non-special added token stands for (special tokens are left out).

    An added token is matched on the input text itself, before any pre-tokenizer: in a
    byte-level tokenizer its content is raw text (an added ``café`` is ``b"caf\\xc3\\xa9"``,
    the bytes of the model's ``cafÃ©``), not GPT-2 byte-alphabet symbols. One exception:
    content spelled entirely in the byte alphabet that decodes to *different, valid* UTF-8
    (``Ġfoo``, ``Ã©``) is a vocabulary entry copied as an added token (mergekit's union
    tokenizer adds the other model's entries this way) and reads as byte-level symbols; see
    :func:`view_added_symbol_forms` for the symbol reading of the remaining ones. Other schemes read the content through their spelling (``▁`` = space), as their
    normalizer writes it.
    """
    ids = [i for i in sorted(view.added) if i not in view.special_ids]
    contents = [view.added[i][0] for i in ids]
    if view.scheme.kind == "byte_level":
        forms = [_added_byte_level_form(c) for c in contents]
    else:
        forms = convert_tokens(view.scheme, contents)
    return dict(zip(ids, forms, strict=True))


def view_added_symbol_forms(view: VocabView) -> dict[int, bytes]:
    """Byte-level only: the byte-alphabet reading of non-special added tokens spelled
    entirely in that alphabet, where it differs from :func:`view_added_forms` (``æ`` =
    the single byte 0xE6 as mergekit's union tokenizer copies it, vs the letter "æ").
    Alignment tries this reading first and the raw text second."""
    if view.scheme.kind != "byte_level":
        return {}
    out: dict[int, bytes] = {}
    for i, form in view_added_forms(view).items():
        try:
            symbols = view.added[i][0].translate(_BYTE_LEVEL_TABLE).encode("latin-1")
        except UnicodeEncodeError:
            continue
        if symbols != form:
            out[i] = symbols
    return out


def _added_byte_level_form(content: str) -> bytes:
    try:
        symbols = content.translate(_BYTE_LEVEL_TABLE).encode("latin-1")
        symbols.decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return content.encode("utf-8")
    return symbols


# --------------------------------------------------------------------------- normalizers

#: Normalizer components that only spell the word-start marker or trim spaces; they are not
#: applied when a token's text is normalized for lookup (the canonical form already says
#: where spaces are).
_SPACING_NORMALIZERS = frozenset({"Prepend", "Strip"})


def _content_parts(node: Any) -> list[Any]:
    """The content-changing components of a (possibly nested) normalizer, as objects."""
    state = json.loads(node.__getstate__())
    kind = state.get("type")
    if kind == "Sequence":
        count = len(state.get("normalizers") or [])
        return [part for k in range(count) for part in _content_parts(node[k])]
    if kind in _SPACING_NORMALIZERS:
        return []
    if kind == "Replace":
        pattern, content = _string_pattern(state), state.get("content") or ""
        if pattern is None or " " in pattern + content or "\u2581" in content:
            return []
    if kind == "BertNormalizer":  # keep case/accents; drop CJK spacing and control cleanup
        return [
            normalizers.BertNormalizer(
                clean_text=False,
                handle_chinese_chars=False,
                strip_accents=state.get("strip_accents"),
                lowercase=bool(state.get("lowercase")),
            )
        ]
    return [node]


def content_normalizer(tokenizer: Any) -> Any | None:
    """The tokenizer's normalizer without its spacing parts (``Prepend("▁")``, the space ->
    ``▁`` Replace, Strip), or None when nothing that changes text content is left.

    Used to look up another tokenizer's token the way this tokenizer would see its text:
    a lowercasing model encodes "The" as ``the``, so a donor's ``ĠThe`` belongs on ``the``.
    """
    node = backend_of(tokenizer).normalizer
    parts = _content_parts(node) if node is not None else []
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else normalizers.Sequence(parts)


def normalized_form(normalizer: Any, form: bytes) -> bytes:
    """Canonical bytes after ``normalizer`` ran on the text (a leading word-start space is
    kept aside so the normalizer cannot strip or respell it). Invalid UTF-8 stays as is."""
    try:
        text = form.decode("utf-8")
    except UnicodeDecodeError:
        return form
    lead = " " if text.startswith(" ") else ""
    return (lead + normalizer.normalize_str(text[len(lead) :])).encode("utf-8")
