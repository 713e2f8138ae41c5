"""CW2V — constrained word2vec (arXiv 2407.05841): learned convex mixtures of old rows.

Each new row is ``softmax(A1 @ A2)[t] @ E_old``: a convex combination of the model's own rows,
so a new output row can never out-score every old token for any hidden state (the safety
argument behind mean initialization, Hewitt 2021). Only the low-rank mixing
logits are trained, with skip-gram negative sampling on a corpus tokenized by the *new*
tokenizer.

Following the authors' code (https://github.com/AI4Bharat/VocabAdaptation_LLM, branch
``CW2V``, ``Constrained_word2vec_training/cw2v_llama.py``: ``Word2Vec.forward`` and
``Word2VecDataset``):

- **joint input/output mixing**: two pairs of logits, ``A_W`` for the input embeddings and
  ``A_V`` for the output head, trained together in one loss. Centres are rows of the
  combined input matrix (old rows + mixed new rows), contexts and negatives rows of the
  combined output matrix, so **new tokens are centres, contexts and negatives** alike.
  The kernel returns the mixing of its own matrix (``problem.role``); the other one is
  ``problem.context_matrix`` (the same matrix for a tied model).
- **random start**: every logit factor starts uniform in [0, 1) (``torch.rand``), a random
  convex combination, not the mean row.
- **frequent-token subsampling** of centres: an occurrence is kept with probability
  ``min(1, sqrt(subsample * N / count))`` (the authors drop with ``1 - sqrt(threshold /
  count)`` and ``threshold = 2`` counts on their corpus; here the threshold is a fraction of
  the corpus size N so it scales with the corpus). Drawn once, when the pairs are built.
- negatives from unigram^0.75 over every token with a row (old and new), ``negatives`` per
  pair; fixed window ``window`` on each side; Adam at ``lr``; ``epochs`` passes; batches of
  ``batch_size`` pairs (authors: window 5, 5 negatives, lr 3e-4, 5 epochs, batch 4096,
  rank 1024 for 7B models; ``rank`` 64 here, for models with d <= 2048).

Departures (documented because they change results):

- the standard SGNS loss ``-log s(c.x) - sum_k log s(-c.n_k)``; the authors' code sums the
  negative scores before the log-sigmoid (``-log s(-sum_k c.n_k)``), which is not
  word2vec's objective.
- ``E_old`` is the ``mix_rows`` old rows that occur most often in the corpus (``None``: every
  row, the authors' choice). On a 262k vocabulary mixing every row costs
  ``|batch tokens| x 262k x (r + d)`` flops a step; rows the corpus never shows get no
  training signal anyway.
- pairs with two old tokens are skipped (their loss has no gradient), and a target with no
  pair in the corpus gets the mean row (safe) rather than its untrained random mixture.
- Determinism: rows gathered for a batch go through a one-hot matmul, not an index whose
  backward accumulates in thread order on CPU.
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
from mergekit_tokenplug.resources.corpus import CORPUS_KEY

LOG = logging.getLogger(__name__)


class CW2VParams(MethodParams):
    """Parameters of ``cw2v`` (the corpus is resolved to token ids by the seam)."""

    corpus: list[str] = pydantic.Field(min_length=1, description="text files or globs")
    rank: int = pydantic.Field(64, ge=1, description="rank r of the mixing logits A1 @ A2")
    epochs: int = pydantic.Field(5, ge=1, description="passes over the skip-gram pairs")
    window: int = pydantic.Field(5, ge=1, description="context window on each side")
    negatives: int = pydantic.Field(5, ge=1, description="negative samples per pair")
    lr: float = pydantic.Field(3e-4, gt=0, description="Adam learning rate")
    batch_size: int = pydantic.Field(4096, ge=1, description="pairs per step")
    subsample: float = pydantic.Field(
        1e-3,
        ge=0,
        description="frequent-token subsampling threshold, a fraction of the corpus (0 = off)",
    )
    mix_rows: int | None = pydantic.Field(
        8192, ge=1, description="old rows mixed: the most frequent in the corpus (null = all)"
    )
    warn_below: int = pydantic.Field(
        5, ge=0, description="new tokens seen fewer times in the corpus are reported as thin"
    )
    seed: int | None = pydantic.Field(None, description="overrides the problem's seed")


@dataclass
class CW2VResult:
    """Trained mixing logits of the problem's own matrix plus what turns them into rows."""

    a1: torch.Tensor  # (T, r)
    a2: torch.Tensor  # (r, M)
    old_row_ids: torch.Tensor  # (M,) rows of problem.base being mixed
    trained: torch.Tensor  # (T,) bool: targets that occur in at least one pair
    counts: torch.Tensor  # (T,) long: occurrences of each target in the corpus


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


def combined_ids(
    seqs: list[torch.Tensor], out_to_base: torch.Tensor, out_to_target: torch.Tensor, n_old: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus as one flat sequence of *combined* ids (old row ``i`` -> ``i``, target ``t``
    -> ``n_old + t``, anything else -1) and the sequence index of each position."""
    device = out_to_base.device
    flat = torch.cat([s.to(device) for s in seqs])
    seq_id = torch.repeat_interleave(
        torch.arange(len(seqs), device=device),
        torch.tensor([s.numel() for s in seqs], device=device),
    )
    in_range = (flat >= 0) & (flat < out_to_base.numel())
    safe = torch.where(in_range, flat, 0)
    base, tgt = out_to_base[safe], out_to_target[safe]
    ids = torch.where(base >= 0, base, torch.where(tgt >= 0, tgt + n_old, -1))
    return torch.where(in_range, ids, -1), seq_id


def skipgram_pairs(
    ids: torch.Tensor,
    seq_id: torch.Tensor,
    n_old: int,
    window: int,
    keep_centre: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, context) pairs of combined ids within ``window`` in the same sequence (of at
    least 2 positions), where at least one is a new token (``>= n_old``). ``keep_centre`` (bool
    per position) is the subsampling draw. Order: by distance, then position (deterministic)."""
    centres, contexts = [], []
    n = ids.numel()
    ok = ids >= 0
    centre_ok = ok & keep_centre if keep_centre is not None else ok
    for k in range(1, min(window, n - 1) + 1):
        same = seq_id[:-k] == seq_id[k:]
        # left token as centre, right as context; then the reverse direction
        for c, x, c_ok, x_ok in (
            (ids[:-k], ids[k:], centre_ok[:-k], ok[k:]),
            (ids[k:], ids[:-k], centre_ok[k:], ok[:-k]),
        ):
            keep = same & c_ok & x_ok & ((c >= n_old) | (x >= n_old))
            centres.append(c[keep])
            contexts.append(x[keep])
    return torch.cat(centres), torch.cat(contexts)


def subsample_mask(
    ids: torch.Tensor, n_ids: int, threshold: float, gen: torch.Generator
) -> torch.Tensor | None:
    """Per position: keep with probability ``min(1, sqrt(threshold * N / count))``."""
    if threshold <= 0:
        return None
    valid = ids >= 0
    counts = torch.bincount(ids[valid], minlength=n_ids).double()
    total = float(valid.sum())
    keep_p = torch.ones(ids.shape, dtype=torch.float64, device=ids.device)
    c = counts[ids[valid]]
    keep_p[valid] = torch.sqrt(threshold * total / c).clamp(max=1.0)
    draw = torch.rand(ids.shape, generator=gen, device=ids.device, dtype=torch.float64)
    return draw < keep_p


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


class _Mixing:
    """Mixing logits ``A1 (T x r)``, ``A2 (r x M)`` over the old rows ``E[mix]`` of one matrix."""

    def __init__(self, matrix: torch.Tensor, mix: torch.Tensor, t: int, rank: int, gen):
        dev = matrix.device
        self.old = matrix  # (V_old, d), frozen
        self.mixed = matrix.index_select(0, mix)  # (M, d)
        self.a1 = torch.rand(t, rank, device=dev, generator=gen).requires_grad_(True)
        self.a2 = torch.rand(rank, mix.numel(), device=dev, generator=gen).requires_grad_(True)

    def rows(self, targets: torch.Tensor) -> torch.Tensor:
        """New rows of ``targets`` (indices into the T new tokens), differentiable."""
        return torch.softmax(self.a1[targets] @ self.a2, dim=-1) @ self.mixed

    def gather(self, ids: torch.Tensor, n_old: int) -> torch.Tensor:
        """Rows of combined ids: old rows as they are, new rows through the mixing."""
        flat = ids.reshape(-1)
        is_new = flat >= n_old
        out = self.old[torch.where(is_new, 0, flat)]
        if bool(is_new.any()):
            uniq, inv = torch.unique(flat[is_new] - n_old, return_inverse=True)
            onehot = F.one_hot(inv, uniq.numel()).to(out.dtype)
            new = onehot @ self.rows(uniq)  # repeated tokens: a fixed-order matmul backward
            out = out.masked_scatter(is_new.unsqueeze(1).expand_as(out), new)
        return out.reshape(*ids.shape, -1)


def _mix_ids(ids: torch.Tensor, n_old: int, limit: int | None) -> torch.Tensor:
    """Old rows to mix: the ``limit`` most frequent in the corpus (ties: lower row), or all."""
    device = ids.device
    if limit is None or limit >= n_old:
        return torch.arange(n_old, device=device)
    old = ids[(ids >= 0) & (ids < n_old)]
    counts = torch.bincount(old, minlength=n_old)
    present = int((counts > 0).sum())
    if present == 0:
        return torch.arange(n_old, device=device)
    # stable sort by count descending keeps lower rows first among ties
    order = torch.sort(-counts, stable=True).indices[: min(limit, present)]
    return torch.sort(order).values


def cw2v_train(problem: EstimationProblem, params: CW2VParams) -> CW2VResult:
    """Train the input and output mixing jointly; return the one of ``problem.role``."""
    seqs = _corpus_ids(problem)
    device = problem.device
    out_to_base = _extra(problem, "out_to_base").to(device, torch.long)
    out_to_target = _extra(problem, "out_to_target").to(device, torch.long)
    ctx_matrix = _extra(problem, "context_matrix").to(device, torch.float32)
    own = problem.base.to(torch.float32)
    n_old, t = own.shape[0], problem.n_targets
    if ctx_matrix.shape[0] != n_old:
        raise InputError(f"cw2v: context_matrix has {ctx_matrix.shape[0]} rows, base has {n_old}")
    if ctx_matrix.shape[1] != own.shape[1]:
        raise InputError(
            f"cw2v: context_matrix width {ctx_matrix.shape[1]} != base width {own.shape[1]}"
        )
    out_to_base = torch.where(out_to_base < n_old, out_to_base, torch.full_like(out_to_base, -1))
    gen = (
        problem.generator(offset=2407)
        if params.seed is None
        else torch.Generator(device=device).manual_seed(int(params.seed))
    )
    ids, seq_id = combined_ids(seqs, out_to_base, out_to_target, n_old)
    counts = torch.bincount(ids[ids >= n_old] - n_old, minlength=t)
    mix = _mix_ids(ids, n_old, params.mix_rows)
    w_in, w_out = (own, ctx_matrix) if problem.role != "output" else (ctx_matrix, own)
    mix_in = _Mixing(w_in, mix, t, params.rank, gen)
    mix_out = _Mixing(w_out, mix, t, params.rank, gen)
    mine = mix_in if problem.role != "output" else mix_out

    keep = subsample_mask(ids, n_old + t, params.subsample, gen)
    centres, contexts = skipgram_pairs(ids, seq_id, n_old, params.window, keep)
    if centres.numel() == 0 or params.epochs == 0:
        if params.epochs > 0:
            LOG.warning(
                "cw2v %s: no pair with a new token in the corpus; new rows stay at the mean row",
                problem.label,
            )
        untrained = torch.zeros(t, dtype=torch.bool, device=device)  # every row is the mean row
        return CW2VResult(mine.a1.detach(), mine.a2.detach(), mix, untrained, counts)
    trained = torch.isin(
        torch.arange(n_old, n_old + t, device=device), torch.cat([centres, contexts])
    )
    weights = torch.bincount(ids[ids >= 0], minlength=n_old + t).double().pow(0.75)
    weights = (weights / weights.sum()).float()

    opt = torch.optim.Adam([mix_in.a1, mix_in.a2, mix_out.a1, mix_out.a2], lr=params.lr)
    n_pairs = centres.numel()
    bar = tqdm(
        total=math.ceil(n_pairs / params.batch_size) * params.epochs,
        desc=f"cw2v {problem.label}".strip(),
        disable=not problem.show_progress,
        unit="step",
    )
    for epoch in range(params.epochs):
        order = torch.randperm(n_pairs, device=device, generator=gen)
        total = 0.0
        for start in range(0, n_pairs, params.batch_size):
            idx = order[start : start + params.batch_size]
            negs = torch.multinomial(
                weights, idx.numel() * params.negatives, replacement=True, generator=gen
            ).view(idx.numel(), params.negatives)
            loss = sgns_loss(
                mix_in.gather(centres[idx], n_old),
                mix_out.gather(contexts[idx], n_old),
                mix_out.gather(negs, n_old),
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        LOG.info(
            "cw2v %s epoch %d/%d: mean skip-gram loss %.5f (%d pairs)",
            problem.label,
            epoch + 1,
            params.epochs,
            total / n_pairs,
            n_pairs,
        )
    bar.close()
    return CW2VResult(mine.a1.detach(), mine.a2.detach(), mix, trained, counts)


def cw2v_mixing(
    problem: EstimationProblem, params: CW2VParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """The learned mixing weights ``(T x M)`` and the base rows they mix.

    Rows are non-negative and sum to 1; a target that trained nothing gets uniform weights
    over every base row (the mean row), returned as weights over ``old_row_ids`` only when
    those are all rows. Materializes the full matrix: for inspection and tests.
    """
    res = cw2v_train(problem, params)
    weights = torch.softmax(res.a1 @ res.a2, dim=-1)
    if not bool(res.trained.all()):
        n_old = problem.base.shape[0]
        if res.old_row_ids.numel() != n_old:
            raise ValueError("cw2v_mixing: untrained targets need mix_rows covering every row")
        weights[~res.trained] = 1.0 / n_old
    return weights, res.old_row_ids


ABSENT = "absent from the corpus"
NO_PAIR = "in no skip-gram pair (every occurrence subsampled or alone)"


def estimate_cw2v(problem: EstimationProblem, params: CW2VParams) -> api.Estimate:
    """New rows ``(T, d)`` as convex combinations of old rows, built in chunks; targets with
    no pair in the corpus get the mean row (reported as fallbacks, with the reason), targets
    seen fewer than ``warn_below`` times are reported as thin."""
    res = cw2v_train(problem, params)
    e_old = problem.base.to(torch.float32)[res.old_row_ids]
    out = problem.mean_row().expand(problem.n_targets, -1).clone()
    chunk = min(params.batch_size, 1024)
    for start in range(0, problem.n_targets, chunk):
        sl = slice(start, start + chunk)
        rows = torch.softmax(res.a1[sl] @ res.a2, dim=-1) @ e_old
        out[sl] = torch.where(res.trained[sl].unsqueeze(1), rows, out[sl])
    seen = res.counts > 0
    rare = seen & (res.counts < params.warn_below) & res.trained
    return api.Estimate(
        out,
        fallback={ABSENT: ~seen, NO_PAIR: seen & ~res.trained},
        thin={f"seen fewer than {params.warn_below} times in the corpus": rare},
    )


def cw2v_cost(q: api.CostQuery) -> tuple[int, float | None]:
    """A1 (T, r) and A2 (r, V) with their gradients and two Adam moments, plus the rows."""
    rank = int(getattr(q.params, "rank", 64))
    rows = q.targets * q.dim_model * api.FP32
    return 4 * rank * (q.targets + q.model_rows) * api.FP32 + rows, None


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
