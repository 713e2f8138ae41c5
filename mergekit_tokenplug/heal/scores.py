"""Held-out figures before and after healing: mean token loss and bits per byte.

Scored with ``evaluate/bpb.py`` (windows of ``seq_len`` text tokens, BOS-led like the
training windows), summed over the held-out part of every corpus file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergekit_tokenplug.evaluate.bpb import LN2, bits_per_byte


def heldout_scores(
    model: Any, tokenizer: Any, heldout: dict[str, str], *, seq_len: int, device: Any
) -> dict[str, Any] | None:
    """``{"loss", "bpb", "bytes", "tokens", "per_file": {name: bpb}}`` or None without
    held-out text."""
    bits = 0.0
    n_bytes = scored = 0
    per_file: dict[str, float] = {}
    for path, text in heldout.items():
        if not text:
            continue
        rec = bits_per_byte(model, tokenizer, text, window=seq_len, device=device)
        bits += rec["bits"]
        n_bytes += rec["bytes"]
        scored += rec["scored_tokens"]
        per_file[Path(path).name] = rec["bpb"]
    if not scored:
        return None
    return {
        "loss": bits * LN2 / scored,
        "bpb": bits / n_bytes,
        "bytes": n_bytes,
        "tokens": scored,
        "per_file": per_file,
    }
