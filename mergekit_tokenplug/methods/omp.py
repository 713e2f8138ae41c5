"""OMP transplant (ALGORITHMS.md section 1): sparse codes in donor space, applied in base space.

Each target row x (a donor embedding) is approximated by k shared-token rows of the donor
(the dictionary A) chosen greedily by Orthogonal Matching Pursuit: pick the unselected atom
with the largest |<residual, atom>| (atoms unnormalised, as in mergekit's ``batch_omp``), refit
the coefficients by least squares on the support, repeat. The estimate is the same combination
of the *base* model's rows of those shared tokens.

Why this is faster than re-projecting (mergekit) while selecting the same atoms:

* Least squares by a progressive Cholesky factor of the support's Gram matrix G_II (one new
  row per step, O(k^2) per target) instead of re-orthogonalising a d x k basis.
* Batch-OMP correlations (Rubinstein, Zibulevsky & Elad, 2008): with alpha0 = A x computed
  once, the step-t correlations are alpha0 - G[:, I] gamma, i.e. t Gram rows per target instead
  of a d-long residual against all N atoms. Gram rows are computed only for atoms that some
  target actually selected, cached across steps and batches (targets share many atoms), and
  stored in column chunks so a chunk of the cache stays in the processor's cache while every
  target of the batch reads it. Once t is large the plain residual matmul is cheaper again,
  so each step takes whichever form costs less (a fixed rule on the shapes: deterministic).
* Residual matmuls may run in a reduced ``select_dtype`` (bf16 on GPU) or as TF32 matmuls
  (``select_tf32``) for the arg-max only; coefficients are always fit in fp32 (fp64 for fp64
  inputs) and polished by one step of iterative refinement. ``OmpParams.select_precision``
  picks this per run ("auto": bf16 on CUDA, where the correlations are most of the time and
  bf16 tensor cores are several times faster than fp32; fp32 elsewhere, where bf16 matmuls
  are no faster).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from mergekit_tokenplug.compute.batching import (
    run_batched,
    suggest_batch_size,
    working_memory_budget,
)
from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.methods.base import EstimationProblem
from mergekit_tokenplug.registry import MethodParams, MethodSpec, Need, register

LOG = logging.getLogger(__name__)

# Gram rows are stored in column chunks of this many atoms (see _GramCache).
GRAM_CHUNK = 4096
# A Gram-form step reads t cached rows per target; a residual step does a d-deep matmul. The
# Gram form wins while t * ratio < d, where ratio = cost of one gathered multiply-add relative
# to one matmul multiply-add (measured with bench/bench_omp.py; gathers are memory bound).
GRAM_COST_RATIO = {"cpu": 32.0, "cuda": 8.0}
# Fraction of the working-memory budget the Gram cache may take.
GRAM_BUDGET_FRACTION = 0.5
# A new atom whose squared distance to the support's span is below this fraction of its
# squared norm is treated as linearly dependent (coefficient 0) instead of dividing by ~0.
PIVOT_TOL_EPS = 100.0


@dataclass
class _Dictionary:
    """The dictionary and what is precomputed from it once per call."""

    atoms: torch.Tensor  # (N, D) work dtype
    norms2: torch.Tensor  # (N,) squared atom norms
    select_atoms: torch.Tensor | None  # (N, D) in select_dtype, or None
    gram: _GramCache | None
    tf32: bool = False  # correlation matmuls as TF32 (CUDA only; a no-op elsewhere)

    def correlate(self, rows: torch.Tensor) -> torch.Tensor:
        """rows @ atoms.T in the selection dtype (a new tensor the caller may modify)."""
        if self.select_atoms is not None:
            return rows.to(self.select_atoms.dtype) @ self.select_atoms.T
        with tf32_matmuls(self.tf32):
            return rows @ self.atoms.T


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True) -> Iterator[None]:
    """Allow TF32 for CUDA fp32 matmuls inside the block only (the global flag is restored,
    so nothing outside the selection, e.g. the least-squares fit, runs in TF32)."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class _GramCache:
    """Rows G[u, :] = A[u] . A^T for atoms u selected so far, in column chunks.

    Layout (C, capacity, GRAM_CHUNK): chunk c holds columns [c*GRAM_CHUNK, (c+1)*GRAM_CHUNK) of
    every cached row, contiguous, so ``embedding_bag`` can gather-and-weight whole rows of one
    chunk while it is hot in cache.
    """

    def __init__(self, atoms: torch.Tensor, capacity: int):
        n = atoms.shape[0]
        self.atoms = atoms
        self.n = n
        self.chunk = min(GRAM_CHUNK, n)
        self.n_chunks = math.ceil(n / self.chunk)
        self.capacity = int(capacity)
        self.count = 0
        self.slot = torch.full((n,), -1, dtype=torch.long, device=atoms.device)
        self.buf = torch.empty(
            (self.n_chunks, self.capacity, self.chunk), dtype=atoms.dtype, device=atoms.device
        )

    def ensure(self, atom_ids: torch.Tensor) -> bool:
        """Compute rows for atoms not yet cached; False if they would exceed the capacity."""
        uniq = torch.unique(atom_ids)
        missing = uniq[self.slot[uniq] < 0]
        m = int(missing.numel())
        if m == 0:
            return True
        if self.count + m > self.capacity:
            return False
        pad = self.n_chunks * self.chunk - self.n
        step = 1024
        for lo in range(0, m, step):
            ids = missing[lo : lo + step]
            rows = self.atoms[ids] @ self.atoms.T  # (m, N)
            rows = F.pad(rows, (0, pad)).view(len(ids), self.n_chunks, self.chunk)
            start = self.count + lo
            self.buf[:, start : start + len(ids)].copy_(rows.transpose(0, 1))
        self.slot[missing] = torch.arange(self.count, self.count + m, device=self.slot.device)
        self.count += m
        return True

    def correlations(
        self, alpha0: torch.Tensor, support: torch.Tensor, gamma: torch.Tensor
    ) -> torch.Tensor:
        """alpha0 - G[:, support] gamma for each target, chunk by chunk."""
        slots = self.slot[support]
        weights = gamma.contiguous()
        out = torch.empty_like(alpha0)
        for c in range(self.n_chunks):
            lo = c * self.chunk
            hi = min(self.n, lo + self.chunk)
            part = F.embedding_bag(
                slots, self.buf[c, : self.count], per_sample_weights=weights, mode="sum"
            )
            torch.sub(alpha0[:, lo:hi], part[:, : hi - lo], out=out[:, lo:hi])
        return out


def _use_gram_step(t: int, dim: int, device: torch.device, strategy: str) -> bool:
    if strategy != "auto":
        return strategy == "gram"
    ratio = GRAM_COST_RATIO.get(device.type, GRAM_COST_RATIO["cuda"])
    return t * ratio < dim


def _omp_block(
    x: torch.Tensor, dic: _Dictionary, k: int, strategy: str, on_step=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP for one batch of targets x (b, D); returns (indices (b, k), coefficients (b, k))."""
    b, dim = x.shape
    atoms = dic.atoms
    dtype, device = atoms.dtype, atoms.device
    tol = PIVOT_TOL_EPS * torch.finfo(dtype).eps
    idx = torch.zeros((b, k), dtype=torch.long, device=device)
    chosen = torch.empty((b, k, dim), dtype=dtype, device=device)  # the support's atoms
    chol = torch.zeros((b, k, k), dtype=dtype, device=device)  # lower factor of G_II
    inv = torch.zeros((b, k, k), dtype=dtype, device=device)  # its inverse
    z = torch.zeros((b, k), dtype=dtype, device=device)  # chol^-1 (A_I x)
    active = torch.zeros((b, k), dtype=dtype, device=device)  # 0 for dependent atoms
    gamma = torch.zeros((b, 0), dtype=dtype, device=device)
    gram_ok = dic.gram is not None
    alpha0 = None

    for t in range(k):
        gram_now = gram_ok and t > 0 and _use_gram_step(t, dim, device, strategy)
        if gram_now:
            gram_now = dic.gram.ensure(idx[:, t - 1])
        if t == 0:
            corr = dic.correlate(x)
            if gram_ok and _use_gram_step(1, dim, device, strategy) and k > 1:
                alpha0 = corr.clone()
        elif gram_now:
            corr = dic.gram.correlations(alpha0, idx[:, :t], gamma)
        else:
            gram_ok, alpha0 = False, None  # t only grows: the Gram form never pays again
            resid = x - torch.bmm(gamma.unsqueeze(1), chosen[:, :t]).squeeze(1)
            corr = dic.correlate(resid)
        corr.abs_()
        if t:
            corr.scatter_(1, idx[:, :t], -1.0)  # below any |correlation|: never re-picked
        new = corr.argmax(dim=1)
        del corr
        idx[:, t] = new

        atom = atoms[new]
        chosen[:, t] = atom
        nn = dic.norms2[new]
        # New Cholesky row [w, d] of G_II: w = L^-1 G_I,new, d^2 = ||a||^2 - ||w||^2. L^-1 is
        # kept explicitly (one row per step), so every solve is a batched matmul: thousands of
        # tiny LAPACK triangular solves per step would cost more than the correlations.
        if t:
            g = torch.bmm(chosen[:, :t], atom.unsqueeze(-1)) * active[:, :t, None]
            w = torch.bmm(inv[:, :t, :t], g).squeeze(-1)
        else:
            w = atom.new_zeros((b, 0))
        piv2 = nn - (w * w).sum(dim=1)
        ok = piv2 > tol * nn
        diag = torch.where(ok, piv2.clamp_min(torch.finfo(dtype).tiny).sqrt(), 1.0)
        w = w * ok.unsqueeze(1)
        chol[:, t, :t] = w
        chol[:, t, t] = diag
        active[:, t] = ok.to(dtype)
        if t:  # row t of L^-1: [-(w^T L^-1) / d, 1 / d]
            inv[:, t, :t] = -torch.bmm(w.unsqueeze(1), inv[:, :t, :t]).squeeze(1) / diag[:, None]
        inv[:, t, t] = 1.0 / diag
        proj = (x * atom).sum(dim=1)
        z[:, t] = torch.where(ok, (proj - (w * z[:, :t]).sum(dim=1)) / diag, 0.0)
        # gamma = L^-T z
        gamma = torch.bmm(z[:, None, : t + 1], inv[:, : t + 1, : t + 1]).squeeze(1)
        if on_step is not None:
            on_step(t)

    # Final coefficients by triangular solves with L (not its inverse), then one step of
    # iterative refinement: the Cholesky route squares the support's condition number and
    # correcting with the true residual brings the coefficients to QR accuracy.
    rhs = torch.bmm(chosen, x.unsqueeze(-1)) * active.unsqueeze(-1)  # A_I x
    y = torch.linalg.solve_triangular(chol, rhs, upper=False).squeeze(-1)
    gamma = _solve_upper(chol, y) * active
    resid = x - torch.bmm(gamma.unsqueeze(1), chosen).squeeze(1)
    rhs = torch.bmm(chosen, resid.unsqueeze(-1)) * active.unsqueeze(-1)
    y = torch.linalg.solve_triangular(chol, rhs, upper=False).squeeze(-1)
    gamma = (gamma + _solve_upper(chol, y)) * active
    return idx, gamma


def _solve_upper(chol: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve chol^T g = rhs for g (batched back substitution)."""
    return torch.linalg.solve_triangular(chol.mT, rhs.unsqueeze(-1), upper=True).squeeze(-1)


def _per_target_bytes(n: int, dim: int, k: int, elt: int, sel_elt: int, gram: bool) -> int:
    corr = n * sel_elt * (2 if sel_elt != elt else 1)  # scores (+ the cast residual's copy)
    alpha0 = (2 * n + GRAM_CHUNK) * elt if gram else 0  # alpha0, Gram-form scores, one chunk
    state = (k * dim + 2 * k * k + 4 * k + 2 * dim) * elt + k * 8
    return corr + alpha0 + state


def batch_omp(
    targets: torch.Tensor,
    dictionary: torch.Tensor,
    k: int,
    *,
    batch_size: int | None = None,
    select_dtype: torch.dtype | None = None,
    show_progress: bool = False,
    desc: str = "OMP",
    strategy: str = "auto",
    select_tf32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OMP of each target row over the dictionary's rows (same answer as mergekit's).

    Args:
        targets: (B, D) rows to approximate.
        dictionary: (N, D) atoms (not normalised: selection uses raw inner products).
        k: atoms per target (1 <= k <= N).
        batch_size: targets per batch; default sized from free memory, halved on OOM.
        select_dtype: optional reduced dtype (e.g. torch.bfloat16 on GPU) used only for the
            arg-max correlations; the least-squares fit stays fp32 (fp64 for fp64 inputs).
        show_progress: show a tqdm bar over targets.
        desc: the bar's label.
        strategy: "auto" (cheapest form per step), "gram" or "direct" (for benchmarks).
        select_tf32: run the fp32 correlation matmuls as TF32 on CUDA (ignored when
            select_dtype is set, a no-op on CPU); the fit is unaffected.

    Returns:
        (indices (B, k) long, coefficients (B, k)) in selection order; coefficients are in the
        working dtype (fp32, or fp64 for fp64 inputs), on the targets' device.
    """
    if targets.ndim != 2 or dictionary.ndim != 2 or targets.shape[1] != dictionary.shape[1]:
        raise ValueError(
            f"targets (B, D) and dictionary (N, D) must share D; got {tuple(targets.shape)} "
            f"and {tuple(dictionary.shape)}"
        )
    if strategy not in ("auto", "gram", "direct"):
        raise ValueError(f"strategy must be auto, gram or direct (got {strategy!r})")
    n_targets, dim = targets.shape
    n_atoms = dictionary.shape[0]
    if not 1 <= k <= n_atoms:
        raise ValueError(f"k must be between 1 and the number of atoms {n_atoms} (got {k})")
    device = targets.device
    work = torch.float64 if torch.float64 in (targets.dtype, dictionary.dtype) else torch.float32
    x_all = targets.to(dtype=work)
    atoms = dictionary.to(device=device, dtype=work).contiguous()
    if n_targets == 0:
        return (
            torch.zeros((0, k), dtype=torch.long, device=device),
            torch.zeros((0, k), dtype=work, device=device),
        )
    if select_dtype == work:
        select_dtype = None
    elt = atoms.element_size()
    sel_elt = torch.empty((), dtype=select_dtype).element_size() if select_dtype else elt

    with torch.no_grad():
        budget = working_memory_budget(device)
        gram = None
        want_gram = select_dtype is None and k > 1 and _use_gram_step(1, dim, device, strategy)
        if want_gram:
            chunk = min(GRAM_CHUNK, n_atoms)
            row_bytes = math.ceil(n_atoms / chunk) * chunk * elt
            capacity = min(n_atoms, n_targets * k, int(budget * GRAM_BUDGET_FRACTION) // row_bytes)
            if capacity >= 1:
                gram = _GramCache(atoms, capacity)
        dic = _Dictionary(
            atoms=atoms,
            norms2=(atoms * atoms).sum(dim=1),
            select_atoms=atoms.to(select_dtype) if select_dtype is not None else None,
            gram=gram,
            tf32=select_tf32 and select_dtype is None,
        )
        if batch_size is None:
            fixed = gram.capacity * row_bytes if gram is not None else 0
            fixed += n_atoms * dim * sel_elt if select_dtype is not None else 0
            per_item = _per_target_bytes(n_atoms, dim, k, elt, sel_elt, gram is not None)
            batch_size = suggest_batch_size(
                per_item, device, fixed_bytes=fixed, maximum=n_targets, budget_bytes=budget
            )

        with tqdm(
            total=n_targets, desc=desc, unit="tok", disable=not show_progress, leave=False
        ) as bar:

            def run(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
                def step(t: int) -> None:
                    bar.set_postfix_str(f"step {t + 1}/{k}", refresh=False)

                return _omp_block(x_all[lo:hi], dic, k, strategy, on_step=step)

            parts = run_batched(
                run, n_targets, batch_size, on_batch=lambda lo, hi: bar.update(hi - lo)
            )
    idx = torch.cat([p[0] for p in parts])
    coef = torch.cat([p[1] for p in parts])
    return idx, coef


SelectPrecision = Literal["auto", "fp32", "tf32", "bf16"]


class OmpParams(MethodParams):
    k: int = Field(64, ge=1, description="shared tokens combined per new token (sparsity)")
    batch_size: int | None = Field(
        None, ge=1, description="targets per batch; default sized from free memory"
    )
    select_precision: SelectPrecision = Field(
        "auto",
        description=(
            "precision of the atom-selection correlations only (the fit is always fp32): "
            "auto = bf16 on CUDA, fp32 elsewhere"
        ),
    )


def select_settings(
    precision: SelectPrecision, device: torch.device | str
) -> tuple[torch.dtype | None, bool]:
    """(select_dtype, select_tf32) for batch_omp from a ``select_precision`` value."""
    if precision == "auto":
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.bfloat16, False
    return None, precision == "tf32"


def estimate_omp(problem: EstimationProblem, params: OmpParams) -> torch.Tensor:
    """Rows sum_j c_j * base[anchor_j] with (anchor_j, c_j) from OMP in the donor space."""
    d_base = problem.base.shape[1]
    if problem.n_targets == 0:
        return torch.zeros((0, d_base), dtype=torch.float32, device=problem.device)
    if (
        problem.donor is None
        or problem.donor_anchor_ids is None
        or problem.donor_target_ids is None
    ):
        raise ValueError("omp needs donor embeddings (donor, donor_anchor_ids, donor_target_ids)")
    n_anchors = int(problem.anchor_ids.numel())
    if params.k > n_anchors:
        raise ConfigError(
            f"must be <= {n_anchors} shared tokens (got {params.k})",
            where="tokenizer.approximation.k",
        )
    device = problem.device
    donor = problem.donor
    targets = donor[problem.donor_target_ids.to(donor.device)].to(device, torch.float32)
    dictionary = donor[problem.donor_anchor_ids.to(donor.device)].to(device, torch.float32)
    label = f"OMP {problem.label}".strip()
    select_dtype, select_tf32 = select_settings(params.select_precision, device)
    idx, coef = batch_omp(
        targets,
        dictionary,
        params.k,
        batch_size=params.batch_size,
        select_dtype=select_dtype,
        select_tf32=select_tf32,
        show_progress=problem.show_progress,
        desc=label,
    )
    # sum_j coef[t, j] * base[anchor_ids[idx[t, j]]] without materialising (T, k, d_base).
    rows = problem.anchor_ids.to(device)[idx]
    return F.embedding_bag(rows, problem.base.float(), per_sample_weights=coef.float(), mode="sum")


SPEC = register(
    MethodSpec(
        name="omp",
        params=OmpParams,
        estimate=estimate_omp,
        summary=(
            "Orthogonal Matching Pursuit: each new token is a sparse least-squares combination "
            "of k shared tokens in the donor's embedding space, applied to the same tokens' "
            "rows of this model"
        ),
        needs=frozenset({Need.DONOR_EMBEDDINGS}),
        fallback="mean",
    )
)
