"""Rows for ``kind: tool`` tokens: the re-initialization prior from the frozen model.

The prior needs the model's forward pass over the tool's description, so the model is loaded
here (once per path, float32) — only recipes with tool tokens pay for it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import transformers
from mergekit.common import ModelReference

from mergekit_tokenplug.methods.base import EstimationProblem
from mergekit_tokenplug.methods.tool import ToolParams, estimate_tool
from mergekit_tokenplug.seam.schema import ToolTokenSource
from mergekit_tokenplug.tooltokens.train import pooled_hidden_states

LOG = logging.getLogger(__name__)
# A description is a few sentences; a long one costs a forward pass quadratic in its length
# (one native call that a signal cannot stop), so the prior reads at most this many tokens.
MAX_TEXT_TOKENS = 2048


@functools.lru_cache(maxsize=2)
def _frozen_model(path: str, trust_remote_code: bool) -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return model.eval().requires_grad_(False)


def fit_context(tool: ToolTokenSource, tokenizer: Any, config: Any) -> str:
    """The tool's text, cut to the model's context (and ``MAX_TEXT_TOKENS``): the prior is one
    forward pass over it, and a longer text would run on positions the model never learned."""
    text = tool.text()
    # the model's position limit: the tokens it reads in one forward pass
    text_config = getattr(config, "text_config", None) or config
    limits = (getattr(c, "max_position_embeddings", None) for c in (config, text_config))
    context = next((n for n in limits if isinstance(n, int) and n > 0), 2048)
    limit = min(context, MAX_TEXT_TOKENS)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return text
    past = (
        f"the model's context of {context}"
        if limit == context
        else f"the {limit} tokens a prior reads (the model's context is {context})"
    )
    LOG.warning(
        "tool token %r: its name and description are %d tokens, past %s; the prior reads the first %d",
        tool.name or "",
        len(ids),
        past,
        limit,
    )
    return tokenizer.decode(ids[:limit])


def tool_token_rows(
    *,
    model: ModelReference,
    tokenizer: Any,
    matrix: torch.Tensor,
    role: str,
    tools: list[ToolTokenSource],
    split_base: Any,
    trust_remote_code: bool = False,
) -> torch.Tensor:
    """``(len(tools), d)`` rows in ``matrix``'s space.

    Output head (and the single matrix of a tied model): the scaled pooled-description prior.
    Input embeddings of an untied model: mean of the description's subword rows.
    """
    config = model.config(trust_remote_code=trust_remote_code)
    texts = [fit_context(t, tokenizer, config) for t in tools]
    device = matrix.device
    tied = bool(getattr(config, "tie_word_embeddings", False))

    def forward(batch: list[str]) -> torch.Tensor:
        net = _frozen_model(model.model.path, trust_remote_code)
        return pooled_hidden_states(net, tokenizer, batch, "cpu").to(device)

    pieces = split_base(texts)
    prior_role = "output" if role == "output" or tied else "input"
    rows = torch.empty((len(tools), matrix.shape[1]), dtype=torch.float32, device=device)
    for scale in sorted({t.scale for t in tools}):  # the prior's scale is set per token
        idx = [i for i, t in enumerate(tools) if t.scale == scale]
        problem = EstimationProblem(
            base=matrix.float(),
            anchor_ids=torch.empty(0, dtype=torch.long, device=device),
            n_targets=len(idx),
            target_texts=[texts[i] for i in idx],
            target_pieces=[pieces[i] for i in idx],
            model_forward=forward,
            role=prior_role,
            label=f"tool tokens {model.model.path}",
        )
        rows[torch.tensor(idx, device=device)] = estimate_tool(
            problem, ToolParams(scale=scale)
        ).float()
    return rows
