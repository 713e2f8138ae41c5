"""Next-piece targets of a distillation heal: how the student spells teacher tokens, the
teacher's mass read as student pieces, and the KL loss on them (``heal/pieces.py``)."""

from __future__ import annotations

import pytest
import torch
from tokenizers_factory import build_byte_level_bpe, build_sentencepiece_bpe

from mergekit_tokenplug.heal.distill import piece_loss
from mergekit_tokenplug.heal.pieces import MAX_PIECES, NO_PIECE, chunk_targets, spellings
from mergekit_tokenplug.vocab.canonical import canonical_forms


@pytest.mark.parametrize("style", ["llama", "metaspace"])
def test_spellings_of_sentencepiece_tokens_in_byte_level_pieces(tmp_path, style):
    sp = build_sentencepiece_bpe(tmp_path / "sp", style=style)
    bl = build_byte_level_bpe(tmp_path / "bl")
    spell = spellings(sp, bl, len(sp))
    sp_forms, bl_forms = canonical_forms(sp), canonical_forms(bl)
    spelled = 0
    for i, form in sp_forms.items():
        pieces = [p for p in spell[i].tolist() if p != NO_PIECE]
        if not pieces:
            continue
        spelled += 1
        # the pieces spell the teacher token's bytes (whole, or a prefix past MAX_PIECES)
        joined = b"".join(bl_forms[p] for p in pieces)
        assert joined == form or (len(pieces) == MAX_PIECES and form.startswith(joined))
    assert spelled == len(sp_forms)  # byte-level BPE can spell any bytes
    # a byte piece is the student's token of that byte; a word the student has whole is one
    # piece; one it lacks is several, starting with the student's word-start piece
    e6 = sp.convert_tokens_to_ids("<0xE6>")
    assert bl_forms[int(spell[e6, 0])] == b"\xe6" and spell[e6, 1] == NO_PIECE
    whole = next(i for i, f in sp_forms.items() if f.startswith(b" ") and f in bl_forms.values())
    assert spell[whole, 1] == NO_PIECE and bl_forms[int(spell[whole, 0])] == sp_forms[whole]
    split = next(
        i
        for i, f in sp_forms.items()
        if len(f) > 4 and f.startswith(b" ") and f not in bl_forms.values()
    )
    assert spell[split, 1] != NO_PIECE and bl_forms[int(spell[split, 0])].startswith(b" ")
    # specials have no bytes: no spelling, their mass is left out
    for special in (sp.bos_token_id, sp.eos_token_id, sp.unk_token_id):
        assert (spell[special] == NO_PIECE).all()


def _table(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), MAX_PIECES), NO_PIECE, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def test_chunk_targets_marginalize_the_teachers_mass_piece_by_piece():
    # teacher tokens: " Anek" = An+ek, " An" = An, " Anders" = An+ders, " x" = x, <s> (no bytes)
    An, ek, ders, x = 10, 11, 12, 13
    spell = _table([[An, ek], [An], [An, ders], [x], []])
    p = torch.tensor([0.4, 0.2, 0.25, 0.1, 0.05])
    got = chunk_targets(p.log(), spell, [An, ek], k=5)
    assert [j for j, *_ in got] == [0, 1]
    _, ids, prob, other = got[0]  # the first piece: every token's first piece; <s> is "other"
    assert dict(zip(ids.tolist(), prob.tolist(), strict=True)) == pytest.approx({An: 0.85, x: 0.1})
    assert other == pytest.approx(0.05)
    _, ids, prob, other = got[1]  # after An: the tokens spelled An..., " An" itself ended
    assert dict(zip(ids.tolist(), prob.tolist(), strict=True)) == pytest.approx(
        {ek: 0.4 / 0.85, ders: 0.25 / 0.85}
    )
    assert other == pytest.approx(0.2 / 0.85)
    # only the k likeliest teacher tokens count: the tail is "other" at the first piece
    _, ids, prob, other = chunk_targets(p.log(), spell, [An, ek], k=2)[0]
    assert dict(zip(ids.tolist(), prob.tolist(), strict=True)) == pytest.approx({An: 0.65})
    assert other == pytest.approx(0.35)
    # a piece no teacher token continues with ends the targets (e.g. the chunk's first
    # teacher token ended, or the student reads the bytes otherwise in context)
    assert [j for j, *_ in chunk_targets(p.log(), spell, [An, x], k=5)] == [0]
    assert chunk_targets(p.log(), spell, [ek], k=5) == []


def test_piece_loss_is_the_kl_of_the_covered_pieces_and_the_rest():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    top = logits.softmax(-1).topk(6)
    ids, prob = top.indices, top.values
    other = 1 - prob.sum(-1)
    assert float(piece_loss(logits, ids, prob, other)) == pytest.approx(0.0, abs=1e-6)
    # padding (zero mass) adds nothing
    pad_ids = torch.cat([ids, torch.zeros(4, 3, dtype=torch.long)], 1)
    pad_prob = torch.cat([prob, torch.zeros(4, 3)], 1)
    assert float(piece_loss(logits, pad_ids, pad_prob, other)) == pytest.approx(0.0, abs=1e-6)
    moved = logits.clone()
    moved[:, ids[:, 0]] += 1.0
    loss = float(piece_loss(moved, ids, prob, other))
    q = torch.cat([prob, other[:, None]], 1).double()
    p_s = moved.softmax(-1).double()
    p_cov = p_s.gather(1, ids)
    p = torch.cat([p_cov, 1 - p_cov.sum(-1, keepdim=True)], 1)
    assert loss == pytest.approx(float((q * (q / p).log()).sum(-1).mean()), rel=1e-4)
    assert loss > 0
