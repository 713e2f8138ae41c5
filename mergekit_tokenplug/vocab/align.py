"""Align an output vocabulary onto a model's vocabulary: which model row each output id reuses.

Rules, for each output id:

* special tokens (``special`` added tokens and every bos/eos/unk/pad/cls/sep/mask token):
  the model's added/special token with the identical string; else the model token holding
  the same role, unless that row is untrained (the model's unknown token, a pad token that is
  not also BOS/EOS, ``<unused0>``-style placeholders): never copy a row nothing trained;
  else MISSING (estimated) and listed in ``unmatched_special``. Tokens without a role
  (chat markers, ``additional_special_tokens``) only ever match their own string, so two
  different ones never share a source.
* regular tokens: EXACT when the model has the same raw string *and* it means the same bytes
  (a raw match across schemes, e.g. byte-level ``Ã©`` vs a literal ``Ã©``, is no match); else
  CANONICAL when a model token spells the same canonical bytes (see ``canonical.py``). If
  several model tokens share those bytes, the regular piece beats a non-special added token,
  which beats a ``<0xNN>`` byte piece (byte pieces are only emitted when nothing else spells
  those bytes, so their rows are barely trained); ties go to the lowest id. With
  ``byte_pieces="estimate"`` a token whose only counterpart is a byte piece stays MISSING
  (its row is estimated instead of copied).
* uncased / normalizing models (a Lowercase, NFKC, accent-stripping ... normalizer): a regular
  token with no counterpart is looked up once more after the model's own normalizer ran on its
  text (``ĠThe`` finds ``the`` in a lowercasing model, which encodes "The" as ``the``).
* non-special added tokens: EXACT on the identical string of a model added/special token,
  else CANONICAL on the bytes they stand for (byte-level: their byte-alphabet reading first,
  as mergekit's union tokenizer copies vocabulary entries, then their raw text); unmatched
  ones are listed in ``unmatched_added``.
* model ids >= ``model_rows`` are never sources; output ids without a token are holes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import numpy as np

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.vocab.canonical import (
    BYTE_PIECES,
    VocabView,
    content_normalizer,
    normalized_form,
    read_vocab,
    view_added_forms,
    view_added_symbol_forms,
    view_canonical,
)


class Match(IntEnum):
    """How an output id found its model row (values stored in ``VocabAlignment.how``)."""

    MISSING = 0
    EXACT = 1
    CANONICAL = 2
    SPECIAL = 3


MISSING, EXACT, CANONICAL, SPECIAL = (int(m) for m in Match)


@dataclass
class VocabAlignment:
    """Per output id: the model row it copies (``src_ids``, -1 = none) and how it matched."""

    src_ids: np.ndarray  # (V_out,) int64, model row or -1
    how: np.ndarray  # (V_out,) int8, a Match value
    unmatched_special: list[int] = field(default_factory=list)  # output ids, sorted
    unmatched_added: list[int] = field(default_factory=list)  # non-special added, sorted
    holes: list[int] = field(default_factory=list)  # output ids with no token at all
    # added/special output ids: how each found its row ("same token", "same text",
    # "role eos") or why it has none ("no counterpart", "role unk: `<unk>` is untrained")
    special_how: dict[int, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.src_ids.shape[0])

    def counts(self) -> dict[str, int]:
        """Ids per Match kind (lower-case names); ``holes`` is the part of ``missing``
        that has no token."""
        tally = np.bincount(self.how.astype(np.int64), minlength=len(Match))
        return {m.name.lower(): int(tally[m]) for m in Match} | {"holes": len(self.holes)}

    def matched(self, *kinds: Match) -> tuple[np.ndarray, np.ndarray]:
        """(output ids, model rows) of the matches of the given kinds (default: all)."""
        codes = [int(k) for k in kinds] or [EXACT, CANONICAL, SPECIAL]
        out_ids = np.flatnonzero(np.isin(self.how, codes))
        return out_ids, self.src_ids[out_ids]

    def missing_ids(self) -> np.ndarray:
        """Output ids that hold a token but have no model row (holes excluded)."""
        mask = self.how == MISSING
        mask[np.asarray(self.holes, dtype=np.int64)] = False
        return np.flatnonzero(mask)


# Rows a model never trained by convention: reserved / unused placeholders.
_RESERVED = re.compile(r"<unused\d+>|\[unused\d+\]|<\|reserved_special_token_\d+\|>|<extra_id_\d+>")


def untrained_rows(model: VocabView) -> set[int]:
    """Rows a role must never land on: the unknown token (byte fallback and large
    vocabularies never emit it), a pad token that is not also BOS/EOS (padding is masked out
    of every loss) and reserved placeholders (``<unused0>``). A token that needs one of these
    roles is estimated instead."""
    rows = {model.roles["unk"]} if "unk" in model.roles else set()
    if "pad" in model.roles and model.roles["pad"] not in (
        model.roles.get("bos"),
        model.roles.get("eos"),
    ):
        rows.add(model.roles["pad"])
    ids = sorted(set(model.added) | model.special_ids)
    rows.update(i for i in ids if model.tokens[i] and _RESERVED.fullmatch(model.tokens[i]))
    return rows


def _first_wins(keys: list, ids: list[int]) -> dict:
    """key -> id where the earliest occurrence wins (dict() keeps the last, so reverse)."""
    return dict(zip(reversed(keys), reversed(ids), strict=True))


BytePieces = Literal["copy", "estimate"]


def align_vocab(
    out_tokenizer: Any,
    model_tokenizer: Any,
    model_rows: int,
    out_rows: int | None = None,
    *,
    byte_pieces: BytePieces = "copy",
) -> VocabAlignment:
    """Map every output id ``0..V_out-1`` onto a row ``< model_rows`` of the model, or -1.

    ``V_out`` is the output tokenizer's max id + 1, or ``out_rows`` when that is larger (the
    extra ids are holes, e.g. config ``vocab_size`` padding). ``byte_pieces``: whether a
    token whose only counterpart is a ``<0xNN>`` byte-fallback piece copies that piece's row
    (``"copy"``) or is left to the estimator (``"estimate"``).
    """
    if byte_pieces not in ("copy", "estimate"):
        raise InputError(f"byte_pieces must be 'copy' or 'estimate', got {byte_pieces!r}")
    out = read_vocab(out_tokenizer)
    model = read_vocab(model_tokenizer)
    size = max(out.size, int(out_rows or 0))
    src = np.full(size, -1, dtype=np.int64)
    how = np.zeros(size, dtype=np.int8)

    # ---- model side indexes (only rows the model really has)
    m_regular = [i for i in model.regular_ids if i < model_rows]
    m_forms = view_canonical(model) | view_added_forms(model)  # by id: regular, added
    m_str_regular = {model.tokens[i]: i for i in m_regular}
    m_marked = sorted(i for i in set(model.added) | model.special_ids if i < model_rows)
    m_str_marked = _first_wins([model.tokens[i] for i in m_marked], m_marked)
    fallback = model.scheme.byte_fallback
    m_bytes = [m_str_regular[t] for t in BYTE_PIECES if t in m_str_regular] if fallback else []
    byte_rows = set(m_bytes)
    m_plain = [i for i in m_regular if i not in byte_rows]
    m_added_plain = [i for i in m_marked if i in model.added and i not in model.special_ids]
    # Byte-fallback pieces come last: a tokenizer only emits <0xNN> when no other piece spells
    # those bytes, so their rows are barely trained (Gemma: "\n" is an added piece, <0x0A> unused).
    ordered = m_plain + m_added_plain + m_bytes
    m_canon = _first_wins([m_forms[i] for i in ordered], ordered)
    m_canon.pop(b"", None)  # an empty spelling matches nothing
    if byte_pieces == "estimate":
        m_canon = {k: j for k, j in m_canon.items() if j not in byte_rows}
    normalize = content_normalizer(model_tokenizer)

    # ---- regular output tokens
    o_forms = view_canonical(out)
    same_scheme = out.scheme == model.scheme
    tokens = out.tokens
    hits: list[tuple[int, int, int]] = []
    for i in out.regular_ids:
        form = o_forms[i]
        j = m_str_regular.get(tokens[i])
        if j is not None and (same_scheme or m_forms[j] == form):
            hits.append((i, j, EXACT))
            continue
        j = m_canon.get(form)
        if j is None and normalize is not None:
            j = m_canon.get(normalized_form(normalize, form))
        if j is not None:
            hits.append((i, j, CANONICAL))
    if hits:
        hit = np.asarray(hits, dtype=np.int64)
        src[hit[:, 0]] = hit[:, 1]
        how[hit[:, 0]] = hit[:, 2]

    # ---- added / special output tokens
    unmatched_special: list[int] = []
    unmatched_added: list[int] = []
    o_added_forms = view_added_forms(out)
    o_added_symbols = view_added_symbol_forms(out)
    untrained = untrained_rows(model)
    special_how: dict[int, str] = {}
    for i in sorted(set(out.added) | out.special_ids):
        j = m_str_marked.get(tokens[i])
        kind, unmatched = EXACT, unmatched_added
        said = "same token" if j is not None else "no counterpart"
        if i in out.special_ids:
            kind, unmatched = SPECIAL, unmatched_special
            for role in (r for r, k in out.roles.items() if k == i and j is None):
                row = model.roles.get(role, model_rows)
                if row >= model_rows:
                    continue
                if row in untrained:
                    said = f"role {role}: the model's `{model.tokens[row]}` is untrained"
                    continue
                j, said = row, f"role {role}"
                break
        elif j is None:
            j = m_canon.get(o_added_symbols.get(i, b""))
            j = j if j is not None else m_canon.get(o_added_forms[i])
            kind = CANONICAL
            said = "same text" if j is not None else said
        special_how[i] = said
        if j is None:
            unmatched.append(i)
        else:
            src[i], how[i] = j, kind

    holes = [i for i in range(size) if i >= len(tokens) or tokens[i] is None]
    return VocabAlignment(src, how, unmatched_special, unmatched_added, holes, special_how)
