"""Text the original model writes itself, as a heal corpus (``bench/RESULTS.md``, "Learning
rates, the next-piece loss and a LoRA": the teacher-written text rows).

Each sample starts from BOS and the first ``--prompt-tokens`` tokens of a random line of one
of the Debian heal files (the files taken in turn, so every language gets its share) and
continues at temperature 1 with no truncation: the teacher's own distribution, so a heal on
it pulls toward the teacher rather than toward a domain. One text file per Debian file, its
samples separated by blank lines.

    python bench/teacher_text.py OUT_DIR [--samples 96] [--tokens 512] [--prompt-tokens 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)


def main(argv: list[str] | None = None) -> None:
    import torch
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--tokens", type=int, default=512, help="New tokens per sample.")
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = assets.cache_root()
    teacher = root / "models/gemma3-270m"
    tok = transformers.AutoTokenizer.from_pretrained(teacher)
    model = transformers.AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    files = sorted((root / "texts/heal").glob("*.txt"))
    rng = random.Random(args.seed)
    prompts, sources = [], []
    for i in range(args.samples):
        f = files[i % len(files)]
        text = f.read_text(encoding="utf-8")
        at = text.find("\n", rng.randrange(0, max(1, len(text) - 200))) + 1
        ids = tok(text[at : at + 200], add_special_tokens=False).input_ids[: args.prompt_tokens]
        prompts.append([tok.bos_token_id, *ids])
        sources.append(f.stem)
    width = max(len(p) for p in prompts)  # left-pad so every sample continues at the same step
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(
            ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=args.tokens, min_new_tokens=args.tokens, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    by_source: dict[str, list[str]] = {}
    for row, src in zip(out, sources, strict=True):
        by_source.setdefault(src, []).append(tok.decode(row, skip_special_tokens=True))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for src, docs in by_source.items():
        (args.out_dir / f"{src}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    n = args.samples * args.tokens
    print(f"{n} tokens in {seconds:.0f} s ({n / seconds:.0f} tokens/s) -> {args.out_dir}")


if __name__ == "__main__":
    main()
