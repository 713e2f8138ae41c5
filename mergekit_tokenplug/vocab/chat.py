"""The output's chat template, chosen on purpose (``tokenizer.chat_template``).

A transplant takes the tokenizer source's vocabulary, and with it stock mergekit copies the
source's chat template: a base model with no template of its own would get the donor's
(SmolLM2's ChatML, with its "You are a helpful AI assistant named SmolLM" system prompt) without
a word. Here the template is a decision:

* ``base`` (default): the base model's own template, re-expressed with the new tokenizer:
  its role variables (``bos_token``) render the output's role tokens (whose rows are the base's
  by role) and the special tokens it writes literally (``<start_of_turn>``) are kept as special
  tokens of the output, whose rows the base has under the same string; no template when the
  base has none.
* ``source``: the tokenizer source's template, default system prompt included.
* ``none``: no template.

The BOS the output tokenizer adds (like the base's, ``add_bos: base``) is never one of the
template's turn markers: when the source's BOS token is a marker the template writes (SmolLM2's
``<|im_start|>``), the output gets the base model's own BOS token instead, so
``tok(tok.apply_chat_template(msgs, tokenize=False))`` does not start with two BOS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from mergekit_tokenplug.errors import ConfigError

MIN_MARKER = 3  # shorter special tokens are not looked for in a template's text


@dataclass(frozen=True)
class ChatPlan:
    mode: str  # base | source | none | recipe (mergekit's own top-level chat_template)
    template: str | None  # what the output gets (None: no template; mode recipe: mergekit's)
    markers: tuple[str, ...] = ()  # special tokens the template writes, kept as special tokens
    bos_token: str | None = None  # the BOS the output gets instead of a turn marker
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """For the manifest and ``plan``."""
        digest = hashlib.sha256(self.template.encode()).hexdigest() if self.template else None
        return {
            "mode": self.mode,
            "template_sha256": digest,
            "markers": list(self.markers),
            "bos_token": self.bos_token,
            "note": self.note,
            **self.extra,
        }


def template_of(tokenizer: Any) -> str | None:
    """A tokenizer's default chat template (the ``default`` one of a named set)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def literal_specials(tokenizer: Any, template: str) -> tuple[str, ...]:
    """The tokenizer's special tokens that the template writes literally, in id order."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = [t.content for _, t in sorted(decoder.items()) if t.special]
    specials += [str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []]
    found = dict.fromkeys(t for t in specials if len(t) >= MIN_MARKER and t in template)
    return tuple(found)


def plan_chat(
    mode: str,
    *,
    explicit: bool,
    recipe_template: str | None,
    base_tok: Any,
    source_tok: Any,
    base_name: str,
    source_name: str,
    base_adds_bos: bool,
) -> ChatPlan:
    """Decide the output's template from the two tokenizers (see the module docstring)."""
    if recipe_template:
        if explicit:
            raise ConfigError(
                "the recipe sets both mergekit's top-level chat_template and "
                "tokenizer.chat_template; expected one of them",
                where="tokenizer.chat_template",
            )
        return ChatPlan("recipe", None, note="the recipe's top-level chat_template (mergekit's)")
    if mode == "none":
        return ChatPlan("none", None, note="no chat template (tokenizer.chat_template: none)")
    owner, who = (base_tok, f"the base model {base_name}")
    if mode == "source":
        owner, who = (source_tok, f"the tokenizer source {source_name}")
    template = template_of(owner)
    if template is None:
        return ChatPlan(mode, None, note=f"no chat template: {who} has none")
    markers = literal_specials(owner, template)
    bos = None
    out_bos = getattr(source_tok, "bos_token", None)
    note = f"the chat template of {who}"
    if base_adds_bos and out_bos and out_bos in template:
        base_bos = getattr(base_tok, "bos_token", None)
        if base_bos and base_bos != out_bos:
            bos = str(base_bos)
            note += (
                f"; BOS is the base model's {bos} (the template writes {out_bos}, the source's "
                "BOS, as a turn marker)"
            )
    return ChatPlan(mode, template, markers, bos, note)
