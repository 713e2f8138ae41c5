"""Everything tool-token related that runs a model: pooled description states, adding the
tokens, initializing their rows, and training only those rows.

Training touches nothing but the tool rows: all parameters are frozen, the gradient of the
embedding (and untied lm_head) matrix is read only at the tool rows, an optimizer updates a
small copy of those rows, and the copy is written back into exactly those rows. Every other
weight stays bit-identical (the tests check it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.methods.tool import (
    Scale,
    tool_input_rows,
    tool_prior,
    tool_token_regularizer,
)

LOG = logging.getLogger(__name__)
IGNORE = -100


def _is_tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is None or head.weight is model.get_input_embeddings().weight


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
        width = max(len(e) for e in enc)
        ids = torch.zeros(len(enc), width, dtype=torch.long)
        mask = torch.zeros(len(enc), width, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        ids, mask = ids.to(device), mask.to(device)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[
            -1
        ]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * m).sum(1) / m.sum(1)).float())
    return torch.cat(out)


def add_tool_tokens(model, tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` to the tokenizer (as unsplittable added tokens), grow the model's
    matrices if needed, and return their ids. Their rows must be initialized afterwards."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in tokens])
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    current = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > current:
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
    tied = _is_tied(model)
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
    if tied:
        emb[ids.to(emb.device)] = prior_out.to(emb.device, emb.dtype)
        return {"prior_in": None, "prior_out": prior_out}
    emb[ids.to(emb.device)] = prior_in.to(emb.device, emb.dtype)
    head[ids.to(head.device)] = prior_out.to(head.device, head.dtype)
    return {"prior_in": prior_in, "prior_out": prior_out}


def encode_rows(
    tokenizer, rows: Sequence[dict], tool_ids: set[int], what: str
) -> list[tuple[list[int], list[int], int]]:
    """(prompt ids, completion ids, index in the sequence of the first tool token or -1)."""
    encoded = []
    for i, row in enumerate(rows):
        p = tokenizer(row["prompt"])["input_ids"]
        c = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        if not p or not c:
            raise InputError(f"{what} row {i}: empty prompt or completion after tokenization")
        first = next((j for j, t in enumerate(c) if t in tool_ids), -1)
        encoded.append((p, c, len(p) + first if first >= 0 else -1))
    return encoded


def _batch(items, pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(p) + len(c) for p, c, _ in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    tool_pos = torch.tensor([t for _, _, t in items], dtype=torch.long)
    for i, (p, c, _) in enumerate(items):
        seq = p + c
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(c)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
        "tool_pos": tool_pos.to(device),
    }


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, :-1].float(), labels[:, 1:]


@torch.no_grad()
def evaluate_tool_rows(
    model, encoded, tool_ids: Sequence[int], *, pad_id: int, device, batch_size: int = 16
) -> dict[str, float]:
    """Completion loss (mean token NLL) and, at the position before each row's first tool
    token: accuracy (argmax is that tool token), mean log-prob, mean 1-based rank."""
    model.eval()
    nll_sum, n_tok = 0.0, 0
    correct, logp_sum, rank_sum, n_rows = 0, 0.0, 0.0, 0
    for start in range(0, len(encoded), batch_size):
        b = _batch(encoded[start : start + batch_size], pad_id, device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        lg, lb = _shifted(logits, b["labels"])
        nll_sum += float(
            F.cross_entropy(
                lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
        )
        n_tok += int((lb != IGNORE).sum())
        has = b["tool_pos"] >= 1
        if bool(has.any()):
            rows = torch.nonzero(has).squeeze(1)
            pos = b["tool_pos"][rows]
            target = b["input_ids"][rows, pos]
            at = logits[rows, pos - 1].float()  # predicts the token at `pos`
            tgt_logit = at.gather(1, target[:, None])
            correct += int((at.argmax(-1) == target).sum())
            logp_sum += float(torch.log_softmax(at, -1).gather(1, target[:, None]).sum())
            rank_sum += float(((at > tgt_logit).sum(-1) + 1).float().sum())
            n_rows += int(rows.numel())
    out = {"eval_loss": nll_sum / max(n_tok, 1)}
    if n_rows:
        out.update(
            tool_acc=correct / n_rows, tool_logprob=logp_sum / n_rows, tool_rank=rank_sum / n_rows
        )
    return out


def learn_tool_tokens(
    model,
    tokenizer,
    tool_token_ids: Sequence[int],
    train_rows: Sequence[dict],
    eval_rows: Sequence[dict],
    *,
    steps: int,
    lr: float = 1e-2,
    lam: float = 1e-2,
    prior_out: torch.Tensor | None = None,
    prior_in: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
    batch_size: int = 8,
    eval_every: int | None = None,
    eval_batch_size: int = 16,
    initial_eval: dict | None = None,
) -> dict:
    """Train only the tool tokens' rows (input embeddings and, if untied, lm_head) with the
    completion LM loss plus ``lam * ||rows - prior||_F`` (``lam = 0`` or no prior disables it).

    Returns ``{"tied", "tool_token_ids", "train_loss": [per step], "history": [eval dicts with
    "step"], "final": last eval}``; evaluation runs at step 0, every ``eval_every`` steps
    (default ``steps // 4``) and at the end; pass ``initial_eval`` (an earlier
    :func:`evaluate_tool_rows` result for the same rows) to skip the step-0 evaluation."""
    if not tool_token_ids:
        raise InputError("learn_tool_tokens: no tool token ids given")
    if not train_rows:
        raise InputError("learn_tool_tokens: no training rows")
    ids = torch.tensor(list(tool_token_ids), dtype=torch.long, device=device)
    tool_set = {int(i) for i in tool_token_ids}
    train = encode_rows(tokenizer, train_rows, tool_set, "train")
    evals = encode_rows(tokenizer, eval_rows, tool_set, "eval")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.to(device)
    tied = _is_tied(model)
    emb = model.get_input_embeddings().weight
    mats = [emb] if tied else [emb, model.get_output_embeddings().weight]
    priors = [prior_out if prior_out is not None else prior_in] if tied else [prior_in, prior_out]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    rows = [torch.nn.Parameter(m.detach()[ids].float().clone()) for m in mats]
    priors = [None if p is None else p.to(device, torch.float32) for p in priors]
    for m in mats:
        m.requires_grad_(True)
    opt = torch.optim.Adam(rows, lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    every = eval_every or max(1, steps // 4)
    if initial_eval is None:
        initial_eval = evaluate_tool_rows(
            model, evals, tool_token_ids, pad_id=pad_id, device=device, batch_size=eval_batch_size
        )
    history = [{"step": 0, **initial_eval}]
    train_loss: list[float] = []
    order: list[int] = []
    try:
        for step in tqdm(
            range(1, steps + 1), desc="tool tokens", disable=not show_progress, unit="step"
        ):
            if len(order) < batch_size:
                order += torch.randperm(len(train), generator=gen).tolist() * math.ceil(
                    batch_size / len(train)
                )
            pick, order = order[:batch_size], order[batch_size:]
            b = _batch([train[i] for i in pick], pad_id, device)
            model.eval()  # no dropout: the rows are the only thing that changes
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            lg, lb = _shifted(logits, b["labels"])
            lm = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=IGNORE)
            for m in mats:
                m.grad = None
            lm.backward()
            for r, m in zip(rows, mats, strict=True):
                r.grad = m.grad[ids].float().clone()
                m.grad = None
            reg_terms = [
                tool_token_regularizer(r, p, lam)
                for r, p in zip(rows, priors, strict=True)
                if p is not None and lam > 0
            ]
            reg = torch.stack(reg_terms).sum() if reg_terms else torch.zeros(())
            if reg_terms:
                reg.backward()
            opt.step()
            with torch.no_grad():
                for r, m in zip(rows, mats, strict=True):
                    m[ids] = r.to(m.dtype)
            train_loss.append(float(lm.detach()) + float(reg.detach()))
            if step % every == 0 or step == steps:
                ev = evaluate_tool_rows(
                    model,
                    evals,
                    tool_token_ids,
                    pad_id=pad_id,
                    device=device,
                    batch_size=eval_batch_size,
                )
                history.append({"step": step, "train_loss": train_loss[-1], **ev})
                LOG.info("tool tokens step %d: %s", step, history[-1])
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))
            p.grad = None
    return {
        "tied": tied,
        "tool_token_ids": [int(i) for i in tool_token_ids],
        "train_loss": train_loss,
        "history": history,
        "final": history[-1],
    }
