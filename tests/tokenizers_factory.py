"""Builders of small *real* tokenizers for tests (no downloads).

Each builder trains a tokenizer with the `tokenizers` library on a deterministic in-code
corpus, wraps it as a transformers fast tokenizer, saves it with ``save_pretrained(out_dir)``
and returns ``AutoTokenizer.from_pretrained(out_dir)`` - the same load path real models use.

* :func:`build_byte_level_bpe` - GPT-2/Llama-3 style (ByteLevel pre-tokenizer + decoder).
* :func:`build_sentencepiece_bpe` - Llama-2/Gemma style BPE with ``byte_fallback`` and the 256
  ``<0xNN>`` pieces as regular vocabulary entries; ``style="llama"`` spells ``▁`` through a
  Prepend/Replace normalizer and Replace decoder, ``style="metaspace"`` through the Metaspace
  pre-tokenizer/decoder.
* :func:`build_wordpiece` - BERT style (``##`` continuations).
* :func:`build_synthetic_vocab` - a huge vocabulary (e.g. 262k) of generated entries, for
  speed checks; in memory, no training.

Special tokens are parameters (bos/eos/unk/pad strings differ per tokenizer on purpose), chat
markers go in as ``additional_special_tokens`` and a ChatML ``chat_template`` can be attached.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

CHAT_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BYTE_PIECES: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))

# ----------------------------------------------------------------------------- corpus

_SUBJECTS = [
    "the cat",
    "a dog",
    "my friend",
    "the old man",
    "our teacher",
    "the small bird",
    "every student",
    "the engineer",
    "this model",
    "the river",
    "her brother",
    "the city council",
    "a young woman",
    "the computer",
    "each player",
]
_VERBS = [
    "sees",
    "likes",
    "builds",
    "reads",
    "writes",
    "finds",
    "carries",
    "watches",
    "remembers",
    "explains",
    "follows",
    "opens",
    "paints",
    "answers",
    "changes",
]
_OBJECTS = [
    "the house",
    "a long letter",
    "the green garden",
    "an interesting book",
    "the morning train",
    "a bright window",
    "the hidden answer",
    "some fresh bread",
    "the quiet street",
    "a difficult problem",
    "the open door",
    "many small stones",
    "the summer festival",
    "a new language",
    "the evening news",
]
_ENDINGS = [
    "today",
    "again",
    "in the morning",
    "after dinner",
    "near the station",
    "without a word",
    "with great care",
    "before the storm",
    "every Sunday",
    "at the café",
    "in Zürich",
    "for the naïve reader",
    "during the winter",
]
_WORDS = [
    "because",
    "however",
    "although",
    "therefore",
    "meanwhile",
    "quickly",
    "slowly",
    "running",
    "playing",
    "thinking",
    "wonderful",
    "beautiful",
    "important",
    "information",
    "international",
    "understanding",
    "development",
    "government",
    "education",
    "résumé",
    "façade",
    "coöperate",
    "jalapeño",
]
_RARE = ["東京", "日本語", "🙂", "Ωμέγα", "данные", "ß"]
_CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * 2)\n",
    "if x > 0 and y < 5:\n    total += x\nelse:\n    total -= y\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "values = [1, 2, 3, 4]\nresult = sum(values) / len(values)\n",
    "import os\npath = os.path.join('data', 'file.txt')\n",
    "while count < 100:\n    count = count + 1\n",
    "return {'name': name, 'value': 3.14}\n",
]


def corpus_documents(n_docs: int = 240, seed: int = 0) -> list[str]:
    """Deterministic English-ish prose, code and numbers; documents contain newlines."""
    rng = random.Random(seed)
    docs: list[str] = []
    for d in range(n_docs):
        kind = d % 4
        if kind == 3:
            docs.append(rng.choice(_CODE) + rng.choice(_CODE))
            continue
        sentences = []
        for _ in range(rng.randint(2, 5)):
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            if rng.random() < 0.6:
                s += " " + rng.choice(_ENDINGS)
            if rng.random() < 0.4:
                s += f", {rng.choice(_WORDS)} {rng.choice(_WORDS)}"
            if rng.random() < 0.3:
                s += f" in {rng.randint(1900, 2030)} for ${rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
            if rng.random() < 0.05:
                s += " " + rng.choice(_RARE)
            sentences.append(s[0].upper() + s[1:] + rng.choice([".", ".", "!", "?"]))
        sep = "\n" if kind == 2 else " "
        docs.append(sep.join(sentences))
    return docs


def corpus_lines(n_docs: int = 240, seed: int = 0) -> list[str]:
    """The same corpus split into non-empty lines (no newline characters)."""
    return [line for doc in corpus_documents(n_docs, seed) for line in doc.split("\n") if line]


# ----------------------------------------------------------------------------- wrapping


def _save_and_load(
    tok: Tokenizer,
    out_dir: str | Path,
    special: dict[str, str | None],
    extra_special: tuple[str, ...],
    chat_template: str | None,
) -> PreTrainedTokenizerFast:
    kwargs = {f"{role}_token": value for role, value in special.items() if value is not None}
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, additional_special_tokens=list(extra_special), **kwargs
    )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))


def _roles(**roles: str | None) -> tuple[dict[str, str | None], list[str]]:
    """Role map and the distinct role strings in a stable order (bos, eos, unk, pad, ...)."""
    ordered: list[str] = []
    for value in roles.values():
        if value is not None and value not in ordered:
            ordered.append(value)
    return roles, ordered


# ----------------------------------------------------------------------------- builders


def build_byte_level_bpe(
    out_dir: str | Path,
    *,
    vocab_size: int = 600,
    bos: str | None = "<|endoftext|>",
    eos: str | None = "<|endoftext|>",
    unk: str | None = None,
    pad: str | None = None,
    extra_special: tuple[str, ...] = (),
    chat_template: str | None = None,
    seed: int = 0,
) -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE; role tokens take the first ids, extra specials the last."""
    roles, specials = _roles(bos=bos, eos=eos, unk=unk, pad=pad)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_documents(seed=seed), trainer)
    return _save_and_load(tok, out_dir, roles, extra_special, chat_template)


def build_sentencepiece_bpe(
    out_dir: str | Path,
    *,
    vocab_size: int = 700,
    style: str = "llama",
    byte_fallback: bool = True,
    limit_alphabet: int = 70,
    bos: str | None = "<s>",
    eos: str | None = "</s>",
    unk: str | None = "<unk>",
    pad: str | None = None,
    extra_special: tuple[str, ...] = (),
    chat_template: str | None = None,
    seed: int = 0,
) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE: ``▁`` word starts, ``<0xNN>`` byte pieces (Llama-2 layout:
    ``<unk>``, ``<s>``, ``</s>`` first, then the 256 byte pieces, then learned pieces).

    Trained on newline-free lines with a limited alphabet, so "\\n" and rare characters
    (CJK, emoji) only exist as byte pieces. ``vocab_size`` counts everything.
    """
    if style not in ("llama", "metaspace"):
        raise ValueError(f"style must be 'llama' or 'metaspace', got {style!r}")
    roles, specials = _roles(unk=unk, bos=bos, eos=eos, pad=pad)
    n_fixed = len(specials) + (256 if byte_fallback else 0)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - n_fixed, limit_alphabet + 1),
        limit_alphabet=limit_alphabet,
        show_progress=False,
    )
    learner.train_from_iterator(corpus_lines(seed=seed), trainer)
    learned = json.loads(learner.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    fixed = list(specials) + (list(BYTE_PIECES) if byte_fallback else [])
    vocab = {t: i for i, t in enumerate(fixed)}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=merges, unk_token=unk, byte_fallback=byte_fallback, fuse_unk=True
        )
    )
    if style == "llama":
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("\u2581", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="always", split=False
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.ByteFallback(),
                decoders.Metaspace(replacement="\u2581", prepend_scheme="always"),
            ]
        )
    tok.add_special_tokens(specials)
    return _save_and_load(tok, out_dir, roles, extra_special, chat_template)


def build_wordpiece(
    out_dir: str | Path,
    *,
    vocab_size: int = 600,
    lowercase: bool = False,
    unk: str = "[UNK]",
    pad: str = "[PAD]",
    cls: str = "[CLS]",
    sep: str = "[SEP]",
    mask: str = "[MASK]",
    extra_special: tuple[str, ...] = (),
    chat_template: str | None = None,
    seed: int = 0,
) -> PreTrainedTokenizerFast:
    """BERT-style WordPiece (BertNormalizer, BertPreTokenizer, ``##`` continuations).

    The vocabulary is chosen by counting (the `tokenizers` WordPiece trainer breaks ties
    differently from run to run): every character as a word start and as ``##`` piece, the
    most frequent word endings as ``##`` pieces, then the most frequent whole words.
    """
    roles, specials = _roles(pad=pad, unk=unk, cls=cls, sep=sep, mask=mask)
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for doc in corpus_documents(seed=seed):
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(doc)))
    chars = sorted({c for w in words for c in w})
    endings: Counter[str] = Counter()
    for w, n in words.items():
        for k in range(2, min(len(w), 6)):
            endings[w[-k:]] += n
    by_count = sorted(endings.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab_list = list(specials) + chars + ["##" + c for c in chars]
    vocab_list += ["##" + e for e, _ in by_count[: max(0, (vocab_size - len(vocab_list)) // 4)]]
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab_list) >= vocab_size:
            break
        if w not in vocab_list:
            vocab_list.append(w)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    tok.add_special_tokens(specials)
    return _save_and_load(tok, out_dir, roles, extra_special, chat_template)


def synthetic_words(n: int) -> list[str]:
    """The first ``n`` distinct word-like strings in a fixed syllable order (deterministic)."""
    syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"][:64]
    words: list[str] = []
    for length in itertools.count(1):
        words.extend(
            map(
                "".join,
                itertools.islice(itertools.product(syllables, repeat=length), n - len(words)),
            )
        )
        if len(words) >= n:
            return words
    raise AssertionError("unreachable")


def build_synthetic_vocab(
    n_tokens: int, *, scheme: str = "byte_level", wrap: bool = True
) -> PreTrainedTokenizerFast | Tokenizer:
    """A BPE tokenizer with ``n_tokens`` entries of generated words (no merges; for speed).

    ``scheme``: "byte_level" (``Ġ`` word starts, every 7th entry ending in ``Ã©`` = "é") or
    "metaspace" (``▁`` word starts plus the 256 ``<0xNN>`` pieces). Entries alternate word
    start / continuation, so the two schemes share most canonical forms and few raw strings.
    ``wrap=False`` returns the bare `tokenizers.Tokenizer` (skips the wrapper's deep copy).
    """
    if scheme == "byte_level":
        mark, accent = "\u0120", "\u00c3\u00a9"  # Ġ, Ã© (= "é")
        fixed = ["<|endoftext|>", *sorted(set(pre_tokenizers.ByteLevel.alphabet()))]
        roles = {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}
    elif scheme == "metaspace":
        mark, accent = "\u2581", ""
        fixed = ["<unk>", "<s>", "</s>", *BYTE_PIECES]
        roles = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}
    else:
        raise ValueError(f"scheme must be 'byte_level' or 'metaspace', got {scheme!r}")
    words = synthetic_words(n_tokens - len(fixed))
    entries = [
        (mark if k % 2 == 0 else "") + w + (accent if k % 7 == 0 else "")
        for k, w in enumerate(words)
    ]
    vocab = {t: i for i, t in enumerate(fixed + entries)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=[], byte_fallback=scheme == "metaspace", unk_token=roles.get("unk")
        )
    )
    if scheme == "byte_level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    tok.add_special_tokens(sorted(set(roles.values())))
    if not wrap:
        return tok
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, **{f"{r}_token": v for r, v in roles.items()}
    )
