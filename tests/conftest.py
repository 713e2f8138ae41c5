"""Shared fixtures: tiny real models and tokenizers built once per session (no downloads)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from models_factory import build_llama, portable_init, portable_values  # noqa: E402
from tokenizers_factory import (  # noqa: E402
    CHAT_TOKENS,
    CHATML_TEMPLATE,
    build_byte_level_bpe,
    build_sentencepiece_bpe,
    build_wordpiece,
    corpus_documents,
)


class Zoo:
    """Paths of the tiny models used across tests."""

    def __init__(self, root: Path):
        self.root = root
        tok_sp = build_sentencepiece_bpe(root / "tok_sp", vocab_size=700)
        tok_bl = build_byte_level_bpe(
            root / "tok_bl",
            vocab_size=600,
            extra_special=CHAT_TOKENS,
            chat_template=CHATML_TEMPLATE,
        )
        tok_bl_big = build_byte_level_bpe(
            root / "tok_bl_big",
            vocab_size=760,
            extra_special=CHAT_TOKENS,
            chat_template=CHATML_TEMPLATE,
        )
        self.sp_untied = build_llama(root / "sp_untied", tok_sp, seed=1)
        self.sp_tied = build_llama(root / "sp_tied", tok_sp, seed=2, tied=True)
        self.bl_tied = build_llama(root / "bl_tied", tok_bl, seed=3, tied=True)
        self.bl_untied = build_llama(root / "bl_untied", tok_bl, seed=4)
        self.bl_big = build_llama(root / "bl_big", tok_bl_big, seed=5)
        self.bl_big_padded = build_llama(root / "bl_big_padded", tok_bl_big, seed=6, extra_rows=40)
        self.bl_untied_2 = build_llama(root / "bl_untied_2", tok_bl, seed=7)
        self.tok_bl_only = root / "tok_bl"  # a tokenizer-only directory
        self.tok_sp_only = root / "tok_sp"

    @functools.cached_property
    def wide(self) -> dict[str, Path]:
        """Stand-ins for the shipped recipes' models, wider than the recipes' OMP ``k`` (64).

        With ``k`` at or above the hidden size the residual vanishes before OMP's last picks,
        which then choose among ties of rounding noise: machine-dependent, not a property of
        the method. Real models are 576-640 wide."""
        tok_sp = self.root / "tok_sp"
        tok_bl = self.root / "tok_bl"
        load = transformers.AutoTokenizer.from_pretrained
        specs = {
            "sp_tied": (tok_sp, 12, True),
            "sp_untied": (tok_sp, 11, False),
            "bl_tied": (tok_bl, 13, True),
            "bl_untied": (tok_bl, 14, False),
            "bl_untied_2": (tok_bl, 17, False),
        }
        return {
            name: build_llama(
                self.root / f"wide_{name}", load(str(tok)), hidden=96, seed=seed, tied=tied
            )
            for name, (tok, seed, tied) in specs.items()
        }

    @functools.cached_property
    def bl_related(self) -> Path:
        """A donor whose rows for the tokens it shares with ``bl_big`` are ``bl_big``'s rows
        through one fixed linear map: two spaces that really are related, as a real donor's
        and base's are (the other zoo models are independent random spaces, where no method
        can beat the mean row)."""
        from safetensors.torch import load_file, save_file

        out = build_llama(
            self.root / "bl_related",
            transformers.AutoTokenizer.from_pretrained(str(self.root / "tok_bl")),
            seed=8,
        )
        base_vocab = transformers.AutoTokenizer.from_pretrained(str(self.bl_big)).get_vocab()
        donor_vocab = transformers.AutoTokenizer.from_pretrained(str(out)).get_vocab()
        base = load_file(str(self.bl_big / "model.safetensors"))["model.embed_tokens.weight"]
        weights = load_file(str(out / "model.safetensors"))
        emb = weights["model.embed_tokens.weight"]
        mix = portable_values(np.random.RandomState(8), (emb.shape[1], emb.shape[1]), 1.0)
        shared = [(d, base_vocab[tok]) for tok, d in donor_vocab.items() if tok in base_vocab]
        donor_ids, base_ids = (torch.tensor(ids) for ids in zip(*shared, strict=True))
        emb[donor_ids] = (base[base_ids].double() @ mix.double() / emb.shape[1] ** 0.5).float()
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out

    @functools.cached_property
    def bert_embedder(self) -> Path:
        """A tiny BERT sentence encoder (WordPiece) standing in for all-MiniLM-L6-v2."""
        out = self.root / "bert"
        tok = build_wordpiece(self.root / "tok_wp", vocab_size=400)
        cfg = transformers.BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        bert = transformers.BertModel(cfg)
        portable_init(bert, seed=0)
        bert.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        return out

    @functools.cached_property
    def corpus_dir(self) -> Path:
        out = self.root / "texts"
        out.mkdir(exist_ok=True)
        docs = corpus_documents()
        for i in range(3):
            (out / f"part{i}.txt").write_text(
                "\n".join(docs[i::3]) + "\n kubectl systemd apt-get dpkg\n" * 20, encoding="utf-8"
            )
        return out


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def one_thread():
    """Tiny tensors: thread hand-offs cost more than the math on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
