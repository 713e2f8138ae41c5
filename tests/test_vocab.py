"""Vocabulary alignment on real (small, trained-in-test) tokenizers: scheme detection,
canonical forms, special-token mapping, model-row limits, holes, texts and a 262k run.

Expectations are derived independently of the code under test: from each tokenizer's own
``decode`` / ``encode`` and from token strings looked up with ``convert_tokens_to_ids``.
"""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers_factory import (
    BYTE_PIECES,
    CHAT_TOKENS,
    CHATML_TEMPLATE,
    build_byte_level_bpe,
    build_sentencepiece_bpe,
    build_synthetic_vocab,
    build_wordpiece,
    corpus_documents,
)
from transformers import PreTrainedTokenizerFast

from mergekit_tokenplug.vocab.align import CANONICAL, EXACT, MISSING, SPECIAL, align_vocab
from mergekit_tokenplug.vocab.canonical import canonical_forms, detect_scheme
from mergekit_tokenplug.vocab.texts import split_texts, token_texts

EXTRA_TEXTS = ["Hello world\n東京 café 🙂", "naïve résumé, ß and Ωμέγα!", "  x = 1\n\tfor i in y:"]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    return {
        # GPT-2 style: one string for bos and eos, ChatML markers as extra specials
        "bl": build_byte_level_bpe(
            root / "bl", pad="<|pad|>", extra_special=CHAT_TOKENS, chat_template=CHATML_TEMPLATE
        ),
        # Llama-3 style role strings, no chat markers
        "bl3": build_byte_level_bpe(root / "bl3", bos="<|begin_of_text|>", eos="<|end_of_text|>"),
        # Llama-2 style (Prepend/Replace normalizer, Replace+ByteFallback decoder)
        "ms": build_sentencepiece_bpe(root / "ms"),
        # Metaspace pre-tokenizer/decoder, with the same chat markers
        "ms2": build_sentencepiece_bpe(root / "ms2", style="metaspace", extra_special=CHAT_TOKENS),
        "wp": build_wordpiece(root / "wp"),
    }


def context_text(tok, i: int) -> str:
    """What token ``i`` adds to running text, by the tokenizer's own decoder: decode it after
    an anchor token and drop the anchor's text (SentencePiece decoders strip a leading space
    of the first token only)."""
    anchor = tok.convert_tokens_to_ids("a")
    kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    return tok.decode([anchor, int(i)], **kw)[len(tok.decode([anchor], **kw)) :]


def is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ----------------------------------------------------------------------------- schemes


def test_detect_scheme_of_each_builder(toks):
    kinds = {name: detect_scheme(t).kind for name, t in toks.items()}
    assert kinds == {
        "bl": "byte_level",
        "bl3": "byte_level",
        "ms": "metaspace",
        "ms2": "metaspace",
        "wp": "wordpiece",
    }
    assert detect_scheme(toks["ms"]).byte_fallback and detect_scheme(toks["ms2"]).byte_fallback
    assert not detect_scheme(toks["bl"]).byte_fallback
    assert detect_scheme(toks["wp"]).continuation_prefix == "##"
    plain = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    assert detect_scheme(plain).kind == "plain"


def test_scheme_ignores_python_class(toks):
    """A wrapper class named after another family, or the bare backend, changes nothing."""

    class LlamaTokenizerFast(PreTrainedTokenizerFast):  # misleading name on purpose
        pass

    class BertTokenizerFast(PreTrainedTokenizerFast):
        pass

    for name, cls in (
        ("bl", LlamaTokenizerFast),
        ("ms", BertTokenizerFast),
        ("wp", LlamaTokenizerFast),
    ):
        tok = toks[name]
        backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        renamed = cls(tokenizer_object=backend)
        assert detect_scheme(renamed) == detect_scheme(tok)
        assert detect_scheme(backend) == detect_scheme(tok)
        assert canonical_forms(backend) == canonical_forms(tok)


# ----------------------------------------------------------------------------- canonical forms


@pytest.mark.parametrize("name", ["bl", "ms", "ms2", "wp"])
def test_canonical_form_is_decoded_text(toks, name):
    """Every regular token's canonical bytes are what the tokenizer's own decoder writes for
    it in running text (tokens that are not valid UTF-8 alone are checked by round trip)."""
    tok = toks[name]
    forms = canonical_forms(tok)
    added = set(tok.added_tokens_decoder)
    assert forms and not (set(forms) & added)
    checked = 0
    for i, form in forms.items():
        if not is_utf8(form):
            continue
        text = form.decode("utf-8")
        if name == "wp" and not (text.strip().isascii() and text.strip().isalnum()):
            continue  # BERT's decoder cleanup rewrites spaces around some punctuation
        assert text == context_text(tok, i), (tok.convert_ids_to_tokens(i), form)
        checked += 1
    assert checked > 0.5 * len(forms)


@pytest.mark.parametrize("name", ["bl", "ms", "ms2"])
def test_canonical_forms_round_trip_encodings(toks, name):
    """Joining the canonical bytes of an encoding gives the text back (byte pieces and split
    multi-byte characters included); SentencePiece may add one leading word-start space."""
    tok = toks[name]
    forms = canonical_forms(tok)
    for text in corpus_documents(n_docs=40) + EXTRA_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        joined = b"".join(forms[i] for i in ids)
        if name == "bl":
            assert joined == text.encode("utf-8")
        elif text.startswith(" "):
            assert joined in (text.encode("utf-8"), b" " + text.encode("utf-8"))
        else:
            assert joined == b" " + text.encode("utf-8")


def test_wordpiece_convention(toks):
    tok = toks["wp"]
    forms = canonical_forms(tok)
    by_token = {tok.convert_ids_to_tokens(i): f for i, f in forms.items()}
    cont = [t for t in by_token if t.startswith("##") and len(t) > 2]
    assert cont and all(by_token[t] == t[2:].encode() for t in cont)
    words = [t for t in by_token if t.isalpha() and len(t) > 1]
    assert words and all(by_token[t] == b" " + t.encode() for t in words)
    assert by_token[","] == b"," and by_token["."] == b"."


# ----------------------------------------------------------------------------- alignment


def regular_strings(tok) -> set[str]:
    added = set(tok.added_tokens_decoder)
    return {t for t, i in tok.get_vocab().items() if i not in added}


@pytest.mark.parametrize("pair", [("bl", "ms"), ("ms", "bl"), ("bl", "ms2"), ("wp", "bl")])
def test_canonical_matching_beats_raw_and_is_correct(toks, pair):
    out, model = toks[pair[0]], toks[pair[1]]
    al = align_vocab(out, model, model_rows=len(model))
    raw = len(regular_strings(out) & regular_strings(model))
    counts = al.counts()
    assert counts["canonical"] > 0
    assert counts["exact"] + counts["canonical"] > raw
    assert sum(counts[k] for k in ("missing", "exact", "canonical", "special")) == al.size
    ids, src = al.matched(EXACT, CANONICAL)
    forms_out, forms_model = canonical_forms(out), canonical_forms(model)
    compared = 0
    for i, j in zip(ids.tolist(), src.tolist(), strict=True):
        assert forms_out[i] == forms_model[j]
        text = forms_out[i].decode("utf-8", errors="replace")
        wp_punct = pair[0] == "wp" and not (text.strip().isascii() and text.strip().isalnum())
        if not is_utf8(forms_out[i]) or wp_punct:
            continue
        assert context_text(out, i) == context_text(model, j), (i, j)
        compared += 1
    assert compared > 0.6 * len(ids)


def test_exact_means_same_string_and_same_bytes(toks):
    out, model = toks["bl"], toks["ms"]
    al = align_vocab(out, model, model_rows=len(model))
    ids, src = al.matched(EXACT)
    assert len(ids) > 0
    assert out.convert_ids_to_tokens(ids.tolist()) == model.convert_ids_to_tokens(src.tolist())
    # same tokenizer on both sides: everything regular is an exact identity match
    same = align_vocab(model, model, model_rows=len(model))
    regular = [i for i in range(len(model)) if i not in model.added_tokens_decoder]
    assert (same.how[regular] == EXACT).all() and (same.src_ids[regular] == regular).all()


def test_byte_fallback_pieces_map(toks):
    bl, ms = toks["bl"], toks["ms"]
    assert "\n" not in ms.get_vocab() and "<0x0A>" in ms.get_vocab()
    al = align_vocab(bl, ms, model_rows=len(ms))
    newline = bl.convert_tokens_to_ids("Ċ")
    assert al.src_ids[newline] == ms.convert_tokens_to_ids("<0x0A>")
    assert al.how[newline] == CANONICAL
    # a lead byte of a character ms only has as bytes ("東" = E6 9D B1)
    lead = bl.convert_tokens_to_ids("æ")
    assert al.src_ids[lead] == ms.convert_tokens_to_ids("<0xE6>")
    # a regular piece beats the byte piece with the same bytes
    assert al.src_ids[bl.convert_tokens_to_ids("a")] == ms.convert_tokens_to_ids("a")
    # and back: each byte piece lands on GPT-2's symbol for that byte
    back = align_vocab(ms, bl, model_rows=len(bl))
    for b, symbol in {0x0A: "Ċ", 0x20: "Ġ", 0x61: "a", 0xE6: "æ", 0xC3: "Ã"}.items():
        piece = ms.convert_tokens_to_ids(f"<0x{b:02X}>")
        assert back.src_ids[piece] == bl.convert_tokens_to_ids(symbol)


def test_added_piece_beats_byte_fallback_piece(tmp_path):
    """Gemma's layout: "\n" is an added (non-special) piece and <0x0A> a never-used byte piece."""
    from tokenizers import AddedToken

    ms = build_sentencepiece_bpe(tmp_path / "ms_nl")
    ms.add_tokens([AddedToken("\n", normalized=False, special=False)])
    bl = build_byte_level_bpe(tmp_path / "bl_nl")
    al = align_vocab(bl, ms, model_rows=len(ms))
    assert al.src_ids[bl.convert_tokens_to_ids("Ċ")] == ms.convert_tokens_to_ids("\n")


def test_special_tokens_map_by_string_and_role(toks):
    bl, ms2, bl3, ms = toks["bl"], toks["ms2"], toks["bl3"], toks["ms"]
    al = align_vocab(bl, ms2, model_rows=len(ms2))
    eot = bl.convert_tokens_to_ids("<|endoftext|>")  # bos and eos of bl
    assert al.how[eot] == SPECIAL and al.src_ids[eot] == ms2.eos_token_id
    chat_out = [bl.convert_tokens_to_ids(t) for t in CHAT_TOKENS]
    chat_model = [ms2.convert_tokens_to_ids(t) for t in CHAT_TOKENS]
    assert al.src_ids[chat_out].tolist() == chat_model
    assert (al.how[chat_out] == SPECIAL).all()
    pad = bl.convert_tokens_to_ids("<|pad|>")  # ms2 has no pad: nothing to copy
    assert al.src_ids[pad] == -1 and al.unmatched_special == [pad]

    # different strings per role: <s> -> <|begin_of_text|>, </s> -> <|end_of_text|>
    roles = align_vocab(ms, bl3, model_rows=len(bl3))
    assert roles.src_ids[ms.bos_token_id] == bl3.bos_token_id
    assert roles.src_ids[ms.eos_token_id] == bl3.eos_token_id
    assert roles.unmatched_special == [ms.unk_token_id]  # bl3 has no unk

    # chat markers without a counterpart stay missing, each its own entry
    lone = align_vocab(bl, ms, model_rows=len(ms))
    assert set(chat_out) <= set(lone.unmatched_special)
    assert (lone.how[chat_out] == MISSING).all() and (lone.src_ids[chat_out] == -1).all()


def test_additional_special_tokens_never_share_a_source(tmp_path):
    extra = ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<|fim|>")
    out = build_byte_level_bpe(tmp_path / "out", vocab_size=400, extra_special=extra)
    model = build_sentencepiece_bpe(
        tmp_path / "model",
        vocab_size=400,
        extra_special=("<tool_call>", "<|im_end|>", "<|im_start|>"),
    )
    al = align_vocab(out, model, model_rows=len(model))
    ids = [out.convert_tokens_to_ids(t) for t in extra]
    src = al.src_ids[ids]
    matched = src[src >= 0].tolist()
    assert len(matched) == 3 and len(set(matched)) == 3
    for t, s in zip(extra, src.tolist(), strict=True):
        assert s == (model.convert_tokens_to_ids(t) if s >= 0 else -1)
    assert sorted(al.unmatched_special) == sorted(
        out.convert_tokens_to_ids(t) for t in ("</tool_call>", "<|fim|>")
    )


def test_model_ids_beyond_rows_are_never_sources(toks):
    """Gemma-3 style: the model's tokenizer knows ids its embedding matrix does not have."""
    tok = toks["ms2"]
    rows = len(tok) - 60  # cuts the chat markers and the last learned pieces
    al = align_vocab(tok, tok, model_rows=rows)
    assert al.src_ids.max() < rows
    below = np.arange(rows)
    assert (al.src_ids[below] == below).all()
    for t in CHAT_TOKENS:
        assert tok.convert_tokens_to_ids(t) in al.unmatched_special
    cut = [i for i in range(rows, len(tok)) if i not in tok.added_tokens_decoder]
    assert cut and (al.how[cut] == MISSING).all()


def test_holes_in_output_ids():
    vocab = {"[UNK]": 0, "hello": 1, "world": 4, "again": 5}
    out_backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    out_backend.pre_tokenizer = pre_tokenizers.Whitespace()
    out = PreTrainedTokenizerFast(tokenizer_object=out_backend, unk_token="[UNK]")
    model_backend = Tokenizer(
        models.WordLevel({"<unk>": 0, "again": 1, "hello": 2}, unk_token="<unk>")
    )
    model = PreTrainedTokenizerFast(tokenizer_object=model_backend, unk_token="<unk>")
    al = align_vocab(out, model, model_rows=3, out_rows=8)
    assert al.size == 8
    assert al.holes == [2, 3, 6, 7]
    # [UNK] holds only the unk role, and the model's <unk> row is untrained: estimated
    assert al.src_ids.tolist() == [-1, 2, -1, -1, -1, 1, -1, -1]
    assert al.how.tolist() == [0, EXACT, 0, 0, 0, EXACT, 0, 0]
    assert al.missing_ids().tolist() == [0, 4]
    assert al.special_how[0] == "role unk: the model's `<unk>` is untrained"
    assert al.counts() == {"missing": 6, "exact": 2, "canonical": 0, "special": 0, "holes": 4}


# ----------------------------------------------------------------------------- texts


def test_token_texts(toks):
    bl, ms = toks["bl"], toks["ms"]
    ids = bl.convert_tokens_to_ids(["Ġw", "Ċ", "<|im_start|>", "ĠcafÃ©"])
    assert token_texts(bl, ids + [10**6]) == [" w", "\n", "<|im_start|>", " café", ""]
    ms_ids = ms.convert_tokens_to_ids(["▁w", "<0x0A>", "<s>", "<0xE6>"])
    assert token_texts(ms, np.asarray(ms_ids)) == [" w", "\n", "<s>", "\udce6"]
    assert token_texts(ms, ms_ids, specials=False)[2] == ""
    everything = token_texts(ms, range(len(ms)))
    assert len(everything) == len(ms)


@pytest.mark.parametrize("name", ["bl", "ms", "ms2", "wp"])
def test_split_texts_reassembles(toks, name):
    tok = toks[name]
    texts = ["the cat sees the house", " running quickly", "Hello world\nat the café"]
    if name == "wp":
        texts = texts[:2]
    pieces = split_texts(tok, texts)
    assert pieces == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    joined = ["".join(token_texts(tok, p)) for p in pieces]
    for text, got in zip(texts, joined, strict=True):
        assert got.strip() == text.strip()
    running = split_texts(tok, [" the cat", " w"], running_text=True)
    assert ["".join(token_texts(tok, p)) for p in running] == [" the cat", " w"]
    assert split_texts(tok, []) == []


# ----------------------------------------------------------------------------- scale


def test_align_262k_vocabularies_runs():
    """Two synthetic 262,144-entry vocabularies (byte-level vs metaspace) align in one pass."""
    n = 262_144
    out = build_synthetic_vocab(n, scheme="byte_level", wrap=False)
    model = build_synthetic_vocab(n, scheme="metaspace", wrap=False)
    al = align_vocab(out, model, model_rows=n)
    counts = al.counts()
    assert al.size == n
    # words without the "é" suffix exist in both (half as word starts): canonical or exact
    assert counts["canonical"] > n // 3 and counts["exact"] > n // 3
    assert al.src_ids.max() < n


def test_non_special_added_tokens(tmp_path, toks):
    """Added tokens that are plain text match by string or by the text they decode to; the
    rest are reported apart from the special ones."""
    out = build_sentencepiece_bpe(tmp_path / "out", vocab_size=400)
    out.add_tokens(["  ", "<tool>"])  # non-special: literal text
    bl = toks["bl"]
    al = align_vocab(out, bl, model_rows=len(bl))
    spaces, tool = out.convert_tokens_to_ids(["  ", "<tool>"])
    assert al.how[spaces] == CANONICAL and al.src_ids[spaces] == bl.convert_tokens_to_ids("ĠĠ")
    assert al.src_ids[tool] == -1 and al.unmatched_added == [tool]
    assert tool not in al.unmatched_special
    assert token_texts(out, [spaces, tool]) == ["  ", "<tool>"]


# ----------------------------------------------------------------------------- alignment fixes


def _bpe_tokenizer(vocab: list[str], scheme: str = "byte_level") -> PreTrainedTokenizerFast:
    """A merge-free BPE tokenizer over ``vocab`` (byte-level: ``Ġ`` spelling)."""
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_added_token_of_byte_level_tokenizer_is_raw_text(toks):
    """An added ``café`` stands for the UTF-8 text "café" (the model's ``cafÃ©``), not for
    GPT-2 alphabet symbols (where "é" would be the single byte 0xE9)."""
    alphabet = sorted(set(pre_tokenizers.ByteLevel.alphabet()))
    model = _bpe_tokenizer([*alphabet, "cafÃ©", "ĠcafÃ©"])
    out = _bpe_tokenizer([*alphabet, "Ġw"])
    out.add_tokens(["café"])
    added = out.convert_tokens_to_ids("café")
    assert out("café")["input_ids"] == [added]  # the text that produces it (its decode is lossy)
    al = align_vocab(out, model, model_rows=len(model))
    assert al.how[added] == CANONICAL and al.src_ids[added] == model.convert_tokens_to_ids("cafÃ©")
    assert token_texts(out, [added]) == ["café"]
    # and the other way round: the model's added token is found by the output's regular one
    model.add_tokens(["café"])
    back = align_vocab(_bpe_tokenizer([*alphabet, "cafÃ©"]), model, model_rows=len(model))
    assert back.src_ids[len(alphabet)] in (model.convert_tokens_to_ids("cafÃ©"), added)


def test_partial_utf8_tokens_keep_their_bytes(toks):
    """Byte fragments of multi-byte characters stay distinct and split into the base's own
    byte tokens (``<0xNN>`` pieces / byte-level symbols), not all into one "\ufffd"."""
    bl, ms = toks["bl"], toks["ms"]
    fragments = ["æ", "Ã", "ã"]  # 0xE6, 0xC3, 0xE3: lead bytes, invalid UTF-8 alone
    ids = bl.convert_tokens_to_ids(fragments)
    texts = token_texts(bl, ids)
    assert len(set(texts)) == 3
    want = [[ms.convert_tokens_to_ids(f"<0x{b:02X}>")] for b in (0xE6, 0xC3, 0xE3)]
    assert split_texts(ms, texts, running_text=True) == want
    assert split_texts(bl, texts, running_text=True) == [[i] for i in ids]
    # a valid character followed by a fragment: the character's pieces, then the byte
    mixed = token_texts(bl, [bl.convert_tokens_to_ids("a")])[0] + texts[0]
    (pieces,) = split_texts(ms, [mixed], running_text=True)
    assert pieces[-1] == want[0][0] and ms.decode(pieces[:-1]).strip() == "a"


def test_subword_mean_of_byte_fragments_differs(toks):
    """The estimate of two different byte fragments is that of their own byte pieces."""
    import torch

    from mergekit_tokenplug.methods.base import EstimationProblem, rows_of
    from mergekit_tokenplug.registry import get

    bl, ms = toks["bl"], toks["ms"]
    texts = token_texts(bl, bl.convert_tokens_to_ids(["æ", "Ã"]))
    base = torch.randn(len(ms), 6, generator=torch.Generator().manual_seed(0))
    problem = EstimationProblem(
        base=base, anchor_ids=torch.arange(0), n_targets=2, target_texts=texts,
        target_pieces=split_texts(ms, texts, running_text=True), show_progress=False,
    )
    spec = get("subword_mean")
    rows = rows_of(spec.estimate(problem, spec.parse_params({})))
    pieces = ms.convert_tokens_to_ids(["<0xE6>", "<0xC3>"])
    torch.testing.assert_close(rows, base[pieces])


@pytest.mark.parametrize("name", ["ms", "ms2"])
def test_continuation_pieces_stay_continuations(toks, name):
    """A text without a leading space is a word continuation inside running text, even for a
    tokenizer that prepends ``▁`` to whatever it encodes."""
    tok = toks[name]
    assert "ing" in tok.get_vocab()
    got = split_texts(tok, ["ing", " the", "ing the"], running_text=True)
    assert got[0] == tok.convert_tokens_to_ids(["ing"])
    assert got[1] == tok.convert_tokens_to_ids(["▁the"])
    assert got[2] == tok.convert_tokens_to_ids(["ing", "▁the"])
    # as the start of a sequence, the same text still gets the prepended marker
    assert tok.convert_ids_to_tokens(split_texts(tok, ["ing"])[0])[0].startswith("▁")


def test_uncased_model_matches_cased_tokens_through_its_normalizer(tmp_path, toks):
    """A lowercasing model encodes "The" as ``the``: the cased token aligns onto that row."""
    bl = toks["bl"]
    wp = build_wordpiece(tmp_path / "wp_lower", lowercase=True)
    assert wp("The", add_special_tokens=False)["input_ids"] == wp.convert_tokens_to_ids(["the"])
    al = align_vocab(bl, wp, model_rows=len(wp))
    for cased, lower in (("ĠThe", "the"), ("ĠA", "a")):
        i = bl.convert_tokens_to_ids(cased)
        assert al.src_ids[i] == wp.convert_tokens_to_ids(lower), cased
        assert al.how[i] == CANONICAL
    # the cased model itself is untouched: "ĠThe" and "Ġthe" keep their own rows
    same = align_vocab(bl, toks["bl3"], model_rows=len(toks["bl3"]))
    assert same.src_ids[bl.convert_tokens_to_ids("ĠThe")] == toks["bl3"].convert_tokens_to_ids("ĠThe")


def _unigram_with_byte_fallback() -> PreTrainedTokenizerFast:
    """SentencePiece Unigram with byte fallback and no ByteFallback decoder (the flag only
    lives in the model's JSON)."""
    pieces = [("<unk>", 0.0), *[(p, -5.0) for p in BYTE_PIECES], ("▁a", -1.0), ("▁the", -1.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_unigram_byte_fallback_read_from_json(toks):
    uni = _unigram_with_byte_fallback()
    assert uni("a\n", add_special_tokens=False)["input_ids"][-1] == uni.convert_tokens_to_ids("<0x0A>")
    scheme = detect_scheme(uni)
    assert scheme.byte_fallback and scheme.kind == "metaspace"
    assert canonical_forms(uni)[uni.convert_tokens_to_ids("<0x0A>")] == b"\n"
    bl = toks["bl"]
    al = align_vocab(bl, uni, model_rows=len(uni))
    assert al.src_ids[bl.convert_tokens_to_ids("Ċ")] == uni.convert_tokens_to_ids("<0x0A>")


def test_byte_pieces_copy_or_estimate(toks):
    bl, ms = toks["bl"], toks["ms"]
    lead = bl.convert_tokens_to_ids("æ")
    copy = align_vocab(bl, ms, model_rows=len(ms))
    est = align_vocab(bl, ms, model_rows=len(ms), byte_pieces="estimate")
    assert copy.src_ids[lead] == ms.convert_tokens_to_ids("<0xE6>")
    assert est.src_ids[lead] == -1 and lead in est.missing_ids()
    # tokens with a real piece are unaffected
    same = copy.how != MISSING
    byte_rows = set(ms.convert_tokens_to_ids(list(BYTE_PIECES)))
    kept = np.array([s not in byte_rows for s in copy.src_ids])
    assert np.array_equal(est.src_ids[same & kept], copy.src_ids[same & kept])
    with pytest.raises(Exception, match="byte_pieces"):
        align_vocab(bl, ms, model_rows=len(ms), byte_pieces="drop")


def test_byte_tokens_recipe_setting(zoo, tmp_path):
    """``approximation.byte_tokens: estimate`` leaves byte-piece-only tokens to the method."""
    from mergekit_tokenplug.surgery import transplant

    counts = {}
    for mode in ("copy", "estimate"):
        out = tmp_path / mode
        summary = transplant(
            str(zoo.sp_untied), str(zoo.bl_untied), str(out), "mean", {"byte_tokens": mode},
            quiet=True,
        )
        (per_model,) = summary["vocabulary"]["per_model"].values()
        counts[mode] = per_model
    assert counts["estimate"]["missing"] > counts["copy"]["missing"]
    moved = counts["estimate"]["missing"] - counts["copy"]["missing"]
    assert counts["copy"]["canonical"] - counts["estimate"]["canonical"] == moved
