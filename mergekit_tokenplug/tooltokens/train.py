"""Tool-token steps that run a model: pooled description states, adding the tokens and
initializing their rows. Training only those rows is ``heal --rows tool``
(``learn-tool-tokens``), in ``mergekit_tokenplug/heal``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.heal.train import is_tied
from mergekit_tokenplug.methods.tool import Scale, tool_input_rows, tool_prior


@torch.no_grad()
def pooled_hidden_states(
    model, tokenizer, texts: Sequence[str], device: torch.device | str, batch_size: int = 16
) -> torch.Tensor:
    """Mean over each text's tokens of the last hidden state (after the final norm in HF
    Llama/Gemma), float32 ``(n, d)``. Texts are encoded without special tokens so a BOS row
    does not dilute the description; padding is done here, so no pad token is needed."""
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        enc = [
            tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in texts[start : start + batch_size]
        ]
        if any(len(e) == 0 for e in enc):
            raise InputError(
                "tool description is empty after tokenization; give a non-empty description"
            )
        ids = pad_sequence([torch.tensor(e) for e in enc], batch_first=True).to(device)
        mask = pad_sequence([torch.ones(len(e), dtype=torch.long) for e in enc], batch_first=True)
        mask = mask.to(device)
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = states.hidden_states[-1]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * m).sum(1) / m.sum(1)).float())
    return torch.cat(out)


def add_tool_tokens(model, tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` to the tokenizer (as unsplittable added tokens), grow the model's
    matrices if needed, and return their ids. Their rows must be initialized afterwards."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in tokens])
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return [int(i) for i in ids]


@torch.no_grad()
def init_tool_rows(
    model,
    tokenizer,
    tool_token_ids: Sequence[int],
    descriptions: Sequence[str],
    *,
    init: Literal["mean", "prior"],
    device: torch.device | str,
    scale: Scale = "sqrt_d",
) -> dict[str, torch.Tensor | None]:
    """Write initial rows for the tool tokens and return the priors for regularization.

    ``mean``: mean of the other rows of each matrix. ``prior``: output row = scaled pooled
    description state (:func:`tool_prior`), input row = mean of the description's subword
    embeddings; a tied model gets the output prior for its single row (the paper's prior is
    the tool token's output embedding). Returns ``{"prior_in", "prior_out"}`` (None where
    the matrix does not exist separately)."""
    ids = torch.tensor(list(tool_token_ids), dtype=torch.long)
    emb = model.get_input_embeddings().weight
    tied = is_tied(model)
    head = emb if tied else model.get_output_embeddings().weight
    keep = torch.ones(emb.shape[0], dtype=torch.bool)
    keep[ids] = False
    if init == "mean":
        prior_in = emb[keep.to(emb.device)].float().mean(0).expand(len(ids), -1).clone()
        prior_out = head[keep.to(head.device)].float().mean(0).expand(len(ids), -1).clone()
    elif init == "prior":
        pooled = pooled_hidden_states(model, tokenizer, list(descriptions), device)
        prior_out = tool_prior(pooled.to(head.device), head[keep.to(head.device)], scale)
        pieces = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in descriptions]
        prior_in = tool_input_rows(pieces, emb.float())
    else:
        raise InputError(f"unknown tool-token init {init!r}; expected 'mean' or 'prior'")
    if not tied:
        emb[ids.to(emb.device)] = prior_in.to(emb.device, emb.dtype)
    head[ids.to(head.device)] = prior_out.to(head.device, head.dtype)  # tied: the single row
    return {"prior_in": None if tied else prior_in, "prior_out": prior_out}
