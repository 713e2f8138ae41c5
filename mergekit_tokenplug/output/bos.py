"""Whether the output tokenizer adds BOS: like the base model's tokenizer, unless asked otherwise.

A model trained with BOS (Gemma) degenerates on prompts without it, and a transplanted
tokenizer carries the donor's convention (SmolLM2 adds none), so a plain ``tok(prompt)`` +
``generate`` would feed the transplanted model inputs it never saw. The output tokenizer's BOS
token is the one its own vocabulary names ``bos_token``; its row is the base model's BOS row
(special tokens are mapped by role). When the output vocabulary has no BOS token, none is
added and the model card says so. ``add_bos: source`` keeps the tokenizer source's convention
(a draft model for speculative decoding must tokenize exactly like its target).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

LOG = logging.getLogger("mergekit_tokenplug")
_PROBE = "a"


def adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` starts with the tokenizer's BOS id."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    return len(ids) > len(plain) and ids[0] == bos


def with_bos(processor: dict[str, Any] | None, bos: str, bos_id: int, add: bool) -> dict | None:
    """A ``tokenizer.json`` post-processor that prepends (``add``) or drops BOS."""
    special = {"SpecialToken": {"id": bos, "type_id": 0}}
    first, second = ({"Sequence": {"id": s, "type_id": t}} for s, t in (("A", 0), ("B", 1)))
    template = {
        "type": "TemplateProcessing",
        "single": [special, first],
        "pair": [special, first, second],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    if processor is None:
        return template if add else None
    proc = copy.deepcopy(processor)
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for key in ("single", "pair"):
            kept = [p for p in proc[key] if p.get("SpecialToken", {}).get("id") != bos]
            proc[key] = [special, *proc[key]] if add else kept
        if add:
            proc.setdefault("special_tokens", {})[bos] = template["special_tokens"][bos]
        return proc
    if kind == "Sequence":
        parts = proc["processors"]
        at = next((i for i, p in enumerate(parts) if p.get("type") == "TemplateProcessing"), None)
        if at is not None:
            parts[at] = with_bos(parts[at], bos, bos_id, add)
        elif add:
            parts.append(template)
        return proc
    if add:  # ByteLevel and friends: keep it, add the template after it
        return {"type": "Sequence", "processors": [proc, template]}
    return proc


def match_bos(out_dir: str | Path, base_dir: str | Path, mode: str = "base") -> dict[str, Any]:
    """Make the tokenizer in ``out_dir`` add BOS exactly when ``base_dir``'s does (mode
    ``base``) or leave it as written (mode ``source``); return the record for card/manifest."""
    import transformers

    out = Path(out_dir)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    has = adds_bos(tok)
    record: dict[str, Any] = {"mode": mode, "bos_token": tok.bos_token, "adds_bos": has}
    if mode != "base":
        return record
    base = transformers.AutoTokenizer.from_pretrained(str(base_dir))
    want = adds_bos(base)
    record["base_adds_bos"] = want
    if want == has:
        return record
    if tok.bos_token is None:
        record["note"] = "the base tokenizer adds BOS but the output vocabulary has no BOS token"
        LOG.warning("%s; prompts will start without one", record["note"])
        return record
    path = out / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["post_processor"] = with_bos(
        data.get("post_processor"), tok.bos_token, tok.bos_token_id, want
    )
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if "add_bos_token" in cfg:
        cfg["add_bos_token"] = want
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    record["adds_bos"] = adds_bos(transformers.AutoTokenizer.from_pretrained(str(out)))
    if record["adds_bos"] != want:
        record["note"] = "could not change the output tokenizer's BOS behaviour"
        LOG.warning(
            "%s (post-processor %s)", record["note"], (data.get("post_processor") or {}).get("type")
        )
    return record


def bos_sentence(record: dict[str, Any]) -> str:
    """One model-card sentence about BOS."""
    token = f"`{record['bos_token']}`" if record.get("bos_token") else "none"
    how = "adds" if record.get("adds_bos") else "does not add"
    why = (
        "like the base model's tokenizer (`add_bos: base`)"
        if record.get("mode") == "base"
        else "like the tokenizer source (`add_bos: source`)"
    )
    text = f"BOS: the output tokenizer {how} a BOS token (BOS token: {token}) {why}."
    if record.get("note"):
        text += f" Note: {record['note']}."
    return text
