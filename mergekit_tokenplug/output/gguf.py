"""Convert an output to GGUF with llama.cpp's own ``convert_hf_to_gguf.py``.

The converter names a byte-level BPE tokenizer's pre-tokenizer by hashing
``tokenizer.encode(text)`` (special tokens included) against the hashes of known models. An
output whose tokenizer adds BOS where its source's does not (SmolLM2's tokenizer on Gemma, which
needs BOS) hashes differently from every known model, and the converter stops ("BPE
pre-tokenizer was not recognized"). No extra file fixes that: transformers reads BOS from
``tokenizer.json``'s post-processor, the converter hashes what transformers gives. So the
conversion reads a staged view of OUT: every file linked, ``tokenizer.json`` without BOS in
the post-processor, ``tokenizer_config.json`` with ``add_bos_token: true`` (which the
converter writes to the GGUF as ``tokenizer.ggml.add_bos_token``, so llama.cpp still adds it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.output.bos import with_bos


def stage_for_converter(out: Path, stage: Path) -> bool:
    """Fill ``stage`` with links to OUT's files and the converter's view of the tokenizer;
    True when BOS was moved from the post-processor to ``add_bos_token``."""
    for f in out.iterdir():
        if f.name not in ("tokenizer.json", "tokenizer_config.json"):
            (stage / f.name).symlink_to(f.resolve())
    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    bos = cfg.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    moved = False
    if isinstance(bos, str) and bos in ids:
        stripped = with_bos(tok.get("post_processor"), bos, ids[bos], add=False)
        moved = stripped != tok.get("post_processor")
        tok["post_processor"] = stripped
        if moved:
            cfg["add_bos_token"] = True
    (stage / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    (stage / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return moved


def convert(
    out: str, converter: str, outfile: str, outtype: str = "f16"
) -> subprocess.CompletedProcess:
    """Run ``converter`` (llama.cpp's convert_hf_to_gguf.py) on a staged view of ``out``."""
    src, script = Path(out), Path(converter)
    if not (src / "tokenizer.json").is_file():
        raise InputError("no tokenizer.json; expected a Hugging Face model directory", where=out)
    if not script.is_file():
        raise InputError(
            "not found; expected llama.cpp's convert_hf_to_gguf.py (e.g. from the "
            "llama-cpp-python sdist: vendor/llama.cpp/convert_hf_to_gguf.py)",
            where=converter,
        )
    with tempfile.TemporaryDirectory(prefix="tokenplug-gguf-") as tmp:
        stage = Path(tmp) / src.resolve().name
        stage.mkdir()
        stage_for_converter(src, stage)
        cmd = [
            sys.executable,
            str(script.resolve()),
            str(stage),
            "--outfile",
            str(Path(outfile).resolve()),
            "--outtype",
            outtype,
        ]
        return subprocess.run(cmd, cwd=script.resolve().parent, capture_output=True, text=True)
