"""How the student spells each teacher token, and the teacher's next-token distribution read
in the student's vocabulary.

Where both tokenizers have just finished the same bytes (a chunk start, ``heal/align.py``),
the teacher's next token ``t`` and the student's next tokens start at the same byte. The
student reads ``t``'s bytes as a short sequence of its own tokens, ``spell(t)`` (`` Anekdoten``
→ `` An`` ``ek`` ``doten``; a Chinese character → three byte tokens). So the teacher's
distribution over ``t`` says how likely each student continuation is, token by token: after
the student has read the first ``j`` pieces ``s_1 .. s_j`` of the chunk, the teacher's
probability that piece ``j + 1`` is ``s`` is the mass of the teacher tokens spelled
``s_1 .. s_j s ...``, divided by the mass of those spelled ``s_1 .. s_j`` and at least one
piece more (the byte-level marginal of a tokenized model, as in Phan et al. 2024, "Exact
byte-level probabilities from tokenized language models", taken at the student's tokens).

That gives a full next-token target at every student position inside the chunk's first
teacher token — exactly where a transplant loses most (the copied output row of `` An``
never learnt to receive the mass of every word it starts, nor ``ek`` to follow it, since the
original model predicted whole words). It is the dense counterpart of the chunk likelihoods
(ALM, arXiv 2503.20083), which see one observed continuation per chunk.

``spell(t)`` is the student's entry with ``t``'s string and bytes when there is one (a
shared vocabulary maps onto itself), else the student tokenizer's reading of ``t``'s
canonical bytes (``vocab/canonical.py``) when those are text and the pieces spell them
exactly; otherwise
(byte pieces, part of a character, a tokenizer that would add a word-start marker) a greedy
longest-match over the student's entries. Teacher tokens without bytes (specials) or that
no student entry begins get no spelling: their mass is left out.
"""

from __future__ import annotations

from typing import Any

import torch

from mergekit_tokenplug.vocab.canonical import (
    BYTE_PIECES,
    read_vocab,
    view_added_forms,
    view_canonical,
)

NO_PIECE = -1
MAX_PIECES = 8  # pieces kept per teacher token: deeper positions get no target


def _forms(tokenizer: Any) -> dict[int, bytes]:
    """Bytes of every regular and non-special added token (Gemma spells ``\\n`` and runs of
    spaces or tabs as added tokens; they are text like any other)."""
    view = read_vocab(tokenizer)
    return {**view_added_forms(view), **view_canonical(view)}


def _greedy(form: bytes, student: dict[bytes, int], longest: int) -> list[int]:
    out: list[int] = []
    at = 0
    while at < len(form) and len(out) < MAX_PIECES:
        for n in range(min(len(form) - at, longest), 0, -1):
            hit = student.get(form[at : at + n])
            if hit is not None:
                out.append(hit)
                at += n
                break
        else:
            return out
    return out


def spellings(teacher_tokenizer: Any, student_tokenizer: Any, teacher_rows: int) -> torch.Tensor:
    """``(teacher_rows, MAX_PIECES)`` long: each teacher token's student pieces, -1 padded
    (a row of -1 for a token the student cannot spell)."""
    t_forms, s_forms = (_forms(t) for t in (teacher_tokenizer, student_tokenizer))
    s_vocab = student_tokenizer.get_vocab()
    byte_piece = {s_vocab[p] for p in BYTE_PIECES if p in s_vocab}
    by_form: dict[bytes, int] = {}
    for i in sorted(s_forms, key=lambda i: (i in byte_piece, i)):
        by_form.setdefault(s_forms[i], i)  # "A" before <0x41>: the piece the tokenizer uses
    longest = max((len(f) for f in by_form), default=0)
    out = torch.full((teacher_rows, MAX_PIECES), NO_PIECE, dtype=torch.long)
    ids = [i for i in sorted(t_forms) if 0 <= i < teacher_rows and t_forms[i]]
    texts: list[str] = []
    readable: list[int] = []
    for i in ids:
        try:
            texts.append(t_forms[i].decode("utf-8"))
            readable.append(i)
        except UnicodeDecodeError:
            pass
    encoded = student_tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    spelled: dict[int, list[int]] = {}
    for i, enc in zip(readable, encoded, strict=True):
        if enc and b"".join(s_forms.get(p, b"\0\0") for p in enc) == t_forms[i]:
            spelled[i] = enc[:MAX_PIECES]
    for i, name in zip(ids, teacher_tokenizer.convert_ids_to_tokens(ids), strict=True):
        same = s_vocab.get(name)  # the same entry (string and bytes) is the same token
        if same is not None and s_forms.get(same) == t_forms[i]:
            spelled[i] = [same]
    for i in ids:
        pieces = spelled.get(i) or _greedy(t_forms[i], by_form, longest)
        if pieces:
            out[i, : len(pieces)] = torch.tensor(pieces)
    return out


def chunk_targets(
    teacher_logp: torch.Tensor, spell: torch.Tensor, actual: list[int], k: int
) -> list[tuple[int, torch.Tensor, torch.Tensor, float]]:
    """Next-token targets for the student's pieces of one chunk.

    ``teacher_logp``: (V_teacher,) the teacher's next-token log-probabilities at the chunk's
    start; ``spell``: ``spellings(...)``; ``actual``: the student's tokens of the chunk.
    Returns ``(j, ids, prob, other)`` for each piece ``j`` (0-based) that gets a target: the
    teacher's mass on its ``k`` likeliest tokens, grouped by the student piece they continue
    ``actual[:j]`` with, over the mass of those spelled ``actual[:j]`` and more; ``other`` is
    the rest (the tail beyond ``k`` and unspellable tokens at ``j = 0``; the tokens that end
    exactly at ``actual[:j]``, i.e. a next teacher token follows, beyond it). A piece gets no
    target when the actual piece is not among the continuations (the spelling read alone
    differs from the student's reading in context, or the chunk's first teacher token ended).
    """
    top_lp, top_t = teacher_logp.topk(k)
    mass = top_lp.double().exp()
    sp = spell[top_t]  # (k, MAX_PIECES)
    out: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
    alive = torch.ones(k, dtype=torch.bool)
    for j, piece in enumerate(actual[:MAX_PIECES]):
        nxt = sp[:, j]
        cont = alive & (nxt >= 0)
        total = float(mass[alive].sum()) if j else 1.0
        if total <= 0 or not bool((cont & (nxt == piece)).any()):
            break
        ids, inverse = nxt[cont].unique(return_inverse=True)
        prob = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, mass[cont])
        prob /= total
        other = max(0.0, 1.0 - float(prob.sum()))
        out.append((j, ids, prob.float(), other))
        alive = cont & (nxt == piece)
    return out
