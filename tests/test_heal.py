"""``heal`` on a tiny transplant (SentencePiece Llama body, byte-level BPE tokenizer, both
built in the tests): only the chosen rows move, the regularizer's limit, determinism, a
2-process accelerate run against one process, and every bad input refused cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from test_distributed import launch
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from mergekit_tokenplug.cli import main
from mergekit_tokenplug.heal import run_heal
from mergekit_tokenplug.heal.adapter import DEFAULT_LORA
from mergekit_tokenplug.heal.defaults import (
    LM_TRAINING,
    TEACHER_TRAINING,
    TOOL_TRAINING,
    Training,
    training_defaults,
)
from mergekit_tokenplug.heal.rows import rows_to_train
from mergekit_tokenplug.heal.train import prox_toward
from mergekit_tokenplug.output.manifest import MANIFEST_NAME, expand_ranges, verify_manifest
from mergekit_tokenplug.surgery import transplant

pytestmark = pytest.mark.usefixtures("one_thread")
EMBED = "model.embed_tokens.weight"
FAST = dict(steps=3, seq_len=32, batch_size=2, lr=1e-2, quiet=True)


@pytest.fixture(scope="module")
def transplanted(zoo, tmp_path_factory):
    """A tied base given another tokenizer: the input of heal."""
    out = tmp_path_factory.mktemp("heal") / "transplanted"
    transplant(str(zoo.sp_tied), str(zoo.bl_untied), str(out), "mean", {}, quiet=True)
    return out


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def corpus(zoo) -> list[str]:
    return [str(zoo.corpus_dir / "*.txt")]


def test_manifest_records_the_estimated_and_byte_fallback_rows(zoo, transplanted):
    manifest = json.loads((transplanted / MANIFEST_NAME).read_text())
    rec = next(r for r in manifest["report"]["matrices"] if r["role"] == "input")
    estimated = expand_ranges(rec["row_ids"]["estimated"])
    assert len(estimated) == rec["estimated"] > 0
    assert rows_to_train(transplanted, "estimated", rec["rows"]) == estimated
    # byte-fallback copies: output tokens whose row came from the base's <0xNN> pieces,
    # i.e. single bytes the base only spells with a byte piece
    out_tok = AutoTokenizer.from_pretrained(transplanted)
    base_vocab = AutoTokenizer.from_pretrained(zoo.sp_tied).get_vocab()
    from_bytes = expand_ranges(rec["row_ids"]["byte_fallback"])
    assert from_bytes and not set(from_bytes) & set(estimated)
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}  # byte-level BPE alphabet
    for i in from_bytes:
        token = out_tok.convert_ids_to_tokens(i)
        assert len(token) == 1 and f"<0x{byte_of[token]:02X}>" in base_vocab
    new = rows_to_train(transplanted, "new", rec["rows"])
    assert new == sorted(estimated + from_bytes)


def test_only_the_chosen_rows_change_and_the_tied_model_is_untied(zoo, transplanted, tmp_path):
    out = tmp_path / "healed"
    summary = run_heal(
        str(transplanted), str(out), corpus(zoo), lam=0.0, rows="estimated", matrices="input",
        adapter="none", **FAST,
    )  # fmt: skip
    before, after = tensors(transplanted), tensors(out)
    chosen = rows_to_train(transplanted, "estimated", before[EMBED].shape[0])
    assert summary["rows"]["count"] == len(chosen) and summary["untied"]
    assert set(after) == set(before) | {"lm_head.weight"}
    for name, t in before.items():
        if name != EMBED:
            assert torch.equal(after[name], t), name
    # the output matrix is the transplanted (tied) one, untouched
    assert torch.equal(after["lm_head.weight"], before[EMBED])
    changed = (after[EMBED] != before[EMBED]).any(dim=1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(chosen)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert "tie_word_embeddings: false" in (out / "README.md").read_text()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["report"]["heal"]["heldout_after"]["bpb"] == summary["heldout_after"]["bpb"]
    assert verify_manifest(out) == []
    after_bpb, before_bpb = summary["heldout_after"]["bpb"], summary["heldout_before"]["bpb"]
    assert after_bpb != before_bpb


def test_an_output_rate_unties_and_moves_the_output_rows_on_their_own(zoo, transplanted, tmp_path):
    out = tmp_path / "healed"
    summary = run_heal(
        str(transplanted), str(out), corpus(zoo), lam=0.0, rows="estimated", matrices="both",
        output_lr=1e-4, **FAST,
    )  # fmt: skip
    before, after = tensors(transplanted), tensors(out)
    chosen = rows_to_train(transplanted, "estimated", before[EMBED].shape[0])
    assert summary["untied"] and summary["rows"]["matrices"] == ["input", "output"]
    assert summary["output_lr"] == 1e-4
    moved_in = (after[EMBED] - before[EMBED])[chosen].abs().max()
    moved_out = (after["lm_head.weight"] - before[EMBED])[chosen].abs().max()
    # Adam steps are about the rate in size: the output rows move about a hundredth as far
    assert 0 < moved_out < moved_in / 20
    others = [i for i in range(before[EMBED].shape[0]) if i not in set(chosen)]
    assert torch.equal(after["lm_head.weight"][others], before[EMBED][others])


def test_defaults_follow_the_rows_and_the_objective():
    t, lm = TEACHER_TRAINING, LM_TRAINING
    assert training_defaults("all", True) == t and t.adapter == "lora"
    assert training_defaults("new", False) == lm and lm.adapter == "none"
    assert training_defaults("tool", True) == training_defaults("tool", False) == TOOL_TRAINING
    # a given option wins; an output rate alone trains the output rows; input rows alone
    # take no output rate; both matrices without an output rate move at the input rate
    assert training_defaults("all", True, lr=1e-3) == Training("both", 1e-3, t.output_lr, "lora")
    assert training_defaults("all", False, output_lr=1e-4) == Training("both", lm.lr, 1e-4, "none")
    assert training_defaults("all", True, matrices="input", adapter="none") == Training(
        "input", t.lr, None, "none"
    )
    assert training_defaults("all", False, matrices="both") == Training("both", lm.lr, None, "none")


def test_a_default_heal_distils_into_both_matrices_and_a_merged_adapter(
    zoo, transplanted, tmp_path
):
    fast = {k: v for k, v in FAST.items() if k != "lr"}
    taught = run_heal(str(transplanted), str(tmp_path / "taught"), corpus(zoo), **fast)
    assert taught["teacher"]["path"] == str(Path(zoo.sp_tied).resolve())
    assert taught["objective"]["next_piece"] == 1.0 and taught["objective"]["lm"] == 1.0
    assert taught["rows"]["matrices"] == ["input", "output"] and taught["untied"]
    t = TEACHER_TRAINING
    assert (taught["lr"], taught["output_lr"]) == (t.lr, t.output_lr)
    assert taught["adapter"]["merged"] and taught["adapter"]["rank"] == DEFAULT_LORA.rank
    before, after = tensors(transplanted), tensors(tmp_path / "taught")
    assert not torch.equal(after["lm_head.weight"], before[EMBED])
    card = (tmp_path / "taught" / "README.md").read_text()
    assert "the output rows were trained on their own (peak lr 0.0001" in card
    assert "only the input rows were trained" not in card  # what the card said before
    changed = {
        name for name, v in before.items() if name in after and not torch.equal(after[name], v)
    }
    assert any(name.endswith("q_proj.weight") for name in changed)  # the merged adapter
    plain = run_heal(
        str(transplanted), str(tmp_path / "plain"), corpus(zoo), teacher="none", **fast
    )
    assert plain["teacher"] is None and plain["rows"]["matrices"] == ["input"]
    assert plain["lr"] == LM_TRAINING.lr and "output_lr" not in plain
    assert plain["adapter"] is None


def test_a_huge_lambda_keeps_the_rows_at_their_estimate(zoo, transplanted, tmp_path):
    out = tmp_path / "healed"
    run_heal(str(transplanted), str(out), corpus(zoo), lam=1e12, rows="estimated", **FAST)
    assert torch.equal(tensors(out)[EMBED], tensors(transplanted)[EMBED])


def test_reruns_are_byte_identical(zoo, transplanted, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"healed{i}"
        run_heal(str(transplanted), str(out), corpus(zoo), rows="new", seed=5, **FAST)
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_two_processes_match_one_with_the_same_global_batch(zoo, transplanted, tmp_path):
    results = []
    for nproc in (1, 2):
        out, summary = tmp_path / f"out{nproc}", tmp_path / f"summary{nproc}.json"
        args = ["heal", str(transplanted), str(out), "--corpus", corpus(zoo)[0], "--steps", "3"]
        args += [
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--lr",
            "1e-2",
            "-q",
            "--json",
            str(summary),
        ]
        proc = launch(nproc, args, {}, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append((json.loads(summary.read_text()), tensors(out)[EMBED]))
    (one, rows_one), (two, rows_two) = results
    assert two["processes"] == 2 and one["processes"] == 1
    assert one["rows"] == two["rows"]
    assert abs(one["heldout_after"]["loss"] - two["heldout_after"]["loss"]) < 1e-3
    assert one["heldout_after"]["loss"] != one["heldout_before"]["loss"]
    assert torch.allclose(rows_one, rows_two, atol=1e-4)


def _bad_inputs(zoo, transplanted, tmp):
    empty, binary, short = tmp / "empty.txt", tmp / "blob.txt", tmp / "short.txt"
    empty.write_text("")
    binary.write_bytes(b"PK\x03\x04\x00\x00binary\x00")
    short.write_text("one short line\n" * 3)
    one_row = tmp / "one.jsonl"
    one_row.write_text('{"prompt": "a", "completion": "b"}\n')
    good = ["--corpus", corpus(zoo)[0]]
    m = str(transplanted)
    return {
        "empty corpus": ([m, "--corpus", str(empty)], "empty.txt: is empty"),
        "no match": ([m, "--corpus", str(tmp / "none*.txt")], "matches no file"),
        "binary": ([m, "--corpus", str(binary)], "blob.txt: is a binary file"),
        "short": ([m, "--corpus", str(short)], "shorter than one sequence"),
        "no manifest": ([str(zoo.sp_untied), *good, "--rows", "new"], "pass --rows all"),
        "zero steps": ([m, *good, "--steps", "0"], "--steps: must be >= 1"),
        "mixed corpus": ([m, *good, "--corpus", str(one_row)], "mixes .jsonl and text files"),
        "one jsonl row": ([m, "--corpus", str(one_row)], "has 1 usable rows, 1 of them held out"),
        "no tool tokens": ([m, *good, "--rows", "tool"], "no --tool-token was given"),
        "tool token, other rows": ([m, *good, "--tool-token", "x"], "only --rows tool trains"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty corpus",
        "no match",
        "binary",
        "short",
        "no manifest",
        "zero steps",
        "mixed corpus",
        "one jsonl row",
        "no tool tokens",
        "tool token, other rows",
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(zoo, transplanted, tmp_path, case):
    args, expected = _bad_inputs(zoo, transplanted, tmp_path)[case]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["heal", args[0], str(out), *args[1:], "-q"])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_the_regularizer_step_shrinks_the_displacement_by_lr_times_lambda():
    start = torch.zeros(3, 4)
    rows = torch.full((3, 4), 0.5)  # ||rows - start|| = 0.5 * sqrt(12)
    norm = float(torch.linalg.norm(rows))
    prox_toward(rows, start, 0.25)
    assert float(torch.linalg.norm(rows)) == pytest.approx(norm - 0.25)
    assert torch.allclose(rows / rows.norm(), torch.full((3, 4), 12**-0.5))  # same direction
    prox_toward(rows, start, 100.0)
    assert torch.equal(rows, start)


def test_the_default_trains_the_whole_input_matrix_and_needs_no_manifest(zoo, tmp_path):
    out = tmp_path / "healed"
    summary = run_heal(str(zoo.sp_untied), str(out), corpus(zoo), lam=0.0, **FAST)
    before, after = tensors(zoo.sp_untied), tensors(out)
    assert summary["rows"]["which"] == "all" and summary["rows"]["count"] == before[EMBED].shape[0]
    changed = (after[EMBED] != before[EMBED]).any(dim=1).sum()
    assert changed > 0 and all(torch.equal(after[k], v) for k, v in before.items() if k != EMBED)
