"""Chat template and special tokens on purpose (issue 20, item 1).

The pair reproduces Gemma-3 base + SmolLM2-Instruct: a base model whose tokenizer adds BOS
and has no chat template, a donor whose BOS is the ChatML turn marker ``<|im_start|>``, whose
unknown token is its document separator ``<|endoftext|>`` and whose template carries a
default system prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from click.testing import CliRunner
from helpers import tensors
from models_factory import build_llama
from tokenizers import processors
from tokenizers_factory import CHATML_TEMPLATE, build_byte_level_bpe, build_sentencepiece_bpe

from mergekit_tokenplug.cli import main

EMB = "model.embed_tokens.weight"
SYSTEM = "You are a helpful AI assistant named Donny"
DONOR_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MSGS = [{"role": "user", "content": "Hello there"}]


def _adds_bos(tok):
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    return tok


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chat_pair")
    base_tok = _adds_bos(build_sentencepiece_bpe(root / "base_tok", vocab_size=700, pad="<pad>"))
    base = build_llama(root / "base", base_tok, seed=41)
    donor_tok = build_byte_level_bpe(
        root / "donor_tok",
        vocab_size=600,
        bos="<|im_start|>",
        eos="<|im_end|>",
        unk="<|endoftext|>",
        chat_template=DONOR_TEMPLATE,
    )
    donor = build_llama(root / "donor", donor_tok, seed=42)
    return base, donor


def _transplant(base: Path, donor: Path, out: Path, *extra: str) -> dict:
    args = ["transplant", str(base), str(donor), str(out), "-m", "mean", "-q", *extra]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads((out / "tokenplug_manifest.json").read_text())


def _load(path: Path):
    return transformers.AutoTokenizer.from_pretrained(str(path))


def test_default_keeps_the_base_convention_no_donor_template(pair, tmp_path):
    base, donor = pair
    assert _load(base).chat_template is None and SYSTEM in _load(donor).chat_template
    out = tmp_path / "out"
    manifest = _transplant(base, donor, out)
    tok = _load(out)
    assert tok.chat_template is None  # never the donor's system prompt by accident
    assert not (out / "chat_template.jinja").exists()
    assert manifest["chat_template"]["mode"] == "base"
    card = (out / "README.md").read_text()
    assert "Chat template: none" in card and SYSTEM not in card.split("## Recipe")[0]


def test_source_template_has_no_doubled_bos_and_generates(pair, tmp_path):
    base, donor = pair
    out = tmp_path / "out"
    manifest = _transplant(base, donor, out, "--chat-template", "source")
    tok = _load(out)
    text = tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True)
    assert SYSTEM in text  # asked for: the donor's template, system prompt included
    ids = tok(text, return_tensors="pt")["input_ids"]
    base_tok = _load(base)
    # one BOS: the base model's own BOS token and row, then the turn marker
    assert tok.bos_token == base_tok.bos_token
    assert ids[0, 0] == tok.bos_token_id and ids[0, 1] != tok.bos_token_id
    assert ids[0, 1] == tok.convert_tokens_to_ids("<|im_start|>")
    emb, base_emb = tensors(out)[EMB], tensors(base)[EMB]
    assert torch.equal(emb[tok.bos_token_id], base_emb[base_tok.bos_token_id])
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3 or int(gen[0, -1]) == tok.eos_token_id
    record = manifest["chat_template"]
    assert record["mode"] == "source" and record["doubled_bos"] is False
    assert record["bos_token"] == base_tok.bos_token


def test_roles_never_land_on_untrained_rows(pair, tmp_path):
    """The donor's <|endoftext|> holds only the unk role: the base's <unk> row is untrained,
    so it is estimated; the mapping table (plan, card, manifest) says where each row is from."""
    base, donor = pair
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["transplant", "--dry-run", str(base), str(donor), str(out), "-m", "mean"]
    )
    assert res.exit_code == 0, res.output
    assert "special '<|endoftext|>'" in res.output and "untrained" in res.output
    manifest = _transplant(base, donor, out)
    ((model, table),) = manifest["report"]["special_tokens"].items()
    rows = {r["token"]: r for r in table["rows"]}
    assert rows["<|endoftext|>"]["source"].startswith("estimated by mean")
    assert "`<unk>` is untrained" in rows["<|endoftext|>"]["source"]
    assert "(role eos)" in rows["<|im_end|>"]["source"]
    tok, base_tok = _load(out), _load(base)
    emb, base_emb = tensors(out)[EMB], tensors(base)[EMB]
    unk_row = base_emb[base_tok.unk_token_id]
    assert not torch.equal(emb[tok.convert_tokens_to_ids("<|endoftext|>")], unk_row)
    card = (out / "README.md").read_text()
    assert "| `<\\|endoftext\\|>` |" in card and "untrained" in card


def test_base_template_markers_keep_the_base_rows(zoo, tmp_path):
    """A base with a ChatML template (its markers are special tokens) onto a donor without
    them: the template stays, its markers are added with the base's own rows."""
    assert _load(zoo.bl_untied).chat_template == CHATML_TEMPLATE
    assert "<|im_start|>" not in _load(zoo.sp_untied).get_vocab()
    out = tmp_path / "out"
    _transplant(zoo.bl_untied, zoo.sp_untied, out)
    tok, base_tok = _load(out), _load(zoo.bl_untied)
    assert tok.chat_template == CHATML_TEMPLATE
    emb, base_emb = tensors(out)[EMB], tensors(zoo.bl_untied)[EMB]
    for marker in ("<|im_start|>", "<|im_end|>"):
        assert tok.added_tokens_decoder[tok.convert_tokens_to_ids(marker)].special
        assert torch.equal(
            emb[tok.convert_tokens_to_ids(marker)], base_emb[base_tok.convert_tokens_to_ids(marker)]
        )
    text = tok.apply_chat_template(MSGS, tokenize=False)
    assert tok.convert_ids_to_tokens(tok(text)["input_ids"])[0] == "<|im_start|>"
