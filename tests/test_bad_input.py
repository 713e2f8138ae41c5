"""Every bad input, one row each: what is given, the fragment the one-line error must hold.

Each row runs through the real command line (``mergekit-tokenplug transplant`` or stock
``mergekit-yaml``; in-process through click where that is the same code path, a subprocess
where the stock entry point or the environment matters) and must give: a non-zero exit, one
``Error:`` line holding the fragments, no traceback, OUT exactly as it was before (absent, or
with its old content), no temporary directory left, and every input unchanged (hashed before
and after). Inputs are copies of tiny models built in the tests, broken in one way each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from models_factory import build_llama
from safetensors.torch import load_file, save_file

from mergekit_tokenplug.cli import main

BIN = Path(sys.executable).parent


class Env:
    """One case's directory: broken copies of the zoo's models under ``in/``, OUT beside it."""

    def __init__(self, zoo, root: Path, wide: Path):
        self.zoo, self.root, self.wide = zoo, root, wide
        self.inputs = root / "in"
        self.inputs.mkdir()
        self.out = root / "out"
        self.env: dict[str, str] = {}

    def copy(self, src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, self.inputs / name))

    def transplant(self, base: Path, donor: Path, *extra: str, k: str | None = "4") -> list[str]:
        return ["transplant", str(base), str(donor), str(self.out), "-q", *extra] + (
            ["--k", k] if k else []
        )

    def recipe(self, tokenizer: dict, models: list[Path] | None = None, **top) -> list[str]:
        data = {
            "merge_method": "passthrough",
            "models": [{"model": str(m)} for m in (models or [self.zoo.sp_untied])],
            "tokenizer": tokenizer,
            **top,
        }
        path = self.inputs / "recipe.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        return [str(path), str(self.out)]

    def raw_recipe(self, text: str) -> list[str]:
        path = self.inputs / "recipe.yaml"
        path.write_text(text, encoding="utf-8")
        return [str(path), str(self.out)]

    def heal(self, model: Path, *extra: str, corpus: str | None = None) -> list[str]:
        """``heal`` for one step on the zoo's texts (every check runs before training)."""
        text = corpus or str(self.zoo.corpus_dir / "*.txt")
        fast = ["--steps", "1", "--seq-len", "16", "-q"]
        return ["heal", str(model), str(self.out), "--corpus", text, *fast, *extra]

    def model(self, change: Callable[[Path], object] = lambda d: None) -> Path:
        """A copy of the zoo's untied SentencePiece model under ``in/``, changed one way."""
        return base_with(self, change)

    def file(self, name: str, data: str | bytes) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        return path

    def tool_rows(self, completion: str) -> Path:
        rows = [{"prompt": f"What is {i}?", "completion": completion} for i in range(8)]
        return self.file("tool.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------ how inputs are broken


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def donor_with(env: Env, change: Callable[[Path], object], src: Path | None = None) -> Path:
    donor = env.copy(src or env.zoo.bl_untied, "donor")
    change(donor)
    return donor


def base_with(env: Env, change: Callable[[Path], object]) -> Path:
    base = env.copy(env.zoo.sp_untied, "base")
    change(base)
    return base


def truncate(f: Path, keep: int) -> None:
    f.write_bytes(f.read_bytes()[:keep])


def weights(d: Path) -> Path:
    return d / "model.safetensors"


def offsets_past_end(d: Path) -> None:
    raw = weights(d).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9
    blob = json.dumps(header).encode()
    weights(d).write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def shard_index_missing_shard(d: Path) -> None:
    tensors = load_file(weights(d))
    weights(d).unlink()
    save_file(tensors, str(d / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00002.safetensors" for k in tensors}}
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def index_pointing_at(shard: Callable[[Path], str]) -> Callable[[Path], None]:
    """An index whose weight_map names ``shard(model_dir)`` for every tensor (the weights are
    put there, so only the path is wrong)."""

    def change(d: Path) -> None:
        tensors = load_file(weights(d))
        target = d / shard(d) if not os.path.isabs(shard(d)) else Path(shard(d))
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(target), metadata={"format": "pt"})
        weights(d).unlink()
        index = {"metadata": {}, "weight_map": {k: shard(d) for k in tensors}}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))

    return change


def nan_in(name: str) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        tensors = load_file(weights(d))
        tensors[name].view(-1)[1] = float("nan")
        save_file(tensors, str(weights(d)), metadata={"format": "pt"})

    return change


def to_float16(d: Path) -> None:
    tensors = {k: v.half() for k, v in load_file(weights(d)).items()}
    save_file(tensors, str(weights(d)), metadata={"format": "pt"})
    edit_json(d / "config.json", lambda c: c.update(dtype="float16", torch_dtype="float16"))


def manifest(report: object) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        (d / "tokenplug_manifest.json").write_text(json.dumps({"report": report}))

    return change


def estimated(runs: object) -> Callable[[Path], None]:
    return manifest({"matrices": [{"role": "input", "row_ids": {"estimated": runs}}]})


def secret_link(env: Env) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        secret = env.file("secret.txt", "private key")
        secret.chmod(0o600)
        (d / "extra").symlink_to(secret)

    return change


def multi_out_on_a_stage(env: Env) -> list[str]:
    stage = {
        "name": "aligned",
        "merge_method": "passthrough",
        "models": [{"model": str(env.zoo.sp_untied)}],
        "tokenizer": {"source": str(env.zoo.bl_untied), "approximation": {"method": "mean"}},
    }
    final = {"merge_method": "passthrough", "models": [{"model": "aligned"}]}
    path = env.inputs / "multi.yaml"
    path.write_text(yaml.safe_dump_all([stage, final]), encoding="utf-8")
    stages = env.root / "stages"
    env.out = stages / "aligned"
    return [str(path), "--intermediate-dir", str(stages), "--out-path", str(env.out)]


LATIN1 = "café au lait ".encode("latin-1") * 50


def out_with(env: Env, *files: str) -> Path:
    """OUT made beforehand, holding ``files`` (each with its own name as content)."""
    for name in files:
        (env.out / name).parent.mkdir(parents=True, exist_ok=True)
        (env.out / name).write_text(name)
    return env.out


def drop_tensor(name: str) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        tensors = load_file(weights(d))
        del tensors[name]
        save_file(tensors, str(weights(d)), metadata={"format": "pt"})

    return change


def nan_row(d: Path) -> None:
    tensors = load_file(weights(d))
    tensors["model.embed_tokens.weight"][5, 3] = float("nan")
    save_file(tensors, str(weights(d)), metadata={"format": "pt"})


def to_pickle(d: Path, keep_extra_safetensors: bool = False) -> None:
    tensors = load_file(weights(d))
    weights(d).unlink()
    torch.save(tensors, d / "pytorch_model.bin")
    if keep_extra_safetensors:  # a file mergekit never reads must not decide anything
        save_file({"x": torch.zeros(2)}, str(d / "extra.safetensors"))


def huge_row(d: Path) -> None:
    tensors = load_file(weights(d))
    tensors["model.embed_tokens.weight"][7, 0] = 1e6  # finite in float32, Inf in float16
    save_file(tensors, str(weights(d)), metadata={"format": "pt"})


def duplicate_id(d: Path) -> None:
    def change(data: dict) -> None:
        vocab = data["model"]["vocab"]
        first, second = list(vocab)[100:102]
        vocab[second] = vocab[first]

    edit_json(d / "tokenizer.json", change)


def empty_vocab(d: Path) -> None:
    def change(data: dict) -> None:
        data["model"]["vocab"], data["model"]["merges"] = {}, []

    edit_json(d / "tokenizer.json", change)


def foreign_tokenizer(env: Env) -> Callable[[Path], None]:
    """The 700-id SentencePiece tokenizer on the 602-row donor: ids past its rows."""

    def change(d: Path) -> None:
        for f in d.glob("tokenizer*"):
            f.unlink()
        (d / "chat_template.jinja").unlink(missing_ok=True)
        for f in env.zoo.tok_sp_only.glob("*"):
            shutil.copy(f, d / f.name)

    return change


def set_key(file: str, key: str, value) -> Callable[[Path], None]:
    return lambda d: edit_json(d / file, lambda data: data.__setitem__(key, value))


def tool_on_existing(env: Env) -> list[str]:
    tool = {"source": {"kind": "tool", "name": "search", "description": "searches the web"}}
    return env.recipe(
        {"source": str(env.zoo.bl_untied), "tokens": {"<|endoftext|>": tool}},
    )


def union_of_widths(env: Env) -> list[str]:
    return env.recipe(
        {"source": "union", "approximation": {"method": "omp", "k": 4}},
        models=[env.zoo.bl_untied, env.wide],
        base_model=str(env.zoo.bl_untied),
    )


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Env], list[str]]  # makes the inputs, returns the command's arguments
    expect: tuple[str, ...]  # fragments of the one Error: line
    entry: str = "transplant"  # transplant | mergekit-yaml (in-process) | subprocess


Z = Env  # short alias for the lambdas below
CASES = [
    # recipe and parameters
    Case("unknown method", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-m", "nope"),
         ("tokenizer.approximation.method", "nope", "omp")),
    Case("unknown parameter", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-p", "kk=3"),
         ("kk", "unknown parameter")),
    Case("ill-typed parameter", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-p", "k=many"),
         ("k",)),
    Case("-p value not YAML", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-p", "k=[1,"),
         ("--param k", "not a YAML value")),
    Case("--k and -p k disagree", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-p", "k=8"),
         ("--k", "disagree")),
    Case("k: true", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-p", "k=true", k=None),
         ("k", "not a boolean")),
    Case("cw2v epochs: 0", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-m", "cw2v", "-p", f"corpus=[{e.zoo.corpus_dir}/*.txt]", "-p", "epochs=0"),
         ("epochs", "greater than or equal to 1")),
    Case("pad_to_multiple_of: 0", lambda e: e.recipe({"source": str(e.zoo.bl_untied), "pad_to_multiple_of": 0, "approximation": {"method": "mean"}}),
         ("tokenizer.pad_to_multiple_of", "positive"), "mergekit-yaml"),
    Case("pad_to_multiple_of: -8", lambda e: e.recipe({"source": str(e.zoo.bl_untied), "pad_to_multiple_of": -8, "approximation": {"method": "mean"}}),
         ("tokenizer.pad_to_multiple_of", "positive"), "mergekit-yaml"),
    Case("values that overflow float16", lambda e: e.transplant(base_with(e, huge_row), e.zoo.bl_untied, "--dtype", "float16"),
         ("overflows float16", "rows [7]")),
    Case("k larger than the shared set", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, k="100000"),
         ("tokenizer.approximation.k", "shared tokens")),
    Case("unknown device", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "--device", "tpu"),
         ("--device", "tpu", "expected cpu")),
    Case("unknown dtype", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "--dtype", "float99"),
         ("dtype", "float99", "expected bfloat16")),
    Case("--json not writable", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "--json", str(e.root / "no" / "s.json")),
         ("--json", "cannot write")),
    Case("malformed YAML", lambda e: e.raw_recipe("merge_method: passthrough\nmodels: [\n  - model: x\n"),
         ("recipe.yaml:", "malformed YAML"), "subprocess"),
    Case("ill-typed parameter in a recipe", lambda e: e.recipe({"source": str(e.zoo.bl_untied), "approximation": {"method": "omp", "k": "lots"}}),
         ("recipe.yaml", "k"), "subprocess"),
    Case("tool token replacing an existing token", tool_on_existing,
         ("tokenizer.tokens.<|endoftext|>", "force: true"), "mergekit-yaml"),
    Case("tool token with a bad scale", lambda e: e.recipe({"source": "base", "tokens": {"<tool_x>": {"source": {"kind": "tool", "name": "x", "description": "does x", "scale": "huge"}}}}, models=[e.zoo.bl_untied]),
         ("recipe.yaml", "tokenizer.tokens.<tool_x>.source.scale", "'sqrt_d' or 'median_norm'"), "subprocess"),
    Case("union of different widths", union_of_widths,
         ("hidden size 32", "48"), "mergekit-yaml"),
    # paths and the output directory
    Case("missing base", lambda e: e.transplant(e.root / "nowhere", e.zoo.bl_untied),
         ("does not exist",)),
    Case("OUT not empty", lambda e: (e.out.mkdir(), (e.out / "keep.txt").write_text("mine"), e.transplant(e.zoo.sp_untied, e.zoo.bl_untied))[-1],
         ("not empty", "--overwrite")),
    Case("OUT is a file", lambda e: (e.out.write_text("mine"), e.transplant(e.zoo.sp_untied, e.zoo.bl_untied))[-1],
         ("not a directory",)),
    Case("OUT's parent is a file", lambda e: (setattr(e, "out", e.inputs / "f" / "out"), (e.inputs / "f").write_text("x"), e.transplant(e.zoo.sp_untied, e.zoo.bl_untied))[-1],
         ("output path", "writable parent")),
    Case("OUT is the base, with --overwrite", lambda e: (setattr(e, "out", e.copy(e.zoo.sp_untied, "base")), e.transplant(e.out, e.zoo.bl_untied, "--overwrite"))[-1],
         ("output path", "input", "even with --overwrite")),
    Case("OUT inside the donor", lambda e: (setattr(e, "out", e.copy(e.zoo.bl_untied, "donor") / "out"), e.transplant(e.zoo.sp_untied, e.inputs / "donor"))[-1],
         ("output path", "input")),
    Case("OUT contains the base, with --overwrite", lambda e: (setattr(e, "out", e.inputs), e.transplant(e.copy(e.zoo.sp_untied, "base"), e.zoo.bl_untied, "--overwrite"))[-1],
         ("output path", "input")),
    # weights
    Case("pickle only", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, to_pickle)),
         ("pickle", "--allow-pickle")),
    Case("pickle beside an unread safetensors", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, lambda d: to_pickle(d, True))),
         ("pytorch_model.bin", "--allow-pickle")),
    Case("truncated safetensors", lambda e: e.transplant(base_with(e, lambda d: truncate(weights(d), 4000)), e.zoo.bl_untied),
         ("model.safetensors", "expected a complete safetensors")),
    Case("random bytes as safetensors", lambda e: e.transplant(base_with(e, lambda d: weights(d).write_bytes(os.urandom(5000))), e.zoo.bl_untied),
         ("model.safetensors", "safetensors")),
    Case("empty safetensors", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, lambda d: weights(d).write_bytes(b""))),
         ("tokenizer.source", "model.safetensors", "0 bytes")),
    Case("header offsets past the end", lambda e: e.transplant(base_with(e, offsets_past_end), e.zoo.bl_untied),
         ("data offsets", "outside")),
    Case("index names a missing shard", lambda e: e.transplant(base_with(e, shard_index_missing_shard), e.zoo.bl_untied),
         ("model-00002-of-00002.safetensors", "does not exist")),
    Case("no embedding tensor", lambda e: e.transplant(base_with(e, drop_tensor("model.embed_tokens.weight")), e.zoo.bl_untied),
         ("model.embed_tokens.weight", "expected a complete checkpoint")),
    Case("NaN in the base", lambda e: e.transplant(base_with(e, nan_row), e.zoo.bl_untied),
         ("NaN", "rows [5]")),
    Case("NaN in the donor", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, nan_row)),
         ("NaN", "rows [5]")),
    Case("donor rows disagree with its config", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, set_key("config.json", "vocab_size", 607))),
         ("tokenizer.source", "rows", "vocab_size 607")),
    Case("base rows disagree with its config", lambda e: e.transplant(base_with(e, set_key("config.json", "vocab_size", 707)), e.zoo.bl_untied),
         ("models:", "rows", "vocab_size 707")),
    # configs and tokenizers
    Case("malformed config.json", lambda e: e.transplant(base_with(e, lambda d: truncate(d / "config.json", 40)), e.zoo.bl_untied),
         ("config.json", "not valid JSON")),
    Case("config.json unreadable", lambda e: e.transplant(base_with(e, lambda d: ((d / "config.json").unlink(), (d / "config.json").mkdir())), e.zoo.bl_untied),
         ("config.json", "cannot read")),
    Case("remote code in config", lambda e: e.transplant(base_with(e, set_key("config.json", "auto_map", {"AutoModel": "x.Y"})), e.zoo.bl_untied),
         ("config.json", "auto_map")),
    Case("remote code in tokenizer config", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, set_key("tokenizer_config.json", "auto_map", {"AutoTokenizer": ["x.T", None]}))),
         ("tokenizer_config.json", "auto_map")),
    Case("donor without a tokenizer", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, lambda d: [f.unlink() for f in d.glob("tokenizer*")])),
         ("tokenizer.source", "no tokenizer")),
    Case("truncated tokenizer.json", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, lambda d: truncate(d / "tokenizer.json", 500))),
         ("tokenizer.json", "not valid JSON")),
    Case("duplicate ids in tokenizer.json", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, duplicate_id)),
         ("tokenizer.json", "gives id")),
    Case("donor ids past its rows", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, foreign_tokenizer(e))),
         ("tokenizer.source", "past the 602 rows")),
    Case("donor special token not in its vocab", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, set_key("tokenizer_config.json", "eos_token", "<|nope|>"))),
         ("tokenizer.source", "eos_token '<|nope|>'", "not in its vocabulary")),
    Case("donor with an empty vocabulary", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, empty_vocab)),
         ("tokenizer.source", "empty vocabulary")),
]
# Every command that writes runs the same guards (issue cases 1-15): heal, learn-tool-tokens,
# evaluate, compare and the mergekit-yaml path as transplant.
CASES += [
    # 1: OUT against the inputs, symlinks resolved, even with --overwrite
    Case("heal: OUT is MODEL, with --overwrite", lambda e: (m := e.model(), setattr(e, "out", m), e.heal(m, "--overwrite"))[-1],
         ("output path", "input", "even with --overwrite")),
    Case("heal: OUT a symlink to MODEL", lambda e: (m := e.model(), e.out.symlink_to(m), e.heal(m, "--overwrite"))[-1],
         ("output path", "input")),
    Case("heal: OUT is MODEL's parent, with --overwrite", lambda e: (m := e.model(), setattr(e, "out", e.inputs), e.heal(m, "--overwrite"))[-1],
         ("output path", "input")),
    Case("heal: OUT inside MODEL", lambda e: (m := e.model(), setattr(e, "out", m / "healed"), e.heal(m))[-1],
         ("output path", "input")),
    Case("learn-tool-tokens: OUT is MODEL", lambda e: (m := e.copy(e.zoo.bl_untied, "m"), setattr(e, "out", m), ["learn-tool-tokens", str(m), str(e.tool_rows("<|im_start|> 4")), str(m), "--tool-token", "<|im_start|>", "--steps", "1", "-q", "--overwrite"])[-1],
         ("output path", "input")),
    # 2: a plugin recipe into an OUT holding weights it would not replace (other files are kept)
    Case("mergekit-yaml: OUT holds other weights", lambda e: (out_with(e, "model-00001-of-00002.safetensors", "notes.txt"), e.recipe({"source": str(e.zoo.bl_untied), "approximation": {"method": "mean"}}))[-1],
         ("output path", "weight files", "model-00001-of-00002.safetensors"), "mergekit-yaml"),
    # 3: --overwrite never removes a file the run reads
    Case("heal: corpus inside OUT, with --overwrite", lambda e: (out_with(e, "my.txt"), (e.out / "my.txt").write_text((e.zoo.corpus_dir / "part0.txt").read_text()), e.heal(e.model(), "--overwrite", corpus=str(e.out / "my.txt")))[-1],
         ("output path", "input", "my.txt")),
    Case("cw2v corpus inside OUT, with --overwrite", lambda e: (out_with(e, "c.txt"), e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-m", "cw2v", "-p", f"corpus=[{e.out / 'c.txt'}]", "--overwrite", k=None))[-1],
         ("output path", "input", "c.txt")),
    # 4: non-finite weights and learning rates
    Case("heal: NaN in a frozen tensor", lambda e: e.heal(e.model(nan_in("model.norm.weight"))),
         ("MODEL", "model.norm.weight", "NaN")),
    Case("heal: --lr inf", lambda e: e.heal(e.zoo.sp_untied, "--lr", "inf"),
         ("--lr", "finite")),
    Case("heal: --output-lr 0", lambda e: e.heal(e.zoo.sp_untied, "--matrices", "both", "--output-lr", "0"),
         ("--output-lr", "> 0")),
    Case("heal: --output-lr with --matrices input",
         lambda e: e.heal(e.zoo.sp_untied, "--matrices", "input", "--output-lr", "1e-4"),
         ("--output-lr", "--matrices input", "expected --matrices both")),
    # 5: a side file linking out of MODEL
    Case("heal: symlinked side file", lambda e: e.heal(e.model(secret_link(e))),
         ("MODEL", "extra", "symbolic link", "outside the model folder")),
    # 6: shard paths confined to the model folder
    Case("index names a shard outside the folder", lambda e: e.transplant(base_with(e, index_pointing_at(lambda d: "../victim/private.safetensors")), e.zoo.bl_untied),
         ("model.safetensors.index.json", "../victim/private.safetensors", "outside the model folder")),
    Case("index names an absolute shard path", lambda e: e.transplant(base_with(e, index_pointing_at(lambda d: str(d.parent / "abs.safetensors"))), e.zoo.bl_untied),
         ("abs.safetensors", "outside the model folder")),
    # 9: a tampered manifest, named
    Case("heal: negative row ids in the manifest", lambda e: e.heal(e.model(estimated([[-5, -1]])), "--rows", "estimated"),
         ("tokenplug_manifest.json", "row ids [[-5, -1]]")),
    Case("heal: row ids past the matrix", lambda e: e.heal(e.model(estimated([[0, 10**12]])), "--rows", "estimated"),
         ("tokenplug_manifest.json", "runs of rows 0..")),
    Case("heal: ill-typed manifest records", lambda e: e.heal(e.model(manifest({"matrices": ["x"]})), "--rows", "estimated"),
         ("tokenplug_manifest.json", "records no estimated row ids")),
    # 10: what fails late now fails first
    Case("heal: --json not writable", lambda e: e.heal(e.zoo.sp_untied, "--json", str(e.root / "no" / "s.json")),
         ("--json", "cannot write")),
    Case("heal: model card not UTF-8", lambda e: e.heal(e.model(lambda d: (d / "README.md").write_bytes(b"caf\xe9\n"))),
         ("README.md", "not UTF-8")),
    Case("heal: corrupt manifest in MODEL", lambda e: e.heal(e.model(lambda d: (d / "tokenplug_manifest.json").write_text("{"))),
         ("tokenplug_manifest.json", "not valid JSON")),
    Case("evaluate: --json not writable", lambda e: ["evaluate", str(e.zoo.sp_untied), "--text", str(e.zoo.corpus_dir / "part0.txt"), "--json", str(e.root / "no" / "e.json"), "-q"],
         ("--json", "cannot write")),
    Case("compare: --plot not writable", lambda e: ["compare", str(e.zoo.sp_untied), str(e.zoo.bl_untied), "--methods", "mean", "--plot", str(e.root / "no" / "p.png"), "-q"],
         ("--plot", "cannot write")),
    Case("compare: empty --text", lambda e: ["compare", str(e.zoo.sp_untied), str(e.zoo.bl_untied), "--methods", "mean", "--text", str(e.file("empty.txt", "")), "-q"],
         ("empty.txt", "is empty")),
    Case("compare: binary --text", lambda e: ["compare", str(e.zoo.sp_untied), str(e.zoo.bl_untied), "--methods", "mean", "--text", str(e.file("blob.txt", b"PK\x03\x04\x00binary")), "-q"],
         ("blob.txt", "binary")),
    # 11: the arguments transplant refuses
    Case("heal: --device tpu", lambda e: e.heal(e.zoo.sp_untied, "--device", "tpu"),
         ("--device", "tpu", "expected cpu")),
    Case("heal: --lam nan", lambda e: e.heal(e.zoo.sp_untied, "--lam", "nan"),
         ("--lam", "finite")),
    Case("heal: --seq-len past the context", lambda e: e.heal(e.zoo.sp_untied, "--seq-len", "1024"),
         ("--seq-len", "256 positions", "at most 255")),
    # 12: short-context models
    Case("heal: --seq-len 128 on a 64-position model", lambda e: e.heal(e.model(set_key("config.json", "max_position_embeddings", 64)), "--seq-len", "128"),
         ("--seq-len", "64 positions")),
    Case("evaluate: --window past the context", lambda e: ["evaluate", str(e.model(set_key("config.json", "max_position_embeddings", 64))), "--text", str(e.zoo.corpus_dir / "part0.txt"), "--window", "128", "-q"],
         ("--window", "64 positions")),
    # 13: messages that name the file or option
    Case("quoted vocab_size", lambda e: e.transplant(base_with(e, set_key("config.json", "vocab_size", "700")), e.zoo.bl_untied),
         ("config.json", "vocab_size", "expected an integer")),
    Case("heal: missing relative MODEL", lambda e: e.heal(Path("no_such_dir/model")),
         ("MODEL", "no_such_dir/model", "does not exist")),
    Case("heal: --lr nan", lambda e: e.heal(e.zoo.sp_untied, "--lr", "nan"),
         ("--lr", "finite")),
    Case("heal: --seed -5", lambda e: e.heal(e.zoo.sp_untied, "--seed", "-5"),
         ("--seed", ">= 0")),
    Case("heal: huge --steps", lambda e: e.heal(e.zoo.sp_untied, "--steps", str(10**12)),
         ("--steps", "<=")),
    Case("--pad-to-multiple-of 10**9", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "--pad-to-multiple-of", str(10**9)),
         ("tokenizer.pad_to_multiple_of", "up to 65536")),
    Case("lone surrogate in a recipe token", lambda e: e.raw_recipe(f'merge_method: passthrough\nmodels: [{{model: {e.zoo.sp_untied}}}]\ntokenizer: {{source: {e.zoo.bl_untied}, approximation: {{method: mean}}, tokens: {{"\\udc80x": {{}}}}}}\n'),
         ("tokenizer.tokens", "lone surrogate"), "mergekit-yaml"),
    Case("lone surrogate in tokenizer.json", lambda e: e.transplant(e.zoo.sp_untied, donor_with(e, lambda d: edit_json(d / "tokenizer.json", lambda t: t["added_tokens"][0].__setitem__("content", "\udc80")))),
         ("tokenizer.json", "lone surrogate")),
    # 14: the smaller ones
    Case("cw2v corpus not UTF-8", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "-m", "cw2v", "-p", f"corpus=[{e.file('latin1.txt', LATIN1)}]", k=None),
         ("latin1.txt", "not UTF-8")),
    Case("--json inside OUT", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "--json", str(e.out / "s.json")),
         ("--json", "inside the output directory")),
    Case("empty recipe token", lambda e: e.recipe({"source": str(e.zoo.bl_untied), "tokens": {"": {}}, "approximation": {"method": "mean"}}),
         ("tokenizer.tokens", "is empty"), "mergekit-yaml"),
    Case("heal: empty JSONL", lambda e: e.heal(e.zoo.sp_untied, corpus=str(e.file("empty.jsonl", "\n"))),
         ("--corpus", "hold no rows")),
    Case("learn-tool-tokens: data without the tool token", lambda e: ["learn-tool-tokens", str(e.zoo.bl_untied), str(e.tool_rows("4")), str(e.out), "--tool-token", "<|im_start|>", "--steps", "1", "-q"],
         ("--corpus", "no completion holds", "<|im_start|>")),
    Case("heal --rows estimated on a mergekit-multi output", lambda e: e.heal(e.model(lambda d: (d / "tokenplug_manifest.json").write_text(json.dumps({"stages": {"a": {}}, "report": {}}))), "--rows", "estimated"),
         ("tokenplug_manifest.json", "mergekit-multi")),
    Case("mergekit-multi: --out-path is a stage's directory", multi_out_on_a_stage,
         ("--out-path", "stage 'aligned'"), "mergekit-multi"),
    Case("heal: rows past float16 (a run that diverges)", lambda e: e.heal(e.model(to_float16), "--lr", "1e5", "--lam", "0"),
         ("training diverged", "non-finite values in the trained rows", "--lr")),
    Case("heal: --lr past any float32 step", lambda e: e.heal(e.zoo.sp_untied, "--lr", "1e38"),
         ("--lr", "<= 1000000.0")),
    # 15: a config that disagrees with its weights
    Case("hidden_size disagrees with the weights", lambda e: e.transplant(base_with(e, set_key("config.json", "hidden_size", 40)), e.zoo.bl_untied),
         ("config.json declares hidden_size 40", "32 wide")),
    Case("heal: hidden_size disagrees with the weights", lambda e: e.heal(e.model(set_key("config.json", "hidden_size", 40))),
         ("MODEL", "hidden_size 40")),
]
if not torch.cuda.is_available():
    CASES.append(
        Case("heal: CUDA without CUDA", lambda e: e.heal(e.zoo.sp_untied, "--device", "cuda"),
             ("--device", "CUDA"))
    )
    CASES.append(
        Case("CUDA without CUDA", lambda e: e.transplant(e.zoo.sp_untied, e.zoo.bl_untied, "--device", "cuda"),
             ("--device", "CUDA"))
    )


# ------------------------------------------------------------------ the check


def tree_digest(*roots: Path) -> dict[str, str]:
    digests = {}
    for root in roots:
        if root.is_file():
            digests[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for p in sorted(root.rglob("*")) if root.exists() else []:
            digests[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return digests


def run(entry: str, argv: list[str], env: dict[str, str]) -> tuple[int, str, bool]:
    """(exit code, output, whether the failure was handled rather than an escaped exception)."""
    if entry == "subprocess":
        proc = subprocess.run(
            [str(BIN / "mergekit-yaml"), *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
        )
        return proc.returncode, proc.stdout + proc.stderr, True
    if entry == "mergekit-yaml":
        from mergekit.scripts.run_yaml import main as command
    elif entry == "mergekit-multi":
        from mergekit.scripts.multimerge import main as command
    else:
        command = main
    result = CliRunner().invoke(command, argv)
    return result.exit_code, result.output, isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def wide_model(zoo, tmp_path_factory) -> Path:
    """The zoo's byte-level tokenizer on a 48-wide model (the zoo's are 32 wide)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(zoo.tok_bl_only))
    return build_llama(tmp_path_factory.mktemp("wide") / "bl_wide", tok, hidden=48, seed=11)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, zoo, wide_model, tmp_path):
    env = Env(zoo, tmp_path, wide_model)
    argv = case.build(env)
    watched = (env.inputs, zoo.root, wide_model)
    inputs_before = tree_digest(*watched)
    out_before = tree_digest(env.out) if env.out.exists() else None

    code, output, handled = run(case.entry, argv, env.env)

    assert code != 0 and handled, output[-2000:]
    errors = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, output[-2000:]
    for fragment in case.expect:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in output
    if out_before is None:
        assert not env.out.exists() or not any(env.out.iterdir())
    else:
        assert tree_digest(env.out) == out_before
    leftovers = list(env.out.parent.glob(f".{env.out.name}.*"))
    assert not leftovers, leftovers
    assert tree_digest(*watched) == inputs_before


def test_plugin_recipe_refused_while_disabled(zoo, tmp_path):
    """The stock entry point with the plugin switched off by the environment."""
    env = Env(zoo, tmp_path, zoo.bl_untied)
    argv = env.recipe({"source": str(zoo.bl_untied), "approximation": {"method": "omp"}})
    code, output, _ = run("subprocess", argv, {"MERGEKIT_TOKENPLUG_DISABLE": "1"})
    assert code != 0
    assert "disabled" in output and "tokenizer.approximation" in output
    assert not env.out.exists()
