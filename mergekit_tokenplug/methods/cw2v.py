"""CW2V — constrained word2vec (arXiv 2407.05841): learned convex mixtures of old rows.

Each new row is ``softmax(A1 @ A2)[t] @ E_old``: a convex combination of the model's own rows,
so a new output row can never out-score every old token for any hidden state (the safety
argument behind mean initialization, Hewitt 2021). Only the low-rank mixing
logits ``A1 (T x r)`` and ``A2 (r x |V_old|)`` are trained, with skip-gram negative sampling
on a corpus tokenized by the *new* tokenizer.

Choices (documented because the paper leaves them open):

- ``E_old`` is **every row of** ``problem.base`` (the paper's "old vocabulary"); the seam
  decides what ``base`` holds.
- ``A1`` starts at zero, so every new row starts *exactly* at the mean row (Hewitt's safe
  initialization) and a target that never occurs as a centre in the corpus stays there.
- Only pairs whose centre is a new token and whose context token has a base row train
  anything (old centres are frozen). Pairs whose context is itself new are **excluded**,
  and negatives are drawn from unigram^0.75 of the corpus counts restricted to tokens with
  a base row: contexts always come from the frozen ``context_matrix``.
- Memory: a step only materializes the mixing rows of the new tokens in its batch
  (``<= batch_size x |V_old|`` floats, ~200 MB at 1024 x 49k fp32, about three times that
  with autograd buffers); the final rows are produced in chunks of the same size. Cost per
  step is about ``2 * batch_size * |V_old| * (r + d)`` flops forward, twice that backward.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pydantic
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.methods import base as api
from mergekit_tokenplug.methods.base import EstimationProblem, MethodParams, MethodSpec, Need

LOG = logging.getLogger(__name__)
CORPUS_KEY = "tokenizer.approximation.corpus"


class CW2VParams(MethodParams):
    """Parameters of ``cw2v`` (the corpus is resolved to token ids by the seam)."""

    corpus: list[str] = pydantic.Field(min_length=1, description="text files or globs")
    rank: int = pydantic.Field(64, ge=1, description="rank r of the mixing logits A1 @ A2")
    epochs: int = pydantic.Field(3, ge=0, description="passes over the skip-gram pairs")
    window: int = pydantic.Field(5, ge=1, description="context window on each side")
    negatives: int = pydantic.Field(5, ge=1, description="negative samples per pair")
    lr: float = pydantic.Field(3e-4, gt=0, description="Adam learning rate")
    batch_size: int = pydantic.Field(1024, ge=1, description="pairs per step")
    seed: int | None = pydantic.Field(None, description="overrides the problem's seed")


@dataclass
class CW2VResult:
    """Trained mixing logits plus what is needed to turn them into rows."""

    a1: torch.Tensor  # (T, r)
    a2: torch.Tensor  # (r, V_old)
    old_row_ids: torch.Tensor  # (V_old,) rows of problem.base being mixed
    epoch_losses: list[float]  # mean skip-gram loss of each epoch


def _extra(problem: EstimationProblem, key: str) -> torch.Tensor:
    value = getattr(problem, key)
    if value is None:
        raise InputError(f"cw2v: the vocabulary seam did not supply {key}")
    return value


def _corpus_ids(problem: EstimationProblem) -> list[torch.Tensor]:
    if problem.corpus_ids is None:
        raise ConfigError(
            "the cw2v method needs a corpus (tokenizer.approximation.corpus: list of text files or globs)",
            where=CORPUS_KEY,
        )
    seqs = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in problem.corpus_ids]
    seqs = [s for s in seqs if s.numel() >= 2]
    if not seqs:
        raise ConfigError(
            "needs a non-empty text corpus (every file is empty or shorter than 2 tokens); "
            "give text files or globs that match real text",
            where=CORPUS_KEY,
        )
    return seqs


def skipgram_pairs(
    seqs: list[torch.Tensor],
    out_to_base: torch.Tensor,
    out_to_target: torch.Tensor,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (new-token centre, old-token context) pairs within ``window``, vectorised.

    Returns ``(centre_target_idx, context_base_row)``: indices into the targets and rows of
    the base/context matrix. Sequences are concatenated; pairs across boundaries are dropped.
    """
    device = out_to_base.device
    flat = torch.cat([s.to(device) for s in seqs])
    seq_id = torch.repeat_interleave(
        torch.arange(len(seqs), device=device),
        torch.tensor([s.numel() for s in seqs], device=device),
    )
    in_range = (flat >= 0) & (flat < out_to_base.numel())
    safe = torch.where(in_range, flat, torch.zeros_like(flat))
    tgt = torch.where(in_range, out_to_target[safe], torch.full_like(flat, -1))
    base = torch.where(in_range, out_to_base[safe], torch.full_like(flat, -1))
    centres, contexts = [], []
    n = flat.numel()
    for k in range(1, min(window, n - 1) + 1):
        same = seq_id[:-k] == seq_id[k:]
        # left token as centre, right as context; then the reverse direction
        for c_t, x_b in ((tgt[:-k], base[k:]), (tgt[k:], base[:-k])):
            keep = same & (c_t >= 0) & (x_b >= 0)
            centres.append(c_t[keep])
            contexts.append(x_b[keep])
    if not centres:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    return torch.cat(centres), torch.cat(contexts)


def negative_distribution(
    seqs: list[torch.Tensor], out_to_base: torch.Tensor, n_base: int
) -> torch.Tensor:
    """unigram^0.75 over base rows, from corpus counts of output ids that have a base row."""
    device = out_to_base.device
    flat = torch.cat([s.to(device) for s in seqs])
    flat = flat[(flat >= 0) & (flat < out_to_base.numel())]
    rows = out_to_base[flat]
    rows = rows[rows >= 0]
    counts = torch.bincount(rows, minlength=n_base).double()
    return counts.pow(0.75)


def sgns_loss(
    centre_vecs: torch.Tensor, pos_ctx: torch.Tensor, neg_ctx: torch.Tensor
) -> torch.Tensor:
    """Mean skip-gram negative-sampling loss.

    ``centre_vecs (B, d)``, ``pos_ctx (B, d)``, ``neg_ctx (B, K, d)``:
    ``-log s(c.x) - sum_k log s(-c.n_k)``.
    """
    pos = F.logsigmoid((centre_vecs * pos_ctx).sum(-1))
    neg = F.logsigmoid(-torch.einsum("bd,bkd->bk", centre_vecs, neg_ctx)).sum(-1)
    return -(pos + neg).mean()


def _generator(problem: EstimationProblem, params: CW2VParams) -> torch.Generator:
    if params.seed is None:
        return problem.generator(offset=2407)
    gen = torch.Generator(device=problem.device)
    gen.manual_seed(int(params.seed))
    return gen


def cw2v_train(problem: EstimationProblem, params: CW2VParams) -> CW2VResult:
    """Train the mixing logits of one matrix (one role) with skip-gram negative sampling."""
    seqs = _corpus_ids(problem)
    out_to_base = _extra(problem, "out_to_base").to(problem.device, torch.long)
    out_to_target = _extra(problem, "out_to_target").to(problem.device, torch.long)
    ctx_matrix = _extra(problem, "context_matrix").to(problem.device, torch.float32)
    e_old = problem.base.to(torch.float32)
    n_old, t = e_old.shape[0], problem.n_targets
    if ctx_matrix.shape[0] != n_old:
        raise InputError(f"cw2v: context_matrix has {ctx_matrix.shape[0]} rows, base has {n_old}")
    if ctx_matrix.shape[1] != e_old.shape[1]:
        raise InputError(
            f"cw2v: context_matrix width {ctx_matrix.shape[1]} != base width {e_old.shape[1]}"
        )
    gen = _generator(problem, params)
    device = problem.device
    old_row_ids = torch.arange(n_old, device=device)
    a1 = torch.zeros(t, params.rank, device=device, requires_grad=True)
    a2 = torch.randn(params.rank, n_old, device=device, generator=gen).requires_grad_(True)

    centres, contexts = skipgram_pairs(seqs, out_to_base, out_to_target, params.window)
    weights = negative_distribution(seqs, out_to_base, n_old)
    if centres.numel() == 0 or weights.sum() == 0 or params.epochs == 0:
        if params.epochs > 0:
            LOG.warning(
                "cw2v %s: no (new token, known context) pair in the corpus; new rows stay at the mean row",
                problem.label,
            )
        return CW2VResult(a1.detach(), a2.detach(), old_row_ids, [])
    weights = (weights / weights.sum()).float()

    opt = torch.optim.Adam([a1, a2], lr=params.lr)
    n_pairs = centres.numel()
    steps_per_epoch = math.ceil(n_pairs / params.batch_size)
    epoch_losses: list[float] = []
    bar = tqdm(
        total=steps_per_epoch * params.epochs,
        desc=f"cw2v {problem.label}".strip(),
        disable=not problem.show_progress,
        unit="step",
    )
    for epoch in range(params.epochs):
        order = torch.randperm(n_pairs, device=device, generator=gen)
        total = 0.0
        for start in range(0, n_pairs, params.batch_size):
            idx = order[start : start + params.batch_size]
            c_t, x_b = centres[idx], contexts[idx]
            negs = torch.multinomial(
                weights, idx.numel() * params.negatives, replacement=True, generator=gen
            ).view(idx.numel(), params.negatives)
            uniq, inv = torch.unique(c_t, return_inverse=True)
            mix = torch.softmax(a1[uniq] @ a2, dim=-1)  # (U, V_old): only the batch's rows
            # One-hot matmul instead of indexing: the backward of an index with repeated
            # entries accumulates with threads on CPU in varying order (not bit-reproducible);
            # a matmul's reduction order is fixed.
            onehot = torch.nn.functional.one_hot(inv, uniq.numel()).to(mix.dtype)
            centre_vecs = onehot @ (mix @ e_old)
            loss = sgns_loss(centre_vecs, ctx_matrix[x_b], ctx_matrix[negs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        epoch_losses.append(total / n_pairs)
        LOG.info(
            "cw2v %s epoch %d/%d: mean skip-gram loss %.5f (%d pairs)",
            problem.label,
            epoch + 1,
            params.epochs,
            epoch_losses[-1],
            n_pairs,
        )
    bar.close()
    return CW2VResult(a1.detach(), a2.detach(), old_row_ids, epoch_losses)


def cw2v_mixing(
    problem: EstimationProblem, params: CW2VParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """The learned mixing weights ``(T x V_old)`` and the base rows they mix.

    Rows are non-negative and sum to 1; ``estimate_cw2v`` returns ``weights @ base[old]``.
    Materializes the full matrix: meant for inspection and tests, not huge vocabularies.
    """
    res = cw2v_train(problem, params)
    return torch.softmax(res.a1 @ res.a2, dim=-1), res.old_row_ids


def estimate_cw2v(problem: EstimationProblem, params: CW2VParams) -> torch.Tensor:
    """New rows ``(T, d)`` as convex combinations of the old rows, built in chunks."""
    res = cw2v_train(problem, params)
    e_old = problem.base.to(torch.float32)[res.old_row_ids]
    out = torch.empty(problem.n_targets, e_old.shape[1], device=problem.device)
    chunk = max(1, params.batch_size)
    with torch.no_grad():
        for start in range(0, problem.n_targets, chunk):
            mix = torch.softmax(res.a1[start : start + chunk] @ res.a2, dim=-1)
            out[start : start + chunk] = mix @ e_old
    return out


def cw2v_cost(q: api.CostQuery) -> tuple[int, float | None]:
    """A1 (T, r) and A2 (r, V) with their gradients and two Adam moments, plus the rows."""
    rank = int(getattr(q.params, "rank", 64))
    return 4 * rank * (q.targets + q.model_rows) * api.FP32 + q.targets * q.dim_model * api.FP32, None


SPEC = MethodSpec(
    name="cw2v",
    params=CW2VParams,
    estimate=estimate_cw2v,
    summary="convex mixtures of old rows learned by skip-gram on a corpus (CW2V)",
    needs=frozenset({Need.CORPUS}),
    shardable=False,  # the mixing matrices are trained jointly over all new rows
    fallback="mean",
    cost=cw2v_cost,
)
