"""Bits-per-byte evaluation on a tiny real Llama with a tiny real BPE tokenizer.

Expectations are derived independently of ``bits_per_byte``: token ids from the raw
``tokenizers`` object, windows cut here, log-probabilities from a direct float64
log-softmax of a plain forward pass, byte counts from the byte-level alphabet.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.evaluate.bpb import evaluate_models, format_table

WINDOW = 16
TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "def merge(a, b):\n    return [x + y for x, y in zip(a, b)]\n"
    "Tokenizers split text into pieces; models predict the next piece. "
) * 4
EVAL_TEXT = (
    "A lazy fox packs five boxes; the brown dog jumps. def zip_merge(x):\n"
    "    return [y for y in x]\nModels predict pieces of text, tokenizers split them. "
) * 2
NON_ASCII = "Grüße aus Köln — 日本語のテキスト. "


def _train_tokenizer() -> Tokenizer:
    """Byte-level BPE with a BOS token it does not add itself (like SmolLM2's)."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([TRAIN_TEXT], trainer=trainer)
    return tk


def _save_model(
    tmp: Path, tk: Tokenizer, *, uniform: bool = False, bos_token: str | None = "<s>"
) -> Path:
    out = tmp / ("uniform" if uniform else "model")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos_token, eos_token="</s>")
    cfg = LlamaConfig(
        vocab_size=tk.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tk.token_to_id("<s>"),
        eos_token_id=tk.token_to_id("</s>"),
        tie_word_embeddings=not uniform,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if uniform:
        with torch.no_grad():
            model.lm_head.weight.zero_()  # all logits 0 -> uniform next-token distribution
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    return out


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet, inverted: written here so the test does not trust the code."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
    bs += list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _reference_bits(model_dir: Path, windows: list[list[int]]) -> float:
    """Sum of -log2 p(token | window prefix) over every non-first position of each window."""
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    bits = 0.0
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for pos in range(1, len(w)):
                bits -= logp[pos - 1, w[pos]].item() / math.log(2)
    return bits


@pytest.fixture(scope="module")
def bos_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bpb_bos")
    tk = _train_tokenizer()
    text_file = tmp / "eval.txt"
    text = EVAL_TEXT + NON_ASCII
    text_file.write_text(text, encoding="utf-8")
    return tk, _save_model(tmp, tk), text_file, text


def test_bpb_matches_direct_forward_with_bos(bos_setup):
    tk, model_dir, text_file, text = bos_setup
    (rec,) = evaluate_models([model_dir], [text_file], window=WINDOW, show_progress=False)
    ids = tk.encode(text, add_special_tokens=False).ids
    bos = tk.token_to_id("<s>")
    windows = [[bos, *ids[i : i + WINDOW]] for i in range(0, len(ids), WINDOW)]
    assert len(windows) > 2  # several windows, the last one partial
    bits = _reference_bits(model_dir, windows)
    n_bytes = len(text.encode("utf-8"))
    assert rec["bos"] is True
    assert rec["tokens"] == len(ids) == rec["scored_tokens"]
    assert rec["bytes"] == n_bytes
    assert rec["bits"] == pytest.approx(bits, rel=1e-5)
    assert rec["bpb"] == pytest.approx(bits / n_bytes, rel=1e-5)


def test_bpb_without_bos_skips_first_token_of_each_window(tmp_path):
    tk = _train_tokenizer()
    model_dir = _save_model(tmp_path, tk, bos_token=None)  # no BOS token: none prepended
    text_file = tmp_path / "eval.txt"
    text_file.write_text(EVAL_TEXT, encoding="utf-8")
    (rec,) = evaluate_models(
        [model_dir], [text_file], window=WINDOW, batch_size=3, show_progress=False
    )
    enc = tk.encode(EVAL_TEXT, add_special_tokens=False)
    windows = [enc.ids[i : i + WINDOW] for i in range(0, len(enc.ids), WINDOW)]
    bits = _reference_bits(model_dir, windows)
    dec = _byte_decoder()
    token_bytes = [bytes(dec[c] for c in tok) for tok in enc.tokens]
    assert b"".join(token_bytes) == EVAL_TEXT.encode("utf-8")
    first_bytes = sum(len(token_bytes[i]) for i in range(0, len(enc.ids), WINDOW))
    n_bytes = len(EVAL_TEXT.encode("utf-8")) - first_bytes
    assert rec["bos"] is False
    assert rec["scored_tokens"] == len(enc.ids) - len(windows)
    assert rec["bytes"] == n_bytes
    assert rec["bpb"] == pytest.approx(bits / n_bytes, rel=1e-5)


def test_uniform_model_gives_log2_vocab_per_token(tmp_path, bos_setup):
    tk, _, text_file, text = bos_setup
    model_dir = _save_model(tmp_path, tk, uniform=True)
    (rec,) = evaluate_models([model_dir], [text_file], window=WINDOW, show_progress=False)
    n_tokens = len(tk.encode(text, add_special_tokens=False).ids)
    vocab = tk.get_vocab_size()
    expected = n_tokens * math.log2(vocab) / len(text.encode("utf-8"))
    assert rec["bpb"] == pytest.approx(expected, rel=1e-6)


def test_format_table_lists_every_model_and_text(bos_setup):
    records = [
        {"model": "/m/a", "text": "/t/en.txt", "bpb": 1.23456},
        {"model": "/m/a", "text": "/t/py.txt", "bpb": 0.5},
        {"model": "/m/b", "text": "/t/en.txt", "bpb": 2.0},
    ]
    table = format_table(records)
    lines = table.splitlines()
    assert "en bpb" in lines[0] and "py bpb" in lines[0]
    assert "| /m/a | 1.235 | 0.500 |" in table
    assert "| /m/b | 2.000 | - |" in table


def test_input_errors_are_one_line(tmp_path, bos_setup):
    _, model_dir, text_file, _ = bos_setup
    with pytest.raises(InputError, match="missing.txt"):
        evaluate_models([model_dir], [tmp_path / "missing.txt"], show_progress=False)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_models([tmp_path / "nope"], [text_file], show_progress=False)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_text("{}")
    (no_tok / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="no tokenizer"):
        evaluate_models([no_tok], [text_file], show_progress=False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (pickled / name).write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match="pickle") as err:
        evaluate_models([pickled], [text_file], show_progress=False)
    assert "\n" not in str(err.value)


def test_cli_labels_the_table_and_draws_the_figure(tmp_path, bos_setup):
    """``evaluate --label --plot``: the names in the table, a PNG with a bar per model and text."""
    import json

    from click.testing import CliRunner

    from mergekit_tokenplug.cli import main

    _, model_dir, text_file, _ = bos_setup
    png, records = tmp_path / "bpb.png", tmp_path / "bpb.json"
    args = ["evaluate", str(model_dir), str(model_dir), "--text", str(text_file), "-q"]
    args += ["--label", "original", "--label", "healed", "--plot", str(png), "--json", str(records)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| original |" in result.output and "| healed |" in result.output
    assert f"figure: {png}" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert [r["label"] for r in json.loads(records.read_text())] == ["original", "healed"]
    bad = CliRunner().invoke(main, [*args[:6], "--label", "only-one"])
    assert bad.exit_code != 0 and "--label" in bad.output and "2 models" in bad.output
