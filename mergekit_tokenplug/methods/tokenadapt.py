"""TokenAdapt hybrid initialization (arXiv 2505.09738).

Needs no donor model, only the new tokens' texts: a *local* estimate from the token's pieces
under the base tokenizer (weighted by text similarity and length share) is blended with a
*global* estimate from the token's nearest base-vocabulary neighbours in an auxiliary text
space.

Following the authors' code (https://github.com/Tinycompany-AI/tokenadapt, ``src/heuristics.py``):

- local: ``w = softmax(((softmax(cos / tau) + len_share) / 2) / tau)`` over the pieces, as in
  ``calculate_local_embedding_optimized_array`` (commit 14dc484, lines 201-209: the inner
  similarity softmax is tempered too). The later ``calculate_local_embedding`` (HEAD, line 190) drops
  the inner ``/ tau``; with cosines in [-1, 1] that softmax is nearly uniform, so similarity
  barely counts, which is why the tempered form is used here.
- global: ``softmax(sim / tau)`` over the ``top_k`` neighbours whose cosine is at least
  ``threshold``; when none is, the token gets no global estimate and the local one is used
  alone (``calculate_global_embedding``, HEAD lines 91-101: the threshold mask, renormalised
  weights, ``None`` when the mask is empty; ``--threshold`` default 0.0). A single kept
  neighbour gets weight 1.
- hybrid: ``(1 - beta) * local + beta * global`` (``tied.py`` line 101, ``global_weight``).

Departure: special tokens (and any row without text) are never global neighbours; the
authors index every vocabulary string, so ``<s>`` could become a neighbour of a new word.

The text space is a function ``embed_texts(list[str]) -> (n, e)`` supplied by the seam
in ``problem.embed_texts`` (a loaded sentence embedder); without one, the base
matrix itself serves: a text's vector is the mean of its pieces' rows (``self_space_embedder``).

Conventions: an empty base-vocabulary text marks a row that is never a neighbour, and a text
whose vector is zero (no pieces) has no similarity to anything. A token with neither a local
nor a global estimate gets the mean row (the documented fallback).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from mergekit_tokenplug.methods import base as api
from mergekit_tokenplug.methods.base import EstimationProblem, MethodParams, MethodSpec, Need
from mergekit_tokenplug.methods.baselines import mean_of_pieces

EmbedFn = Callable[[list[str]], torch.Tensor]
SplitFn = Callable[[list[str]], list[list[int]]]

# Score-matrix budget per chunk (targets x base vocab), in elements: 2**26 fp32 = 256 MiB.
_SCORE_BUDGET = 2**26
_EPS = 1e-12


class TokenAdaptParams(MethodParams):
    tau: float = Field(
        0.3, gt=0.0, description="softmax temperature for piece and neighbour weights"
    )
    beta: float = Field(
        0.3, ge=0.0, le=1.0, description="weight of the global (neighbour) estimate"
    )
    top_k: int = Field(3, ge=1, description="neighbours in the auxiliary text space")
    threshold: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="neighbours with a lower cosine are dropped; with none left the token "
        "gets its local estimate alone (the authors' --threshold)",
    )
    embedder: str = Field(
        "self", min_length=1, description='sentence-embedder directory, or "self"'
    )
    chunk_size: int | None = Field(
        None, ge=1, description="targets per neighbour-search chunk (auto)"
    )


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalize rows; zero rows stay zero (they mean "no vector")."""
    return F.normalize(x.to(torch.float32), dim=1, eps=_EPS)


def self_space_embedder(base: torch.Tensor, split_texts: SplitFn) -> EmbedFn:
    """Text embedder in the base matrix's own space: normalized mean of the text's piece rows."""

    def embed(texts: list[str]) -> torch.Tensor:
        rows, _ = mean_of_pieces(base, split_texts(list(texts)))
        return _normalize(rows)

    return embed


def _embed_unique(embed: EmbedFn, texts: list[str], device: torch.device) -> torch.Tensor:
    """Embed each distinct text once (vocabularies repeat texts, e.g. undecodable bytes)."""
    index: dict[str, int] = {}
    inverse = [index.setdefault(t, len(index)) for t in texts]
    uniq = list(index)
    vecs = embed(uniq) if uniq else torch.zeros(0, 1)
    if vecs.shape[0] != len(uniq):
        raise ValueError(f"embed_texts returned {vecs.shape[0]} vectors for {len(uniq)} texts")
    vecs = _normalize(vecs.to(device))
    return vecs.index_select(0, torch.tensor(inverse, dtype=torch.long, device=device))


# One cached base-vocabulary embedding for an auxiliary embedder, so that the input and
# output matrices of a model (two problems, same vocabulary) embed the vocabulary once.
_VOCAB_CACHE: dict[str, object] = {}


def _vocab_embeddings(
    embed: EmbedFn, texts: list[str], device: torch.device, cacheable: bool
) -> torch.Tensor:
    key = tuple(texts)
    if cacheable and _VOCAB_CACHE.get("fn") is embed and _VOCAB_CACHE.get("key") == key:
        return _VOCAB_CACHE["vecs"].to(device)  # type: ignore[union-attr]
    vecs = _embed_unique(embed, texts, device)
    vecs[torch.tensor([t == "" for t in texts], dtype=torch.bool, device=device)] = 0.0
    if cacheable:
        _VOCAB_CACHE.clear()
        _VOCAB_CACHE.update(fn=embed, key=key, vecs=vecs)
    return vecs


def clear_cache() -> None:
    """Drop the cached base-vocabulary embedding (frees memory after a run)."""
    _VOCAB_CACHE.clear()


def _weighted_rows(base: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_j w[:, j] * base[ids[:, j]], one column at a time: memory stays (T, d), not (T, P, d)."""
    rows = torch.zeros(ids.shape[0], base.shape[1], dtype=torch.float32, device=base.device)
    for j in range(ids.shape[1]):
        rows.addcmul_(w[:, j : j + 1], base.index_select(0, ids[:, j]))
    return rows


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; all-masked rows give zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(torch.where(mask.any(dim=-1, keepdim=True), scores, 0.0), dim=-1)
    return w.masked_fill(~mask, 0.0)


def _local(
    base: torch.Tensor,
    target_vecs: torch.Tensor,
    vocab_vecs: torch.Tensor,
    vocab_chars: torch.Tensor,
    target_chars: torch.Tensor,
    pieces: list[list[int]],
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local estimates for one chunk: sum_i softmax(((w1_i + len_i) / 2) / tau) E_B[p_i] with
    w1 = softmax(cos / tau) over the pieces (the authors' tempered similarity weights)."""
    width = max([1, *map(len, pieces)])  # pieces padded with id 0, masked out
    padded = [[*p, *[0] * (width - len(p))] for p in pieces]
    ids = torch.tensor(padded, dtype=torch.long, device=base.device).view(len(pieces), width)
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long, device=base.device)
    mask = torch.arange(width, device=base.device) < lengths.unsqueeze(1)
    cos = torch.stack(
        [(vocab_vecs[ids[:, j]] * target_vecs).sum(dim=1) for j in range(ids.shape[1])], dim=1
    )
    w1 = _masked_softmax(cos / tau, mask)
    share = vocab_chars[ids] / target_chars.clamp_min(1.0).unsqueeze(1)
    w = _masked_softmax((w1 + share) / 2.0 / tau, mask)
    return _weighted_rows(base, ids, w), mask.any(dim=1)


def _global(
    base: torch.Tensor,
    target_vecs: torch.Tensor,
    vocab_vecs: torch.Tensor,
    vocab_valid: torch.Tensor,
    params: TokenAdaptParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global estimates for one chunk: softmax(sim / tau) over the kept top-k neighbours."""
    if bool(vocab_valid.all()):
        sims = target_vecs @ vocab_vecs.T
    else:  # rows without a vector get -inf, fused into the matmul
        bias = torch.zeros(vocab_vecs.shape[0], dtype=torch.float32, device=vocab_vecs.device)
        sims = torch.addmm(bias.masked_fill(~vocab_valid, float("-inf")), target_vecs, vocab_vecs.T)
    k = min(params.top_k, vocab_vecs.shape[0])
    top, idx = torch.topk(sims, k, dim=1)
    target_valid = target_vecs.norm(dim=1) > 0.5  # normalized vectors are 1 or 0
    keep = (top >= params.threshold) & torch.isfinite(top) & target_valid.unsqueeze(1)
    w = _masked_softmax(torch.where(keep, top, 0.0) / params.tau, keep)
    return _weighted_rows(base, idx, w), keep.any(dim=1)


def estimate_tokenadapt(
    problem: EstimationProblem, params: TokenAdaptParams
) -> torch.Tensor | api.Estimate:
    """(1 - beta) e_local + beta e_global; the one that exists if only one; else the mean row."""
    texts, pieces = problem.target_texts, problem.target_pieces
    vocab_texts = problem.base_vocab_texts
    if texts is None or pieces is None or vocab_texts is None:
        raise ValueError("tokenadapt needs target_texts, target_pieces and base_vocab_texts")
    t, (v, d) = problem.n_targets, problem.base.shape
    if len(texts) != t or len(pieces) != t or len(vocab_texts) != v:
        raise ValueError(
            "tokenadapt: target_texts/target_pieces must have n_targets entries, base_vocab_texts one per base row"
        )
    device = problem.device
    base = problem.base.to(torch.float32)
    if t == 0:
        return torch.zeros(0, d, dtype=torch.float32, device=device)

    # the seam's embedder (its vocabulary embedding may be cached), else the base's own space
    embed, cacheable = problem.embed_texts, True
    if embed is None:
        if params.embedder != "self":
            raise ValueError(
                f"tokenadapt: embedder {params.embedder!r} was configured but the seam supplied "
                "no embed_texts (load it with mergekit_tokenplug.resources.load_text_embedder)"
            )
        if problem.split_texts is None:
            raise ValueError(
                "tokenadapt with embedder 'self' needs split_texts (the base tokenizer split)"
            )
        embed, cacheable = self_space_embedder(problem.base, problem.split_texts), False
    vocab_vecs = _vocab_embeddings(embed, list(vocab_texts), device, cacheable)  # (v, e)
    vocab_valid = vocab_vecs.norm(dim=1) > 0.5
    vocab_chars = torch.tensor([len(s) for s in vocab_texts], dtype=torch.float32, device=device)
    target_vecs = _embed_unique(embed, list(texts), device)
    target_chars = torch.tensor([len(s) for s in texts], dtype=torch.float32, device=device)
    mean = base.mean(dim=0)

    chunk = params.chunk_size or max(1, min(t, _SCORE_BUDGET // max(v, 1)))
    out = torch.empty(t, d, dtype=torch.float32, device=device)
    neither = torch.zeros(t, dtype=torch.bool, device=device)
    starts = range(0, t, chunk)
    desc = f"tokenadapt {problem.label}".strip()
    for s in tqdm(
        starts, desc=desc, unit="chunk", disable=not problem.show_progress or len(starts) < 2
    ):
        e = min(s + chunk, t)
        tv = target_vecs[s:e]
        loc, has_loc = _local(
            base, tv, vocab_vecs, vocab_chars, target_chars[s:e], pieces[s:e], params.tau
        )
        glo, has_glo = _global(base, tv, vocab_vecs, vocab_valid, params)
        both = (1.0 - params.beta) * loc + params.beta * glo
        rows = torch.where(has_glo.unsqueeze(1), glo, mean.unsqueeze(0).expand_as(glo))
        rows = torch.where(has_loc.unsqueeze(1), loc, rows)
        out[s:e] = torch.where((has_loc & has_glo).unsqueeze(1), both, rows)
        neither[s:e] = ~(has_loc | has_glo)
    return api.Estimate(out, fallback={"no pieces and no neighbour": neither})


def tokenadapt_cost(q: api.CostQuery) -> tuple[int, float | None]:
    """One chunk of neighbour scores plus the output rows."""
    chunk = max(1, min(q.targets, _SCORE_BUDGET // max(q.model_rows, 1)))
    working = chunk * q.model_rows * api.FP32 + q.targets * q.dim_model * api.FP32
    return working, 2.0 * q.targets * q.model_rows * q.dim_model


TOKENADAPT = MethodSpec(
    name="tokenadapt",
    params=TokenAdaptParams,
    estimate=estimate_tokenadapt,
    summary="local subword estimate blended with top-k neighbours in a text-embedding space (TokenAdapt)",
    needs=frozenset({Need.BASE_TOKENIZER, Need.BASE_VOCAB_TEXTS}),
    cost=tokenadapt_cost,
)
