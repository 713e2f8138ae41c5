"""Paired per-token check behind ``compare``'s table: is the default ``omp_map`` ahead of
mergekit-tokensurgeon's methods token by token, per category, or only on average?

For each seed, ``compare``'s own leave-out (``prepare_holdout``, SmolLM2-135M's tokenizer on
Gemma-3-270M) is drawn once; ``omp_map`` and each ``tokensurgeon:NAME`` estimate the same
hidden tokens. Printed per category: mean cosine difference (ours minus theirs), a 95 %
bootstrap interval of that mean (2000 resamples of the tokens) and how many tokens ours wins.

    python bench/bench_compare_paired.py --seeds 0 1 --hold-out 0.005
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)

from mergekit_tokenplug.evaluate import tokensurgeon_ref  # noqa: E402
from mergekit_tokenplug.evaluate.compare import estimate_hidden, prepare_holdout  # noqa: E402
from mergekit_tokenplug.registry import get  # noqa: E402

CATS = ("all", "continuation", "long", "word-start", "multi-byte", "punctuation", "digits")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--hold-out", type=float, default=0.005)
    ap.add_argument("--ours", default="omp_map")
    ap.add_argument(
        "--refs", nargs="+", default=["tokensurgeon:omp", "tokensurgeon:common_interpolation"]
    )
    args = ap.parse_args()
    base, donor = str(assets.model_dir("gemma3")), str(assets.model_dir("smollm2"))
    print("| seed | vs | category | n | mean cos diff | 95 % CI | ours better |")
    print("|---:|---|---|---:|---:|---|---:|")
    for seed in args.seeds:
        ho = prepare_holdout(base, donor, args.hold_out, seed=seed)

        def cos(est: torch.Tensor, ho=ho) -> np.ndarray:
            return torch.nn.functional.cosine_similarity(est.float(), ho.true, dim=1).numpy()

        spec = get(args.ours)
        ours = cos(estimate_hidden(ho, spec, spec.parse_params({}), show_progress=False))
        cats = np.asarray(ho.categories)
        rng = np.random.default_rng(0)
        for ref in args.refs:
            theirs = cos(tokensurgeon_ref.estimate(tokensurgeon_ref.lookup(ref), ho))
            for c in CATS:
                mask = np.ones(len(cats), bool) if c == "all" else cats == c
                if not mask.any():
                    continue
                d = ours[mask] - theirs[mask]
                boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
                lo, hi = np.percentile(boots, [2.5, 97.5])
                print(
                    f"| {seed} | `{ref}` | {c} | {len(d)} | {d.mean():+.4f} "
                    f"| [{lo:+.4f}, {hi:+.4f}] | {int((d > 0).sum())}/{len(d)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
