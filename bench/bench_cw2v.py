"""CW2V against the mean row on the real pair: leave-out reconstruction with a real corpus.

Hidden tokens: 400 shared regular SmolLM2-135M tokens (seed 0) that occur at least 5 times in
the corpus; their Gemma-3-270M rows are the truth. CW2V learns them from the corpus (Debian
Reference, the first 30 % of each language's file: the held-out / tune / heal slices are cut
from 30 % onwards) tokenized by SmolLM2's tokenizer, mixing Gemma's own rows. Printed per
setting: mean cosine and relative L2 to the true rows, and seconds; also the two reference
points that explain where a gain comes from: the mean of *all* rows (the ``mean`` method) and
the mean of the rows CW2V mixes (its hull's centre).

    python bench/bench_cw2v.py --langs en --max-chars 100000 --setting '{}' \
        --setting '{"lr": 1e-9, "epochs": 1}'
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from mergekit_tokenplug.methods.base import EstimationProblem, rows_of
from mergekit_tokenplug.methods.cw2v import CW2VParams, _mix_ids, combined_ids, estimate_cw2v
from mergekit_tokenplug.resources.corpus import tokenize_corpus
from mergekit_tokenplug.vocab.align import SPECIAL, align_vocab

CACHE = Path.home() / ".cache/mergekit-tokenplug"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--langs", default="en", help="comma-separated Debian Reference languages")
    ap.add_argument("--max-chars", type=int, default=100_000, help="characters per language")
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--setting", action="append", default=[], help="JSON of CW2V parameters")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    smol = AutoTokenizer.from_pretrained(CACHE / "models/smollm2-135m")
    gemma = AutoTokenizer.from_pretrained(CACHE / "models/gemma3-270m")
    with safe_open(str(CACHE / "models/gemma3-270m/model.safetensors"), "pt") as f:
        emb = f.get_tensor(next(k for k in f.keys() if "embed_tokens" in k)).float()
    al = align_vocab(smol, gemma, model_rows=emb.shape[0])
    texts = []
    for lang in args.langs.split(","):
        path = next((CACHE / "debian" / lang).rglob("*.txt.gz"))
        text = gzip.open(path, "rt", encoding="utf-8").read()
        text = text[: int(0.3 * len(text))][: args.max_chars]
        texts += [text[i : i + 20_000] for i in range(0, len(text), 20_000)]
    seqs = tokenize_corpus(smol, texts)
    counts = torch.bincount(torch.cat(seqs), minlength=al.size).numpy()[: al.size]
    shared = np.flatnonzero((al.src_ids >= 0) & (al.how != SPECIAL) & (counts >= 5))
    hidden = np.sort(np.random.default_rng(0).choice(shared, size=args.hidden, replace=False))
    out_to_base = torch.as_tensor(al.src_ids.copy())
    out_to_base[torch.as_tensor(hidden)] = -1
    out_to_target = torch.full((al.size,), -1, dtype=torch.long)
    out_to_target[torch.as_tensor(hidden)] = torch.arange(len(hidden))
    truth = emb[torch.as_tensor(al.src_ids[hidden])]

    def score(rows: torch.Tensor) -> dict[str, float]:
        cos = torch.nn.functional.cosine_similarity(rows, truth, dim=1).mean()
        rel = ((rows - truth).norm(dim=1) / truth.norm(dim=1)).mean()
        return {"cos": round(float(cos), 4), "rel_l2": round(float(rel), 4)}

    ids, _ = combined_ids(seqs, out_to_base, out_to_target, emb.shape[0])
    result = {
        "corpus_tokens": int(sum(s.numel() for s in seqs)),
        "hidden": len(hidden),
        "mean (all rows)": score(emb.mean(0).expand(len(hidden), -1)),
        "mean of the mixed rows": score(emb[_mix_ids(ids, emb.shape[0], 8192)].mean(0).expand(len(hidden), -1)),
    }
    for setting in args.setting:
        problem = EstimationProblem(
            base=emb,
            anchor_ids=torch.arange(0),
            n_targets=len(hidden),
            seed=0,
            show_progress=True,
            extras={
                "corpus_ids": seqs,
                "out_to_base": out_to_base,
                "out_to_target": out_to_target,
                "context_matrix": emb,
            },
        )
        start = time.perf_counter()
        rows = rows_of(estimate_cw2v(problem, CW2VParams(corpus=["-"], **json.loads(setting))))
        result[f"cw2v {setting}"] = {**score(rows), "s": round(time.perf_counter() - start, 1)}
    print(f"corpus: {result['corpus_tokens']} tokens, hidden: {result['hidden']}\n")
    print("| estimate | cos | rel L2 | s |\n|---|---:|---:|---:|")
    for key, val in result.items():
        if isinstance(val, dict):
            print(f"| {key} | {val['cos']:.3f} | {val['rel_l2']:.3f} | {val.get('s', '')} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
