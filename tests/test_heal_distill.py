"""``heal`` with a teacher (cross-tokenizer distillation) and a merged LoRA adapter, on tiny
real models: chunk alignment on hand-built and real tokenizers, the losses' zero, the teacher
cache's reuse and invalidation, what changes in OUT, and the teacher refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from click.testing import CliRunner
from models_factory import build_llama
from test_distributed import launch
from test_heal import corpus, tensors
from tokenizers_factory import CHAT_TOKENS, build_byte_level_bpe, build_sentencepiece_bpe
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.heal import run_heal
from mergekit_tokenplug.heal.adapter import DEFAULT_LORA
from mergekit_tokenplug.heal.align import align_chunks, encode_segments
from mergekit_tokenplug.heal.corpus_spans import read_stream, student_windows, training_texts
from mergekit_tokenplug.heal.data import load_corpus
from mergekit_tokenplug.heal.distill import DistillWeights, chunk_loss
from mergekit_tokenplug.heal.rows import rows_to_train
from mergekit_tokenplug.heal.teach import CACHE_NAME, distillation
from mergekit_tokenplug.heal.teacher import window_chunks
from mergekit_tokenplug.heal.train import scheduled_windows
from mergekit_tokenplug.output.manifest import MANIFEST_NAME
from mergekit_tokenplug.surgery import transplant

pytestmark = pytest.mark.usefixtures("one_thread")
EMBED = "model.embed_tokens.weight"
FAST = dict(steps=3, seq_len=32, batch_size=2, lr=1e-2, quiet=True)
TEXT = "The cat 東京 sees <|im_start|>jalapeño 🙂 ok"


@pytest.fixture(scope="module")
def transplanted(zoo, tmp_path_factory):
    """A tied SentencePiece base given a byte-level BPE tokenizer; its manifest names the
    base, the default teacher."""
    out = tmp_path_factory.mktemp("distill") / "transplanted"
    transplant(str(zoo.sp_tied), str(zoo.bl_untied), str(out), "mean", {}, quiet=True)
    return out


# ----------------------------------------------------------------------------- alignment


def test_chunks_of_hand_built_spans_never_split_a_character():
    # "aé b": side A spells é with two byte pieces (both report é's span), B has "aé" whole
    a = [(0, 1), (1, 2), (1, 2), (2, 4)]
    b = [(0, 2), (2, 3), (3, 4)]
    c = align_chunks(a, b, start_a=0, start_b=0)
    assert (c.a_lo, c.a_hi, c.b_lo, c.b_hi) == ([0, 3], [3, 4], [0, 1], [1, 3])
    # with BOS on both sides (span at the start), chunks start after it
    c = align_chunks([(0, 0), *a], [(0, 0), *b])
    assert (c.a_lo, c.a_hi, c.b_lo, c.b_hi) == ([1, 4], [4, 5], [1, 2], [2, 4])
    # a window whose first token starts inside one of the other side's tokens: each BOS at
    # its own side's start; the first chunk begins where both have ended a token
    c = align_chunks([(5, 5), (5, 7), (7, 9)], [(7, 7), (7, 9)])
    assert (c.a_lo, c.a_hi, c.b_lo, c.b_hi) == ([2], [3], [1], [2])


def _piece_bytes(tok, ids: list[int], text: str) -> list[bytes]:
    """Each token's bytes from its piece alone (independent of offsets): byte-level BPE
    through the byte alphabet, SentencePiece ``<0xNN>`` as one byte and ``▁`` as a space
    (the prefix ``▁`` a SentencePiece tokenizer adds to the text is not the text's); an added
    token is its own text."""
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    sentencepiece = "<0x41>" in tok.get_vocab()
    out = []
    for k, piece in enumerate(tok.convert_ids_to_tokens(ids)):
        if piece in tok.all_special_tokens:
            out.append(piece.encode())
        elif not sentencepiece:
            out.append(bytes(byte_of[c] for c in piece))
        elif piece.startswith("<0x") and len(piece) == 6:
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            s = piece.replace("\u2581", " ")
            out.append(s[1:].encode() if k == 0 and not text.startswith(" ") else s.encode())
    return out


def _expected_boundaries(tok_a, ids_a, tok_b, ids_b, text: str) -> list[int]:
    """Byte offsets both sides end a token at, kept where they fall between characters."""
    char_ends = {len(text[:i].encode()) for i in range(len(text) + 1)}
    ends = []
    for tok, ids in ((tok_a, ids_a), (tok_b, ids_b)):
        pos, mine = 0, set()
        for piece in _piece_bytes(tok, ids, text):
            pos += len(piece)
            mine.add(pos)
        assert pos == len(text.encode())
        ends.append(mine)
    return sorted(ends[0] & ends[1] & char_ends)


@pytest.mark.parametrize("style", ["llama", "metaspace"])
def test_chunks_of_byte_level_bpe_against_sentencepiece_byte_fallback(tmp_path, style):
    bl = build_byte_level_bpe(tmp_path / "bl", extra_special=CHAT_TOKENS)
    sp = build_sentencepiece_bpe(tmp_path / "sp", style=style)
    ids_a, spans_a = encode_segments(bl, [(0, TEXT)], bos=bl.bos_token_id, sep=None)
    ids_b, spans_b = encode_segments(sp, [(0, TEXT)], bos=sp.bos_token_id, sep=None)
    # the hard cases are really there: 東 and 🙂 as byte pieces on both sides, ñ split in two
    # byte-level pieces but whole in SentencePiece, the chat marker one added token on A only
    assert sum(p.startswith("<0x") for p in sp.convert_ids_to_tokens(ids_b)) == 10 + 3  # + "||>"
    assert "<|im_start|>" in bl.convert_ids_to_tokens(ids_a) and "ñ" in sp.convert_ids_to_tokens(
        ids_b
    )
    c = align_chunks(spans_a, spans_b)
    assert (
        ids_a[0] == bl.bos_token_id and ids_b[0] == sp.bos_token_id and c.a_lo[0] == c.b_lo[0] == 1
    )
    ends_a = [len(TEXT[: spans_a[h - 1][1]].encode()) for h in c.a_hi]
    ends_b = [len(TEXT[: spans_b[h - 1][1]].encode()) for h in c.b_hi]
    assert ends_a == ends_b == _expected_boundaries(bl, ids_a[1:], sp, ids_b[1:], TEXT)
    # chunks tile both sequences after BOS, and each chunk's pieces spell the same bytes
    assert c.a_lo[1:] == c.a_hi[:-1] and c.b_lo[1:] == c.b_hi[:-1]
    assert c.a_hi[-1] == len(ids_a) and c.b_hi[-1] == len(ids_b)
    pa, pb = _piece_bytes(bl, ids_a[1:], TEXT), _piece_bytes(sp, ids_b[1:], TEXT)
    for k in range(len(c)):
        spelled_a = b"".join(pa[c.a_lo[k] - 1 : c.a_hi[k] - 1])
        assert spelled_a == b"".join(pb[c.b_lo[k] - 1 : c.b_hi[k] - 1])
    chunk_texts = [
        TEXT[spans_a[lo][0] : spans_a[hi - 1][1]] for lo, hi in zip(c.a_lo, c.a_hi, strict=True)
    ]
    assert (
        " <|im_start|>" in chunk_texts
        and "東" in chunk_texts
        and "ñ" not in "".join(chunk_texts[:3])
    )


def test_every_window_of_a_corpus_aligns_the_same_text_on_both_sides(zoo, transplanted):
    """Byte-level windows of 32 tokens cut SentencePiece tokens and multi-byte characters
    at their edges; each chunk still spans the same text on both sides."""
    tok, t_tok = (
        AutoTokenizer.from_pretrained(transplanted),
        AutoTokenizer.from_pretrained(zoo.sp_tied),
    )
    data = load_corpus(corpus(zoo), tok, seq_len=32, eval_fraction=0.1)
    texts = training_texts(corpus(zoo), 0.1)
    windows, t_stream = student_windows(tok, texts, 32, data.train.ids), read_stream(t_tok, texts)
    joined = "".join(t + "\0" for t in texts)  # the streams' coordinates: files one apart
    late_starts = covered = 0
    for w in range(len(data.train)):
        s_ids, s_spans, start, _ = windows.window(w)
        t_ids, c = window_chunks(t_stream, windows, w)
        t_spans = t_stream.between(start, windows.window(w)[3])[1]
        assert s_ids == [tok.bos_token_id, *data.train.ids[w, 1:].tolist()]
        assert t_ids[0] == t_tok.bos_token_id and len(c) > 0
        late_starts += c.a_lo[0] > 1
        for k in range(len(c)):
            a = joined[s_spans[c.a_lo[k]][0] : s_spans[c.a_hi[k] - 1][1]]
            b = joined[t_spans[c.b_lo[k]][0] : t_spans[c.b_hi[k] - 1][1]]
            assert a == b, (w, k)
            covered += c.a_hi[k] - c.a_lo[k]
    assert late_starts > 0  # some windows start inside a teacher token
    assert covered > 0.9 * len(data.train) * 32


# ----------------------------------------------------------------------------- losses


def test_chunk_loss_is_zero_only_at_the_teachers_likelihoods():
    teacher = torch.tensor([-0.5, -3.0, -12.0, -40.0])
    assert float(chunk_loss(teacher.clone(), teacher, 100.0)) == pytest.approx(0.0, abs=1e-9)
    assert float(chunk_loss(teacher - 1.0, teacher, 100.0)) > 0
    assert float(chunk_loss(teacher + 0.4, teacher, 100.0)) > 0


def _objective(zoo, student, teacher, tmp_path, weights):
    tok = AutoTokenizer.from_pretrained(student)
    data = load_corpus(corpus(zoo), tok, seq_len=32, eval_fraction=0.1)
    objective, record = distillation(
        str(teacher), student, tok, corpus(zoo), data.sha256, data.train, seq_len=32,
        eval_fraction=0.1, steps=2, batch_size=2, seed=0, weights=weights,
        cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "out"),
        accelerator=Accelerator(cpu=True), show_progress=False,
    )  # fmt: skip
    picks = scheduled_windows(len(data.train), 2, 2, 0)[:3]
    return objective, data.train.take(picks), picks, record


def test_distillation_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(zoo, tmp_path):
    weights = DistillWeights(lm=0.0, chunk=1.0, hidden=1.0, tau=100.0, layer=-1, piece=1.0)
    objective, batch, picks, record = _objective(zoo, zoo.sp_tied, zoo.sp_tied, tmp_path, weights)
    assert record["cache"]["chunks"] > 0
    teacher = AutoModelForCausalLM.from_pretrained(zoo.sp_tied).eval()
    with torch.no_grad():
        assert float(objective(teacher, batch, picks)) == pytest.approx(0.0, abs=1e-6)
        other = AutoModelForCausalLM.from_pretrained(zoo.sp_untied).eval()  # same tokenizer
        assert float(objective(other, batch, picks)) > 1e-3
        for w in (
            DistillWeights(0.0, 1.0, 0.0, 100.0, -1),
            DistillWeights(0.0, 0.0, 1.0, 100.0, -1),
            DistillWeights(0.0, 0.0, 0.0, 100.0, -1, piece=1.0),
        ):
            one, *_ = _objective(zoo, zoo.sp_tied, zoo.sp_tied, tmp_path, w)
            assert float(one(other, batch, picks)) > 1e-6


# ----------------------------------------------------------------------------- heal runs


def test_the_teacher_pass_is_cached_reused_and_invalidated_by_the_corpus(
    zoo, transplanted, tmp_path
):
    cache = tmp_path / "cache"
    first = run_heal(
        str(transplanted), str(tmp_path / "a"), corpus(zoo), teacher_cache=str(cache), **FAST
    )
    assert first["teacher"]["path"] == str(zoo.sp_tied.resolve())
    rec = first["cache"]
    assert rec["teacher_forwards"] == rec["windows"] > 0 and rec["reused"] == 0 and rec["bytes"] > 0
    files = sorted((cache / rec["key"]).glob("w*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]
    second = run_heal(
        str(transplanted), str(tmp_path / "b"), corpus(zoo), teacher_cache=str(cache), **FAST
    )
    assert second["cache"]["teacher_forwards"] == 0 and second["cache"]["reused"] == rec["windows"]
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    changed = tmp_path / "texts"
    shutil.copytree(zoo.corpus_dir, changed)
    with open(changed / "part1.txt", "a", encoding="utf-8") as fh:
        fh.write("A line the teacher has not read yet.\n" * 5)
    third = run_heal(
        str(transplanted),
        str(tmp_path / "c"),
        [str(changed / "*.txt")],
        teacher_cache=str(cache),
        **FAST,
    )
    assert third["cache"]["key"] != rec["key"] and third["cache"]["teacher_forwards"] > 0
    # the default cache lives beside OUT
    run_heal(str(transplanted), str(tmp_path / "d"), corpus(zoo), **FAST)
    assert (tmp_path / CACHE_NAME / rec["key"]).is_dir()


def test_distillation_with_lora_changes_only_the_rows_and_the_merged_modules(
    zoo, transplanted, tmp_path
):
    outs = []
    for i in range(2):
        out = tmp_path / f"healed{i}"
        summary = run_heal(
            str(transplanted), str(out), corpus(zoo), rows="new", lam=0.0, adapter="lora",
            teacher_cache=str(tmp_path / "cache"), **FAST,
        )  # fmt: skip
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1]  # reruns byte-identical
    before, after = tensors(transplanted), tensors(out)
    adapter = summary["adapter"]
    assert adapter["merged"] and adapter["rank"] == DEFAULT_LORA.rank
    assert set(after) == set(before) | {"lm_head.weight"}  # plain checkpoint, untied
    assert not [k for k in after if "lora" in k]
    assert len(adapter["modules_changed"]) == 14  # 2 layers x 7 projections
    for name, t in before.items():
        if name == EMBED:
            continue
        if name in adapter["modules_changed"]:
            assert not torch.equal(after[name], t), name
        else:
            assert torch.equal(after[name], t), name
    chosen = rows_to_train(transplanted, "new", before[EMBED].shape[0])
    changed = (after[EMBED] != before[EMBED]).any(dim=1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(chosen)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    heal = manifest["report"]["heal"]
    assert heal["adapter"]["modules_changed"] == adapter["modules_changed"]
    assert heal["objective"]["chunk_likelihood"] == summary["objective"]["chunk_likelihood"]
    teacher = next(i for i in manifest["inputs"] if i["role"] == "teacher")
    assert teacher["safetensors"] == summary["teacher"]["safetensors"]
    # healing OUT again: its merged body is no longer the base's, so the default teacher
    # is refused, saying how to go on
    res = CliRunner().invoke(
        main, ["heal", str(out), str(tmp_path / "again"), "--corpus", corpus(zoo)[0], "-q"]
    )
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "--teacher none" in lines[0], res.output
    assert not (tmp_path / "again").exists()
    card = (out / "README.md").read_text()
    assert "Distilled from the original model" in card and "**merged**" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    gen = model.generate(**tok("The cat", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert gen.shape[1] > 2


def test_teacher_none_keeps_the_lm_objective(zoo, transplanted, tmp_path):
    a = run_heal(str(transplanted), str(tmp_path / "a"), corpus(zoo), teacher="none", **FAST)
    b = run_heal(str(transplanted), str(tmp_path / "b"), corpus(zoo), **FAST)
    assert a["teacher"] is None and not (tmp_path / CACHE_NAME / "x").exists()
    assert b["teacher"] is not None and a["train_loss"][0] != b["train_loss"][0]


def _bad_teachers(zoo, tmp):
    wide = build_llama(
        tmp / "wide", AutoTokenizer.from_pretrained(zoo.sp_tied), hidden=48, tied=True
    )
    no_tok = tmp / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(zoo.sp_tied / f, no_tok / f)
    return {
        "other width": (str(wide), "--teacher: "),
        "no tokenizer": (str(no_tok), "has no tokenizer"),
        "not the base": (str(zoo.sp_untied), "is not MODEL's base"),
    }


@pytest.mark.parametrize("case", ["other width", "no tokenizer", "not the base"])
def test_bad_teachers_are_refused_in_one_line_with_nothing_at_out(
    zoo, transplanted, tmp_path, case
):
    teacher, expected = _bad_teachers(zoo, tmp_path)[case]
    out = tmp_path / "out"
    args = ["heal", str(transplanted), str(out), "--corpus", corpus(zoo)[0], "--teacher", teacher]
    res = CliRunner().invoke(main, [*args, "--steps", "2", "--seq-len", "32", "-q"])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], res.output
    if case == "other width":
        assert "hidden_size 48" in lines[0]
    assert not out.exists() and not (tmp_path / CACHE_NAME).exists()


def test_two_processes_match_one_with_teacher_and_lora(zoo, transplanted, tmp_path):
    results = []
    for nproc in (1, 2):
        out, summary = tmp_path / f"out{nproc}", tmp_path / f"summary{nproc}.json"
        args = ["heal", str(transplanted), str(out), "--corpus", corpus(zoo)[0], "--steps", "3"]
        args += ["--seq-len", "32", "--batch-size", "2", "--lr", "1e-2", "--adapter", "lora"]
        args += ["--teacher-cache", str(tmp_path / f"cache{nproc}"), "-q", "--json", str(summary)]
        proc = launch(nproc, args, {}, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append((json.loads(summary.read_text()), tensors(out)))
    (one, t_one), (two, t_two) = results
    assert two["processes"] == 2 and one["teacher"] == two["teacher"]
    assert one["cache"]["key"] == two["cache"]["key"]  # each fills its own cache; 2 split it
    assert one["cache"]["teacher_forwards"] == two["cache"]["teacher_forwards"] > 0
    assert abs(one["heldout_after"]["loss"] - two["heldout_after"]["loss"]) < 1e-3
    assert one["heldout_after"]["loss"] != one["heldout_before"]["loss"]
    for name in one["adapter"]["modules_changed"]:
        assert torch.allclose(t_one[name], t_two[name], atol=1e-4), name
