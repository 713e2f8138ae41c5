"""Rows for ``kind: tool`` tokens: the re-initialization prior from the frozen model.

The prior needs the model's forward pass over the tool's description, so the model is loaded
here (once per path, float32) — only recipes with tool tokens pay for it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import transformers
from mergekit.common import ModelReference

from mergekit_tokenplug.methods.base import EstimationProblem
from mergekit_tokenplug.methods.tool import ToolParams, estimate_tool
from mergekit_tokenplug.seam.schema import ToolTokenSource
from mergekit_tokenplug.tooltokens.train import pooled_hidden_states


@functools.lru_cache(maxsize=2)
def _frozen_model(path: str, trust_remote_code: bool) -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return model.eval().requires_grad_(False)


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
    texts = [t.text() for t in tools]
    device = matrix.device
    tied = bool(
        getattr(model.config(trust_remote_code=trust_remote_code), "tie_word_embeddings", False)
    )

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
