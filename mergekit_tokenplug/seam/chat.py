"""The chat-template decision for a plugin recipe (run, ``plan`` and the output files).

Reads the base model's and the tokenizer source's tokenizers (never weights) and asks
:func:`mergekit_tokenplug.vocab.chat.plan_chat`; :func:`write_chat_template` puts the chosen
template into the output directory in place of the one mergekit saved with the tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import transformers
from mergekit.common import ModelReference

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.output.bos import adds_bos
from mergekit_tokenplug.vocab.chat import ChatPlan, plan_chat

TEMPLATE_FILE = "chat_template.jinja"
EXAMPLE = [{"role": "user", "content": "Hello!"}]


def convention_model(config: Any) -> ModelReference:
    """The model whose conventions (BOS, chat template) the output keeps."""
    return config.base_model or sorted(config.referenced_models(), key=str)[0]


def _load(ref: ModelReference, where: str, trust_remote_code: bool) -> Any:
    try:
        return transformers.AutoTokenizer.from_pretrained(
            ref.model.path, revision=ref.model.revision, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise InputError(
            f"cannot load a tokenizer from {ref.model.path} ({type(exc).__name__}: {first}); expected a directory with tokenizer.json or tokenizer.model",
            where=where,
        ) from None


def chat_plan(config: Any, trust_remote_code: bool = False) -> ChatPlan:
    tok_cfg = config.tokenizer
    base = convention_model(config)
    base_tok = _load(base, f"models: {base.model.path}", trust_remote_code)
    source = tok_cfg.source
    source_tok = base_tok
    if isinstance(source, ModelReference):
        source_tok = _load(source, "tokenizer.source", trust_remote_code)
    return plan_chat(
        tok_cfg.chat_template,
        explicit="chat_template" in tok_cfg.model_fields_set,
        recipe_template=getattr(config, "chat_template", None),
        base_tok=base_tok,
        source_tok=source_tok,
        base_name=str(base),
        source_name=str(source),
        base_adds_bos=tok_cfg.add_bos == "base" and adds_bos(base_tok),
    )


def write_chat_template(out_dir: Path, plan: ChatPlan) -> dict[str, Any]:
    """Replace the template mergekit saved with the chosen one; return the manifest record
    (with a rendered one-message example and whether its tokens start with two BOS)."""
    if plan.mode != "recipe":
        for name in (TEMPLATE_FILE, "chat_template.json"):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / "chat_templates", ignore_errors=True)
        cfg_path = out_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if cfg.pop("chat_template", None) is not None:
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", "utf-8")
        if plan.template is not None:
            (out_dir / TEMPLATE_FILE).write_text(plan.template, encoding="utf-8")
    record = plan.record()
    tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(EXAMPLE, tokenize=False, add_generation_prompt=True)
        ids = tok(text)["input_ids"]
        bos = tok.bos_token_id
        record["example"] = text
        record["doubled_bos"] = bool(bos is not None and ids[:2] == [bos, bos])
    return record
