"""Does a transplanted checkpoint convert with llama.cpp's own converter, and is the GGUF right?

Why: most users of small models run them through llama.cpp. The converter is
``convert_hf_to_gguf.py`` from the llama.cpp sources that the ``llama-cpp-python==0.3.36``
sdist vendors (get it with ``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36``
and unpack ``vendor/llama.cpp``); its own ``gguf-py`` reads the result.

Steps, each printed and written to ``--json``:

1. the stock converter on OUT as written (expected to stop when OUT's tokenizer adds BOS where
   its source's does not: the pre-tokenizer hash then matches no known model);
2. ``mergekit-tokenplug gguf OUT FILE --converter ...`` (a staged view of OUT, see
   mergekit_tokenplug/output/gguf.py) at f32;
3. the GGUF against OUT: tokenizer model and pre-tokenizer, bos/eos ids and add_bos_token
   against the output tokenizer, every token string against ``tokenizer.json`` in id order,
   and ``token_embd.weight`` against the checkpoint's embedding rows (exact at f32).

    python bench/gguf_check.py OUT --llama-cpp DIR [--json bench/out/gguf.json]

Generation through llama.cpp against transformers: ``bench/gguf_generate.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str], cwd: Path | None = None) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    last = next(
        (
            ln
            for ln in reversed(lines)
            if "Error" in ln or "exported" in ln or ln.startswith("wrote")
        ),
        lines[-1:],
    )
    return proc.returncode, last if isinstance(last, str) else "", time.monotonic() - start


def embed_rows(out: Path) -> torch.Tensor:
    """The checkpoint's input embedding matrix (first matching tensor)."""
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if name.endswith("embed_tokens.weight"):
                    return st.get_tensor(name).float()
    raise SystemExit(f"{out}: no embed_tokens.weight")


def check_gguf(path: Path, out: Path, llama_cpp: Path) -> dict:
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf  # the vendored gguf-py, the one the converter used

    reader = gguf.GGUFReader(str(path))
    field = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.ggml")}
    tok = AutoTokenizer.from_pretrained(str(out))
    vocab = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in vocab["model"]["vocab"].items()}
    by_id.update({t["id"]: t["content"] for t in vocab.get("added_tokens", [])})
    tokens = field["tokenizer.ggml.tokens"]
    same_tokens = all(tokens[i] == by_id[i] for i in by_id if i < len(tokens))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    gg = torch.from_numpy(np.array(tensor.data, dtype=np.float32)).reshape(-1, tensor.shape[0])
    rows = embed_rows(out)[: gg.shape[0]]
    plain = tok("Hello world", add_special_tokens=False)["input_ids"]
    adds_bos = tok("Hello world")["input_ids"] != plain
    return {
        "model": field.get("tokenizer.ggml.model"),
        "pre": field.get("tokenizer.ggml.pre"),
        "bos_token_id": field.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field.get("tokenizer.ggml.eos_token_id"),
        "add_bos_token": field.get("tokenizer.ggml.add_bos_token"),
        "tokenizer_bos_id": tok.bos_token_id,
        "tokenizer_eos_id": tok.eos_token_id,
        "tokenizer_adds_bos": adds_bos,
        "tokens": len(tokens),
        "tokens_match_tokenizer_json": same_tokens,
        "token_embd_rows": int(gg.shape[0]),
        "token_embd_max_abs_diff": float((gg - rows).abs().max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a transplant output directory")
    ap.add_argument("--llama-cpp", type=Path, required=True, help="vendor/llama.cpp of the sdist")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    script = args.llama_cpp / "convert_hf_to_gguf.py"
    record: dict = {"out": str(args.out), "converter": str(script)}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.gguf"
        rc, last, secs = run(
            [
                sys.executable,
                str(script),
                str(args.out.resolve()),
                "--outtype",
                "f32",
                "--outfile",
                str(plain),
            ],
            cwd=args.llama_cpp,
        )
        record["stock_converter"] = {"rc": rc, "last_line": last, "seconds": round(secs, 1)}
        print(f"stock converter on OUT: rc={rc} ({last})")
        staged = Path(tmp) / "staged.gguf"
        cli = Path(sys.executable).parent / "mergekit-tokenplug"
        rc, last, secs = run(
            [
                str(cli),
                "gguf",
                str(args.out),
                str(staged),
                "--converter",
                str(script),
                "--outtype",
                "f32",
            ]
        )
        record["tokenplug_gguf"] = {"rc": rc, "last_line": last, "seconds": round(secs, 1)}
        print(f"mergekit-tokenplug gguf: rc={rc} ({last}, {secs:.1f} s)")
        if rc == 0:
            record["check"] = check_gguf(staged, args.out, args.llama_cpp)
            for key, value in record["check"].items():
                print(f"  {key}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
