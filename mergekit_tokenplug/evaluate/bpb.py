"""Bits per byte of causal LMs on text files.

Bits per byte (bpb) is the one language-modelling score that stays comparable across
tokenizers: a transplant changes the tokenizer, so per-token perplexity is meaningless, but
the number of bits a model needs to encode the same UTF-8 bytes is not.

Windowing (fixed, so figures are reproducible): the text is tokenized once by the model's own
tokenizer without special tokens and cut into consecutive, non-overlapping windows of
``window`` text tokens; every window is scored independently (no carried context).

BOS choice: every window starts with the tokenizer's BOS token whenever the tokenizer defines
one (even if it would not add it on its own, e.g. SmolLM2's ``<|im_start|>``). Models are
trained on documents that start after a BOS/separator and some (Gemma) degrade badly without
it; a transplanted body keeps its BOS habit whatever tokenizer it now wears; every text token
is then predicted and the bytes covered are the whole text; and it is the convention of the
project's reference figures (ASSETS.md). A tokenizer without a BOS token gets none: the first
token of each window is context only, is not scored, and its bytes are left out of the byte
count (measured from the tokenizer's character offsets; a character split over several
tokens counts towards the token where it ends). Pass ``bos=True/False`` to override.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.guards import fit_context, require_local_dir
from mergekit_tokenplug.inputs import check_model_dir

LN2 = math.log(2.0)


def _token_byte_lengths(tokenizer: Any, text: str, ids: list[int]) -> list[int]:
    """UTF-8 bytes each token accounts for, as a contiguous partition of ``text``.

    A token owns the characters between the previous token's end offset and its own; pieces
    sharing characters (byte fallback) get the bytes once. Falls back to decoding single
    tokens for tokenizers without offsets.
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if list(enc["input_ids"]) != list(ids):
            raise ValueError("offsets tokenization differs")
    except (NotImplementedError, ValueError, KeyError, TypeError):
        return [len(tokenizer.decode([i]).encode("utf-8")) for i in ids]
    lengths, prev = [], 0
    for _, end in offsets:
        end = max(prev, end)
        lengths.append(len(text[prev:end].encode("utf-8")))
        prev = end
    if lengths:
        lengths[-1] += len(text[prev:].encode("utf-8"))
    return lengths


@torch.inference_mode()
def bits_per_byte(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    *,
    window: int = 512,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    bos: bool | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Score ``text`` with ``model``; return bits, bytes, tokens, windows and bpb.

    ``tokens`` counts the text tokens, ``scored_tokens`` those whose probability was
    counted; ``bytes`` is the UTF-8 size of the text they cover.
    """
    if window < 2:
        raise InputError(f"window must be >= 2 tokens, got {window}")
    if not text:
        raise InputError("text is empty: nothing to score")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    use_bos = (bos_id is not None) if bos is None else bos
    if use_bos and bos_id is None:
        raise InputError("bos=True but the tokenizer has no BOS token")
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if not ids:
        raise InputError("text tokenizes to zero tokens")
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    if use_bos:
        chunks = [[bos_id, *c] for c in chunks]
    # without BOS, the first token of each window is context only: its bytes are not covered
    first_bytes = 0 if use_bos else sum(_token_byte_lengths(tokenizer, text, ids)[::window])

    # Windows of equal length batch without padding; only the last one can be shorter.
    groups: dict[int, list[list[int]]] = {}
    for c in chunks:
        groups.setdefault(len(c), []).append(c)
    batches = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]

    total_nats = 0.0
    scored = 0
    for batch in tqdm(batches, desc="windows", leave=False, disable=not show_progress):
        inp = torch.tensor(batch, dtype=torch.long, device=device)
        if inp.shape[1] < 2:
            continue  # a lone token has nothing predicting it
        logits = model(input_ids=inp).logits[:, :-1, :].float()
        target = inp[:, 1:]
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        )
        total_nats += float(nll)
        scored += target.numel()
    covered = len(text.encode("utf-8")) - first_bytes
    if covered <= 0 or scored == 0:
        raise InputError("text too short to score: no predicted token covers any byte")
    bits = total_nats / LN2
    return {
        "bits": bits,
        "bytes": covered,
        "tokens": len(ids),
        "scored_tokens": scored,
        "windows": len(chunks),
        "bos": use_bos,
        "bpb": bits / covered,
    }


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"text file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"text file {path} is not valid UTF-8 (byte {e.start})") from None
    if not text:
        raise InputError(f"text file {path} is empty")
    return text


def evaluate_models(
    model_dirs: Sequence[str | Path],
    text_files: Sequence[str | Path],
    *,
    device: str | torch.device = "cpu",
    window: int | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1,
    allow_pickle: bool = False,
    bos: bool | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Bits per byte of every model on every text file: one record per (model, file).

    All inputs are validated before any model is loaded so a typo fails in a second, not
    after minutes of loading. ``bos`` overrides the per-tokenizer BOS choice (module doc).
    ``window`` (None: 512, or a model's context when shorter) must fit every model's context.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not model_dirs:
        raise InputError("no model directories given")
    if not text_files:
        raise InputError("no text files given")
    dirs = [Path(d) for d in model_dirs]
    windows = {}
    for d in dirs:
        require_local_dir(str(d), "MODEL")
        check_model_dir(str(d), where="MODEL", need_tokenizer=True, allow_pickle=allow_pickle)
        windows[d] = fit_context(window, 512, str(d), "--window")
    texts = {Path(f): _read_text(Path(f)) for f in text_files}

    records: list[dict[str, Any]] = []
    outer = tqdm(total=len(dirs) * len(texts), desc="bpb", disable=not show_progress)
    for d in dirs:
        t_load = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
        except Exception as e:  # transformers raises many types for unusable tokenizers
            raise InputError(f"{d}: cannot load tokenizer ({type(e).__name__}: {e})") from None
        model = AutoModelForCausalLM.from_pretrained(
            str(d), dtype=dtype, trust_remote_code=False, use_safetensors=not allow_pickle
        )
        model.to(device).eval()
        load_s = time.perf_counter() - t_load
        for f, text in texts.items():
            outer.set_postfix_str(f"{d.name} / {f.name}")
            t0 = time.perf_counter()
            res = bits_per_byte(
                model,
                tokenizer,
                text,
                window=windows[d],
                device=device,
                batch_size=batch_size,
                bos=bos,
                show_progress=show_progress,
            )
            records.append(
                {
                    "model": str(d),
                    "text": str(f),
                    **res,
                    "window": windows[d],
                    "dtype": str(dtype).removeprefix("torch."),
                    "load_seconds": round(load_s, 2),
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            outer.update(1)
        del model
    outer.close()
    return records


def bpb_grid(
    records: Sequence[dict[str, Any]],
) -> tuple[list[str], list[str], list[str], dict[tuple[str, str], float]]:
    """(models, texts, text names, {(model, text): bpb}) in the order the records came: what
    the table and the figure lay out. A text is named by its file stem unless stems repeat."""
    models = list(dict.fromkeys(r["model"] for r in records))
    texts = list(dict.fromkeys(r["text"] for r in records))
    names = [Path(t).stem or t for t in texts]
    if len(set(names)) < len(names):
        names = list(texts)
    return models, texts, names, {(r["model"], r["text"]): r["bpb"] for r in records}


def format_table(records: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """Markdown table of bpb: one row per model, one column per text file (lower is better)."""
    models, texts, names, cell = bpb_grid(records)
    head = "| model | " + " | ".join(f"{n} bpb" for n in names) + " |"
    sep = "|---|" + "---:|" * len(names)
    rows = [head, sep]
    for m in models:
        vals = [cell.get((m, t)) for t in texts]
        shown = [f"{v:.{digits}f}" if v is not None else "-" for v in vals]
        rows.append(f"| {m} | " + " | ".join(shown) + " |")
    return "\n".join(rows)
