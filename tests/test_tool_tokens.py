"""Tool tokens: prior scaling, row-only training (heal's loop on prompt/completion examples)
on a tiny Llama with a tiny byte-level BPE tokenizer built here, dataset generation and the
JSONL reader."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from accelerate import Accelerator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.heal.examples import encode_examples, example_scores
from mergekit_tokenplug.heal.train import LoopSettings, is_tied, train_rows
from mergekit_tokenplug.methods.tool import tool_input_rows, tool_prior
from mergekit_tokenplug.tooltokens import (
    add_tool_tokens,
    generate_arithmetic_dataset,
    init_tool_rows,
    pooled_hidden_states,
    read_jsonl,
)
from mergekit_tokenplug.tooltokens.data import CALCULATOR

DESCRIPTION = "Evaluates an arithmetic expression"


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [
        r["prompt"] + " " + r["completion"]
        for r in generate_arithmetic_dataset(200, seed=3, tool_token="")
    ]
    texts.append(DESCRIPTION)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _model(vocab: int, tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


def _train(model, tokenizer, ids, rows, *, steps: int, lr: float, lam: float) -> list[float]:
    """heal's loop (``--rows tool``) on prompt/completion examples, batch 4."""
    data = encode_examples(tokenizer, rows, set(ids), "train")
    mats = [model.get_input_embeddings().weight]
    if not is_tied(model):
        mats.append(model.get_output_embeddings().weight)
    settings = LoopSettings(steps=steps, lr=lr, lam=lam, batch_size=4, micro_batch=4, seed=0)
    return train_rows(model, mats, ids, data, settings, Accelerator(cpu=True), show_progress=False)


def _setup(tied: bool, init: str = "prior"):
    tokenizer = _tokenizer()
    model = _model(len(tokenizer), tied)
    ids = add_tool_tokens(model, tokenizer, [CALCULATOR])
    priors = init_tool_rows(model, tokenizer, ids, [DESCRIPTION], init=init, device="cpu")
    return model, tokenizer, ids, priors


def test_tool_prior_scaling():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(50, 16, generator=g) * torch.rand(50, 1, generator=g)
    pooled = torch.randn(3, 16, generator=g) * 7
    med = tool_prior(pooled, target, "median_norm")
    torch.testing.assert_close(
        med.norm(dim=-1), torch.full((3,), float(target.norm(dim=-1).median()))
    )
    sq = tool_prior(pooled, target, "sqrt_d")
    torch.testing.assert_close(sq.norm(dim=-1), torch.full((3,), 1 / math.sqrt(16)))
    # direction is the pooled state's
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(sq, pooled), torch.ones(3))
    with pytest.raises(InputError):
        tool_prior(pooled, torch.randn(5, 8), "median_norm")


def test_tool_input_rows_mean_and_fallback():
    base = torch.arange(12.0).view(6, 2)
    rows = tool_input_rows([[0, 2], [5], []], base)
    torch.testing.assert_close(rows[0], (base[0] + base[2]) / 2)
    torch.testing.assert_close(rows[1], base[5])
    torch.testing.assert_close(rows[2], base.mean(0))


def test_pooled_hidden_states_match_unpadded_final_norm_output():
    tokenizer = _tokenizer()
    model = _model(len(tokenizer), tied=False)
    texts = [DESCRIPTION, "What is 3 + 4?"]
    pooled = pooled_hidden_states(model, tokenizer, texts, "cpu")
    for i, t in enumerate(texts):
        ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            last = model.model(input_ids=ids).last_hidden_state  # after the final RMSNorm
        torch.testing.assert_close(pooled[i], last[0].mean(0), rtol=1e-4, atol=1e-5)


def test_prior_init_sets_rows():
    model, tokenizer, ids, priors = _setup(tied=False)
    head = model.get_output_embeddings().weight.detach()
    others = head[: ids[0]]
    # default scale: unit vector / sqrt(d)
    assert math.isclose(float(head[ids[0]].norm()), others.shape[1] ** -0.5, rel_tol=1e-5)
    pieces = tokenizer(DESCRIPTION, add_special_tokens=False)["input_ids"]
    emb = model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(emb[ids[0]], emb[pieces].mean(0))
    torch.testing.assert_close(priors["prior_out"][0], head[ids[0]])


def test_dataset_puts_tool_token_first_and_is_correct():
    rows = generate_arithmetic_dataset(30, seed=5)
    assert rows == generate_arithmetic_dataset(30, seed=5)
    assert rows != generate_arithmetic_dataset(30, seed=6)
    tokenizer = _tokenizer()
    (tid,) = add_tool_tokens(_model(len(tokenizer), False), tokenizer, [CALCULATOR])
    for r in rows:
        assert tokenizer(r["completion"], add_special_tokens=False)["input_ids"][0] == tid
        m = re.fullmatch(
            re.escape(CALCULATOR) + r"(\d+)([-+*])(\d+)</tool> = (-?\d+)", r["completion"]
        )
        a, op, b, res = int(m[1]), m[2], int(m[3]), int(m[4])
        assert res == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert f"{a} {op} {b}" in r["prompt"]


@pytest.mark.parametrize("tied", [False, True])
def test_learning_changes_only_tool_rows(tied):
    model, tokenizer, ids, _ = _setup(tied)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evals = encode_examples(tokenizer, generate_arithmetic_dataset(8, seed=2), set(ids), "eval")
    first = example_scores(model, evals, device="cpu")
    losses = _train(model, tokenizer, ids, generate_arithmetic_dataset(24, seed=1), steps=12, lr=0.1, lam=1e-2)
    after = model.state_dict()
    emb_key = "model.embed_tokens.weight"
    matrices = [emb_key, "lm_head.weight"]  # one shared tensor when tied
    for k, v in before.items():
        if k in matrices:
            mask = torch.ones(v.shape[0], dtype=torch.bool)
            mask[ids] = False
            assert torch.equal(after[k][mask], v[mask]), k
            assert not torch.equal(after[k][ids], v[ids]), k
        else:
            assert torch.equal(after[k], v), k
    assert is_tied(model) is tied
    assert all(p.grad is None for p in model.parameters())
    last = example_scores(model, evals, device="cpu")
    assert len(losses) == 12
    assert last["tool_logprob"] > first["tool_logprob"]
    assert 0.0 <= last["tool_acc"] <= 1.0 and last["tool_rank"] >= 1.0


def test_learning_is_deterministic_and_lam_zero_disables_regularizer():
    runs = []
    for lam in (1.0, 1.0, 0.0):
        model, tokenizer, ids, _ = _setup(tied=False, init="mean")
        _train(model, tokenizer, ids, generate_arithmetic_dataset(12, seed=1), steps=4, lr=0.05, lam=lam)
        runs.append(model.lm_head.weight[ids].clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_completion_loss_ignores_prompt_and_padding():
    tokenizer = _tokenizer()
    rows = [{"prompt": "Question: What is 2 + 3?", "completion": " 5"}, {"prompt": "Hi", "completion": " a longer answer here"}]
    ex = encode_examples(tokenizer, rows, set(), "data")
    for i, row in enumerate(rows):
        p = tokenizer(row["prompt"])["input_ids"]
        c = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        assert ex.labels[i].tolist() == [-100] * len(p) + c + [-100] * (ex.ids.shape[1] - len(p) - len(c))
        assert ex.mask[i].sum() == len(p) + len(c)
    with pytest.raises(InputError, match="data: row 2: empty prompt or completion"):
        encode_examples(tokenizer, [rows[0], {"prompt": "x", "completion": ""}], set(), "data")


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text(
        json.dumps({"prompt": "a", "completion": "b"})
        + "\n\n"
        + json.dumps({"prompt": "c", "completion": "d", "x": 1})
        + "\n"
    )
    assert read_jsonl(good) == [
        {"prompt": "a", "completion": "b"},
        {"prompt": "c", "completion": "d"},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n\n{not json\n")
    with pytest.raises(InputError, match=re.escape(f"{bad}:3: invalid JSON")):
        read_jsonl(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(
        InputError, match=re.escape(f"{missing}:1: missing or non-string key(s) completion")
    ):
        read_jsonl(missing)
    with pytest.raises(InputError, match="cannot read"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_tool_kernel_uses_prior_and_description_pieces():
    from mergekit_tokenplug.methods.base import EstimationProblem
    from mergekit_tokenplug.methods.tool import ToolParams, estimate_tool

    tokenizer = _tokenizer()
    model = _model(len(tokenizer), tied=False)
    pieces = [tokenizer(DESCRIPTION, add_special_tokens=False)["input_ids"]]
    inputs = {
        "target_texts": [DESCRIPTION],
        "target_pieces": pieces,
        "model_forward": lambda texts: pooled_hidden_states(model, tokenizer, texts, "cpu"),
    }
    head = model.lm_head.weight.detach()
    emb = model.model.embed_tokens.weight.detach()
    out = estimate_tool(
        EstimationProblem(
            base=head, anchor_ids=torch.arange(5), n_targets=1, role="output", **inputs
        ),
        ToolParams(),
    )
    pooled = pooled_hidden_states(model, tokenizer, [DESCRIPTION], "cpu")
    torch.testing.assert_close(out, tool_prior(pooled, head, "sqrt_d"))
    inp = estimate_tool(
        EstimationProblem(
            base=emb, anchor_ids=torch.arange(5), n_targets=1, role="input", **inputs
        ),
        ToolParams(),
    )
    torch.testing.assert_close(inp[0], emb[pieces[0]].mean(0))
