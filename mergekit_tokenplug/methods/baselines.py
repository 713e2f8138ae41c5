"""Baseline estimators (README "Methods"), in their correct forms.

They are the reference points every other method is judged against, and the fallbacks the
seam uses for rows a method cannot estimate: ``mean`` (the documented fallback), ``zero``
(kept only to show why it is a poor choice), ``hewitt`` (mean plus small noise drawn from the
rows' own covariance, via a Cholesky factor) and ``subword_mean`` (FVT / ReTok: mean of the
rows of the token's pieces under the base tokenizer).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from pydantic import Field

from mergekit_tokenplug.methods import base as api
from mergekit_tokenplug.methods.base import EstimationProblem, MethodParams, MethodSpec, Need

LOG = logging.getLogger(__name__)


class NoParams(MethodParams):
    """Methods without parameters still reject unknown keys."""


class HewittParams(MethodParams):
    scale: float = Field(1e-5, ge=0.0, description="noise covariance = scale * cov(base rows)")


def estimate_mean(problem: EstimationProblem, params: NoParams) -> torch.Tensor:
    """Every target gets the mean of the base rows (inside the rows' convex hull)."""
    return problem.mean_row().unsqueeze(0).expand(problem.n_targets, -1).clone()


def estimate_zero(problem: EstimationProblem, params: NoParams) -> torch.Tensor:
    """Zeros: what mergekit gives tokens no model has. A poor choice (see summary)."""
    return torch.zeros(
        problem.n_targets, problem.base.shape[1], dtype=torch.float32, device=problem.device
    )


def covariance_cholesky(base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean and lower Cholesky factor of the rows' covariance, or None if not positive definite.

    The covariance is formed in float32 (one V x d x d matmul on the rows' device) and factored
    in float64. Exactly singular covariances (e.g. fewer rows than dimensions) can survive the
    factorization with round-off sized pivots, so a pivot whose square is within float32
    round-off of the largest variance also counts as "not positive definite".
    """
    x = base.to(torch.float32)
    mu = x.mean(dim=0)
    n, d = x.shape
    if n < 2:
        return mu, None
    xc = x - mu
    cov64 = ((xc.T @ xc) / (n - 1)).to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(cov64)
    pivots = torch.diagonal(chol).square()
    tol = d * torch.finfo(torch.float32).eps * float(torch.diagonal(cov64).max().clamp_min(0.0))
    if int(info.item()) != 0 or tol <= 0.0 or bool((pivots <= tol).any()):
        return mu, None
    return mu, chol.to(torch.float32)


def estimate_hewitt(
    problem: EstimationProblem, params: HewittParams
) -> torch.Tensor | api.Estimate:
    """mean + N(0, scale * Sigma): row = mu + sqrt(scale) * L z with z ~ N(0, I), Sigma = L L^T.

    Falls back to the mean (one warning) when Sigma is not positive definite.
    """
    mu, chol = covariance_cholesky(problem.base)
    t, d = problem.n_targets, problem.base.shape[1]
    if chol is None:
        LOG.warning(
            "hewitt%s: covariance of the base rows is not positive definite; using the mean row for %d tokens",
            f" ({problem.label})" if problem.label else "",
            t,
        )
        rows = estimate_mean(problem, NoParams())
        every = torch.ones(t, dtype=torch.bool, device=problem.device)
        return api.Estimate(rows, fallback={"covariance of the rows not positive definite": every})
    z = torch.randn(t, d, generator=problem.generator(), device=problem.device, dtype=torch.float32)
    return mu.unsqueeze(0) + (params.scale**0.5) * (z @ chol.T)


def mean_of_pieces(
    base: torch.Tensor, pieces: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the rows of each piece list (segment mean via ``index_add_``).

    Returns (rows (T, d) float32, has_pieces (T,) bool); rows without pieces are zero.
    """
    t, v = len(pieces), base.shape[0]
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
    flat = torch.tensor([i for p in pieces for i in p], dtype=torch.long).to(base.device)
    seg = torch.repeat_interleave(torch.arange(t), lengths).to(base.device)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= v):
        raise ValueError(f"piece ids must be rows of the base matrix (0..{v - 1})")
    sums = torch.zeros(t, base.shape[1], dtype=torch.float32, device=base.device)
    sums.index_add_(0, seg, base.index_select(0, flat).to(torch.float32))
    counts = torch.bincount(seg, minlength=t).to(torch.float32)
    return sums / counts.clamp_min(1.0).unsqueeze(1), counts > 0


def subword_mean_rows(base: torch.Tensor, pieces: list[list[int]]) -> torch.Tensor:
    """Mean of the rows of each piece list; the mean of all rows for a list without pieces."""
    rows, has = mean_of_pieces(base, pieces)
    return torch.where(has.unsqueeze(1), rows, base.float().mean(dim=0).unsqueeze(0))


def estimate_subword_mean(problem: EstimationProblem, params: NoParams) -> api.Estimate:
    """FVT / ReTok: mean of the base rows of the token's pieces; mean row if it has none."""
    if problem.target_pieces is None:
        raise ValueError("subword_mean needs target_pieces (the base tokenizer split)")
    if len(problem.target_pieces) != problem.n_targets:
        raise ValueError(
            f"target_pieces has {len(problem.target_pieces)} entries for {problem.n_targets} targets"
        )
    rows, has = mean_of_pieces(problem.base, problem.target_pieces)
    rows = torch.where(has.unsqueeze(1), rows, problem.mean_row().unsqueeze(0))
    return api.Estimate(rows, fallback={"no pieces under the model's tokenizer": ~has})


def mean_cost(q: api.CostQuery) -> tuple[int, float | None]:
    """The output rows; one pass over the model's rows."""
    return q.targets * q.dim_model * api.FP32, float(q.model_rows * q.dim_model)


PIECES_PER_TOKEN = 4  # an upper-end guess of a missing token's pieces under the model's tokenizer


def subword_mean_cost(q: api.CostQuery) -> tuple[int, float | None]:
    """The output rows; a sum over each token's pieces (a few rows each) plus the mean row
    for tokens without pieces."""
    return (
        q.targets * q.dim_model * api.FP32,
        float(q.targets * PIECES_PER_TOKEN * q.dim_model + q.model_rows * q.dim_model),
    )


def hewitt_cost(q: api.CostQuery) -> tuple[int, float | None]:
    """Covariance of the rows (2 N d^2), its Cholesky factor (d^3 / 3), one d x d product
    per sampled row (2 T d^2)."""
    d = q.dim_model
    working = (d * d + q.targets * d) * api.FP32
    return working, float(2 * q.model_rows * d * d + d**3 / 3 + 2 * q.targets * d * d)


MEAN = MethodSpec(
    name="mean",
    params=NoParams,
    estimate=estimate_mean,
    summary="mean of the model's rows (safe: inside the rows' convex hull)",
    fallback=None,
    cost=mean_cost,
)
ZERO = dataclasses.replace(
    MEAN,
    name="zero",
    estimate=estimate_zero,
    summary="zero rows (poor choice: zero logit and no signal; kept for comparison only)",
)
HEWITT = MethodSpec(
    name="hewitt",
    params=HewittParams,
    estimate=estimate_hewitt,
    summary="mean + N(0, scale * covariance of the rows) (Hewitt 2021), mean if not positive definite",
    fallback=None,
    cost=hewitt_cost,
)
SUBWORD_MEAN = MethodSpec(
    name="subword_mean",
    params=NoParams,
    estimate=estimate_subword_mean,
    summary="mean of the rows of the token's pieces under the model's tokenizer (FVT / ReTok)",
    needs=frozenset({Need.BASE_TOKENIZER}),
    cost=subword_mean_cost,
)
