"""Greedy continuations with a plain ``tok(prompt)`` + ``generate``: original vs transplant.

The transplanted model's tokenizer adds BOS like the base model's (``add_bos: base``); the
column "transplant, no BOS" encodes without special tokens, which is what the output tokenizer
did before it followed the base model (the donor, SmolLM2, adds no BOS).

    python bench/bench_bos.py ORIGINAL TRANSPLANT [--new-tokens 16]
"""

from __future__ import annotations

import argparse

import torch
import transformers

PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "Once upon a time, there was a",
)


def greedy(model, tok, prompt: str, new_tokens: int, special: bool = True) -> tuple[list[int], str]:
    ids = tok(prompt, add_special_tokens=special, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return ids[0].tolist(), tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("original")
    ap.add_argument("transplant")
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    load = transformers.AutoModelForCausalLM.from_pretrained
    orig_tok = transformers.AutoTokenizer.from_pretrained(args.original)
    new_tok = transformers.AutoTokenizer.from_pretrained(args.transplant)
    orig = load(args.original, dtype=torch.float32).eval()
    new = load(args.transplant, dtype=torch.float32).eval()
    same = 0
    print("| prompt | original | transplant | transplant, no BOS |")
    print("|---|---|---|---|")
    for prompt in PROMPTS:
        o_ids, o_text = greedy(orig, orig_tok, prompt, args.new_tokens)
        n_ids, n_text = greedy(new, new_tok, prompt, args.new_tokens)
        _, raw_text = greedy(new, new_tok, prompt, args.new_tokens, special=False)
        assert (o_ids[0] == orig_tok.bos_token_id) == (n_ids[0] == new_tok.bos_token_id)
        same += o_text.strip() == n_text.strip()
        cells = [prompt, o_text, n_text, raw_text]
        print("| " + " | ".join(c.replace("\n", "⏎").replace("|", "\\|") for c in cells) + " |")
    print(f"\nidentical continuations: {same}/{len(PROMPTS)}")


if __name__ == "__main__":
    main()
