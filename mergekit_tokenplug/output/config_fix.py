"""Make the written config agree with the written tensors and the output tokenizer.

Stock mergekit sets ``vocab_size`` to the tokenizer's length; the plugin pads to the donor
config's row count, keeps tied configs tied, and points bos/eos/pad at the output tokenizer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)
ROLE_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def fix_config(
    out_dir: Path, *, rows: int | None, tokenizer: Any, vocab_key: str = "vocab_size"
) -> dict[str, Any]:
    """Rewrite config.json (and generation_config.json if present) in place; return the changes."""
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    nested = vocab_key not in cfg and isinstance(cfg.get("text_config"), dict)
    target = cfg["text_config"] if nested else cfg
    # bos/eos/pad ids as the output tokenizer defines them (None when it has no such token)
    roles = {key: getattr(tokenizer, key, None) for key in ROLE_KEYS}
    wanted = {vocab_key: rows} if rows is not None else {}
    wanted |= {k: v for k, v in roles.items() if k in target}
    changes = {k: v for k, v in wanted.items() if target.get(k) != v}
    target.update(changes)
    if changes:
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        LOG.info("config.json updated: %s", changes)
    gen_path = out_dir / "generation_config.json"
    if gen_path.exists():
        gen = json.loads(gen_path.read_text(encoding="utf-8"))
        gen.update({k: v for k, v in roles.items() if k in gen})
        gen_path.write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return changes


LOADER_FLAGS = ("is_local", "local_files_only")


def strip_loader_flags(out_dir: Path) -> None:
    """transformers records how a tokenizer was loaded (``is_local``, ``local_files_only``)
    in its init kwargs and saves them; they describe this run's machine, not the model."""
    path = out_dir / "tokenizer_config.json"
    if not path.exists():
        return
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if any(k in cfg for k in LOADER_FLAGS):
        for key in LOADER_FLAGS:
            cfg.pop(key, None)
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
