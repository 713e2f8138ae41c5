"""Does greedy generation through llama.cpp match transformers' on a converted output?

Why: ``gguf_check.py`` shows that the GGUF holds the checkpoint's tokens and rows; a user runs
it through llama.cpp, so what matters is that llama.cpp then tokenizes the prompt and continues
it as transformers does on the checkpoint itself.

For each model directory OUT (a transplant, a healed model):

1. ``mergekit-tokenplug gguf OUT FILE --converter DIR/convert_hf_to_gguf.py --outtype f32``
   (``--outtype`` changes it), and whether FILE has its own ``output.weight`` (untied);
2. per prompt, the prompt's token ids from transformers (``tok(prompt)``, BOS as the output
   tokenizer adds it) and from llama.cpp (``Llama.tokenize(prompt, add_bos=True)``: BOS only
   where the GGUF's ``tokenizer.ggml.add_bos_token`` says so);
3. greedy continuations, each of its own prompt ids (as a user gets them): transformers
   ``generate(do_sample=False)`` on OUT, llama.cpp's own greedy sampler on FILE
   (llama-cpp-python's ``Llama.generate(temp=0, top_k=1)``); each stops at its
   end-of-generation token or after ``--new-tokens``;
4. the first position where the new token ids differ, and the next-token logits of both up to
   there: the largest absolute difference, the smallest top-2 gap of transformers' logits (how
   near greedy came to a tie), and at a divergence the top-2 gap of each (a tie within float
   noise, or a real difference?).

llama.cpp comes from the ``llama-cpp-python`` package (``pip install llama-cpp-python==0.3.36``
builds it from the sdist; its ``vendor/llama.cpp`` is also the converter's DIR).

    python bench/gguf_generate.py OUT [OUT ...] --llama-cpp DIR [--outtype f32]
        [--new-tokens 24] [--gguf-dir DIR] [--json bench/out/gen.json]
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
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = {
    "en": "The capital of France is",
    "de": "Die Hauptstadt von Deutschland ist",
    "zh": "中国的首都是",
    "code": "def fibonacci(n):",
}


def convert(out: Path, converter: Path, gguf_path: Path, outtype: str) -> dict:
    """``mergekit-tokenplug gguf``; rc, seconds and the last line."""
    cli = Path(sys.executable).parent / "mergekit-tokenplug"
    cmd = [str(cli), "gguf", str(out), str(gguf_path), "--converter", str(converter)]
    start = time.monotonic()
    proc = subprocess.run([*cmd, "--outtype", outtype], capture_output=True, text=True)
    tail = (proc.stderr + proc.stdout).strip().splitlines()[-1:] or [""]
    return {"rc": proc.returncode, "seconds": round(time.monotonic() - start, 1), "last": tail[0]}


def gguf_output_tensor(gguf_path: Path, llama_cpp_dir: Path) -> bool:
    """Whether the GGUF has its own ``output.weight`` (else llama.cpp ties it to token_embd)."""
    sys.path.insert(0, str(llama_cpp_dir / "gguf-py"))
    import gguf  # the vendored gguf-py, the one the converter used

    return any(t.name == "output.weight" for t in gguf.GGUFReader(str(gguf_path)).tensors)


def hf_greedy(out: Path, prompts: dict[str, str], new_tokens: int) -> dict[str, dict]:
    """Prompt ids, greedy new ids and per-step next-token logits from transformers."""
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    result = {}
    for name, text in prompts.items():
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
        new = gen.sequences[0, ids.shape[1] :].tolist()
        logits = torch.cat(gen.logits).float().numpy()
        result[name] = {
            "prompt_ids": ids[0].tolist(),
            "new_ids": new,
            "logits": logits,
            "text": tok.decode(new),
        }
    return result


def llama_greedy(gguf_path: Path, prompts: dict[str, str], new_tokens: int) -> dict[str, dict]:
    """The same from llama.cpp (llama-cpp-python), one thread, its greedy sampler."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(gguf_path),
        n_ctx=256,
        n_threads=1,
        n_threads_batch=1,
        logits_all=True,
        verbose=False,
    )
    vocab = llm._model.vocab  # noqa: SLF001 (no public is_eog)
    result = {}
    for name, text in prompts.items():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        new: list[int] = []
        logits = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            logits.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
            new.append(int(token))
            if llama_cpp.llama_vocab_is_eog(vocab, token) or len(new) == new_tokens:
                break
        result[name] = {
            "prompt_ids": ids,
            "new_ids": new,
            "logits": np.stack(logits),
            "text": llm.detokenize(new).decode("utf-8", errors="replace"),
        }
    llm.close()
    return result


def top2_gap(row: np.ndarray) -> float:
    top = np.sort(row)[-2:]
    return float(top[1] - top[0])


def compare(hf: dict, ll: dict) -> dict:
    """First divergence of the new ids and what the logits say up to there."""
    a, b = hf["new_ids"], ll["new_ids"]
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))  # one stopped (EOS) where the other went on
    upto = len(a) if first is None else min(first + 1, len(a), len(b))
    diff = np.abs(hf["logits"][:upto] - ll["logits"][:upto])
    row = {
        "prompt_ids_equal": hf["prompt_ids"] == ll["prompt_ids"],
        "prompt_tokens": len(hf["prompt_ids"]),
        "new_tokens": [len(a), len(b)],
        "identical": first is None,
        "first_divergence": first,
        "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
        # how near a tie greedy came: a logit difference above this could flip a token
        "min_top2_gap": min((top2_gap(r) for r in hf["logits"][:upto]), default=0.0),
    }
    if first is not None and first < min(len(a), len(b)):
        row["top2_gap_at_divergence"] = {
            "transformers": top2_gap(hf["logits"][first]),
            "llama_cpp": top2_gap(ll["logits"][first]),
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outs", nargs="+", type=Path, help="model directories (transplant, healed)")
    ap.add_argument("--llama-cpp", type=Path, required=True, help="vendor/llama.cpp of the sdist")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"])
    ap.add_argument("--gguf-dir", type=Path, help="keep the GGUF files here (default: temporary)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit(
            "llama_cpp: not installed; pip install llama-cpp-python==0.3.36 (builds llama.cpp)"
        ) from None

    torch.manual_seed(0)
    record: dict = {
        "llama_cpp_python": llama_cpp.__version__,
        "converter": str(args.llama_cpp / "convert_hf_to_gguf.py"),
        "new_tokens": args.new_tokens,
        "outtype": args.outtype,
        "prompts": PROMPTS,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        gguf_dir = args.gguf_dir or Path(tmp)
        gguf_dir.mkdir(parents=True, exist_ok=True)
        for out in args.outs:
            gguf_path = gguf_dir / f"{out.resolve().name}.{args.outtype}.gguf"
            conv = convert(out, args.llama_cpp / "convert_hf_to_gguf.py", gguf_path, args.outtype)
            entry: dict = {"convert": conv}
            record["models"][str(out)] = entry
            print(f"{out}: mergekit-tokenplug gguf rc={conv['rc']} ({conv['seconds']} s)")
            if conv["rc"] != 0:
                print(f"  {conv['last']}")
                continue
            config = json.loads((out / "config.json").read_text(encoding="utf-8"))
            entry["tie_word_embeddings"] = config.get("tie_word_embeddings")
            entry["gguf_output_weight"] = gguf_output_tensor(gguf_path, args.llama_cpp)
            print(
                f"  tie_word_embeddings: {entry['tie_word_embeddings']}, "
                f"GGUF output.weight: {entry['gguf_output_weight']}"
            )
            hf = hf_greedy(out, PROMPTS, args.new_tokens)
            ll = llama_greedy(gguf_path, PROMPTS, args.new_tokens)
            entry["prompts"] = {}
            print(
                "| prompt | prompt ids equal | new tokens (hf / llama.cpp) | first divergence "
                "| max abs logit diff | smallest top-2 gap | transformers' continuation |"
            )
            print("|---|---|---|---|---:|---:|---|")
            for name in PROMPTS:
                row = compare(hf[name], ll[name])
                row["ids"] = {
                    "transformers": hf[name]["prompt_ids"] + hf[name]["new_ids"],
                    "llama_cpp": ll[name]["prompt_ids"] + ll[name]["new_ids"],
                }
                row["text"] = {"transformers": hf[name]["text"], "llama_cpp": ll[name]["text"]}
                entry["prompts"][name] = row
                where = "none" if row["identical"] else str(row["first_divergence"])
                shown = hf[name]["text"].replace("\n", "⏎")
                print(
                    f"| {name} | {row['prompt_ids_equal']} | {row['new_tokens'][0]} / "
                    f"{row['new_tokens'][1]} | {where} | {row['max_abs_logit_diff']:.2e} "
                    f"| {row['min_top2_gap']:.3f} | {shown} |"
                )
                if not row["identical"]:
                    gaps = row.get("top2_gap_at_divergence")
                    print(f"    llama.cpp: {ll[name]['text']!r}; top-2 gaps there {gaps}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
