"""``learn-tool-tokens``: train only the new tool rows of a model, regularized toward the prior.

Reads a model written by a tool-token recipe (it holds ``tool_token_priors.safetensors``),
splits the JSONL data into train/held-out, trains, evaluates before and after, and writes the
model atomically with its priors, metrics and manifest.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.inputs import check_model_dir
from mergekit_tokenplug.output.atomic import atomic_directory
from mergekit_tokenplug.output.manifest import input_record, write_manifest
from mergekit_tokenplug.output.modes import apply_umask
from mergekit_tokenplug.output.side_files import TOOL_PRIORS
from mergekit_tokenplug.tooltokens.data import read_jsonl
from mergekit_tokenplug.tooltokens.train import encode_rows, evaluate_tool_rows, learn_tool_tokens

PRIORS_FILE = TOOL_PRIORS


def load_priors(
    model_dir: Path, model: Any
) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
    """Tool token ids and the (input, output) priors exported by the recipe run."""
    path = model_dir / PRIORS_FILE
    if not path.exists():
        return [], None, None
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        ids = fh.get_tensor("token_ids").tolist()
        emb_key = next((k for k in keys if k.startswith("prior/") and "embed" in k), None)
        head_key = next((k for k in keys if k.startswith("prior/") and k != emb_key), None)
        prior_in = fh.get_tensor(emb_key) if emb_key else None
        prior_out = fh.get_tensor(head_key) if head_key else None
    head = model.get_output_embeddings()
    tied = head is None or head.weight is model.get_input_embeddings().weight
    if tied:  # one matrix: its prior plays the output role
        return ids, None, prior_out if prior_out is not None else prior_in
    return ids, prior_in, prior_out


def run_learn_tool_tokens(
    model_dir: str,
    data: str,
    out: str,
    *,
    tool_tokens: tuple[str, ...] = (),
    steps: int = 100,
    lr: float = 1e-2,
    lam: float = 1e-2,
    eval_fraction: float = 0.2,
    batch_size: int = 8,
    device: str = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    check_model_dir(model_dir, where="MODEL", need_tokenizer=True)
    rows = read_jsonl(data)
    if len(rows) < 2:
        raise InputError(
            f"has {len(rows)} usable rows; expected at least 2 (train + held-out)", where=data
        )
    src = Path(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    ids, prior_in, prior_out = load_priors(src, model)
    if tool_tokens:
        vocab = tokenizer.get_vocab()
        unknown = [t for t in tool_tokens if t not in vocab]
        if unknown:
            raise InputError(
                f"tool tokens {unknown} are not in the tokenizer; add them with a tool-token recipe first",
                where="--tool-token",
            )
        ids = [vocab[t] for t in tool_tokens]
    if not ids:
        raise InputError(
            f"no tool tokens: the model has no {PRIORS_FILE} and no --tool-token was given",
            where="MODEL",
        )
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, int(round(len(rows) * eval_fraction)))
    eval_rows, train_rows = shuffled[:n_eval], shuffled[n_eval:]
    pad = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else (tokenizer.eos_token_id or 0)
    )
    before = evaluate_tool_rows(
        model, encode_rows(tokenizer, eval_rows, set(ids), "eval"), ids, pad_id=pad, device=device
    )
    result = learn_tool_tokens(
        model,
        tokenizer,
        ids,
        train_rows,
        eval_rows,
        steps=steps,
        lr=lr,
        lam=lam,
        prior_in=prior_in,
        prior_out=prior_out,
        device=device,
        seed=seed,
        show_progress=not quiet,
        batch_size=batch_size,
        initial_eval=before,
    )
    metrics = {
        "before": before,
        "after": result["final"],
        "history": result["history"],
        "train_loss": result["train_loss"],
        "steps": steps,
        "lr": lr,
        "lam": lam,
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "tool_token_ids": ids,
    }
    with atomic_directory(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if (src / PRIORS_FILE).exists():
            (tmp / PRIORS_FILE).parent.mkdir(exist_ok=True)
            shutil.copyfile(src / PRIORS_FILE, tmp / PRIORS_FILE)
        (tmp / "learn_tool_tokens.json").write_text(
            json.dumps(metrics, indent=2) + "\n", encoding="utf-8"
        )
        write_manifest(
            tmp,
            inputs=[
                {"role": "model", **input_record(str(src))},
                {"role": "data", "path": str(Path(data).resolve())},
            ],
            recipe=f"learn-tool-tokens steps={steps} lr={lr} lam={lam} seed={seed}",
            report={"learn_tool_tokens": {k: metrics[k] for k in ("before", "after")}},
            extra={"side_files": {"tool_token_priors": PRIORS_FILE}}
            if (tmp / PRIORS_FILE).exists()
            else None,
        )
        apply_umask(tmp)
    return metrics
