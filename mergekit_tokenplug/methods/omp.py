"""OMP transplant (README "Methods"): sparse codes in donor space, applied in base space.

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
  target of the batch gathers from it. Once t is large (or the cache is full) the plain
  residual matmul is cheaper again, so each step takes whichever form costs less (a fixed rule
  on the shapes and the cache: deterministic).
* Scores are reduced to the arg-max chunk by chunk while they are in cache: the (b, N) matrix
  of correlations is never written out and read back, in either form.
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
from collections.abc import Callable
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
from mergekit_tokenplug.compute.threads import threads_for_fine_grained_kernel
from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.methods import base as api
from mergekit_tokenplug.methods.base import EstimationProblem, MethodParams, MethodSpec, Need

LOG = logging.getLogger(__name__)

# Atoms per column chunk of the Gram cache and of the Batch-OMP correlations (see _GramCache).
# Small on CPU so that one chunk of every cached row stays in the last-level cache while all
# targets of the batch gather from it; large on CUDA, where each chunk is a kernel launch.
GRAM_CHUNK = {"cpu": 256, "cuda": 4096}
# Atoms per column chunk of a direct-form step: a (b, D) x (D, chunk) matmul whose scores are
# reduced to an arg-max while still in cache, so the (b, N) score matrix never exists.
SCORE_CHUNK = {"cpu": 1024, "cuda": 16384}
# A Gram-form step reads t + 1 cached rows per target; a direct step does a D-deep matmul. The
# Gram form wins while (t + 1) * ratio < D, where ratio = cost of one gathered multiply-add
# relative to one matmul multiply-add (measured with bench/bench_omp.py; gathers are memory
# bound).
GRAM_COST_RATIO = {"cpu": 7.0, "cuda": 8.0}
# Fraction of the working-memory budget the Gram cache may take.
GRAM_BUDGET_FRACTION = 0.5
# A new atom whose squared distance to the support's span is below this fraction of its
# squared norm is treated as linearly dependent (coefficient 0) instead of dividing by ~0.
PIVOT_TOL_EPS = 100.0
# Working memory for computing a block of new Gram rows.
GRAM_FILL_BYTES = 64 * 2**20
# Targets per sub-batch of the final least-squares polish (bounds its (b, k, D) gather).
POLISH_BATCH = 256


def _device_setting(table: dict[str, int | float], device: torch.device) -> int | float:
    return table.get(device.type, table["cuda"])


@dataclass
class _Dictionary:
    """The dictionary and what is precomputed from it once per call."""

    atoms: torch.Tensor  # (N, D) work dtype
    norms2: torch.Tensor  # (N,) squared atom norms
    select_atoms: torch.Tensor | None  # (N, D) in select_dtype, or None
    gram: _GramCache | None
    tf32: bool = False  # correlation matmuls as TF32 (CUDA only; a no-op elsewhere)

    def correlate(self, rows: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """rows @ atoms[lo:hi].T in the selection dtype (a new tensor the caller may modify).

        TF32 is allowed for this matmul only (the global flag is restored, so nothing outside
        the selection, e.g. the least-squares fit, runs in TF32)."""
        if self.select_atoms is not None:
            return rows.to(self.select_atoms.dtype) @ self.select_atoms[lo:hi].T
        if not self.tf32:
            return rows @ self.atoms[lo:hi].T
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return rows @ self.atoms[lo:hi].T
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before


class _GramCache:
    """Rows G[u, :] = A[u] . A^T for atoms u selected so far, in column chunks.

    Layout (C, capacity, chunk): chunk c holds columns [c*chunk, (c+1)*chunk) of every cached
    row, contiguous, so ``embedding_bag`` gathers and weights whole rows of one chunk while it
    is hot in cache. Rows are computed only for atoms some target selected and are shared by
    all targets and batches (targets share many atoms).
    """

    def __init__(self, atoms: torch.Tensor, capacity: int, chunk: int):
        self.atoms = atoms
        self.n = n = atoms.shape[0]
        self.chunk = min(chunk, n)
        self.n_chunks = math.ceil(n / self.chunk)
        self.capacity = int(capacity)
        self.count = 0
        self.slot = torch.full((n,), -1, dtype=torch.long, device=atoms.device)
        self.buf = torch.empty(
            (self.n_chunks, self.capacity, self.chunk), dtype=atoms.dtype, device=atoms.device
        )

    def to_chunks(self, rows: torch.Tensor) -> torch.Tensor:
        """(m, N) -> (C, m, chunk), zero-padded: the cache's layout."""
        pad = self.n_chunks * self.chunk - self.n
        rows = F.pad(rows, (0, pad)).view(rows.shape[0], self.n_chunks, self.chunk)
        return rows.transpose(0, 1)

    def ensure(self, atom_ids: torch.Tensor) -> bool:
        """Compute rows for atoms not yet cached; False if they would exceed the capacity."""
        uniq = torch.unique(atom_ids)
        missing = uniq[self.slot[uniq] < 0]
        m = int(missing.numel())
        if m == 0:
            return True
        if self.count + m > self.capacity:
            return False
        elt = self.buf.element_size()
        # Rows are computed a block at a time: the (block, N) product and its padded copy are
        # working memory outside the cache's own budget, so keep them to a few tens of MiB.
        step = max(1, min(1024, GRAM_FILL_BYTES // (2 * self.n_chunks * self.chunk * elt)))
        for lo in range(0, m, step):
            ids = missing[lo : lo + step]
            start = self.count + lo
            self.buf[:, start : start + len(ids)].copy_(
                self.to_chunks(self.atoms[ids] @ self.atoms.T)
            )
        self.slot[missing] = torch.arange(self.count, self.count + m, device=self.slot.device)
        self.count += m
        return True

    def refill(self, support: torch.Tensor, rows_worth: float) -> bool:
        """Drop every cached row and cache just ``support``'s atoms, when they fit and cost
        fewer row computations than ``rows_worth`` (what the Gram form would still save)."""
        needed = int(torch.unique(support).numel())
        if needed > self.capacity or needed >= rows_worth:
            return False
        self.slot.fill_(-1)
        self.count = 0
        return self.ensure(support)

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        """x . A^T in the cache's chunk layout (C, b, chunk), one chunk at a time."""
        out = x.new_zeros((self.n_chunks, x.shape[0], self.chunk))
        for c in range(self.n_chunks):
            lo, hi = c * self.chunk, min(self.n, (c + 1) * self.chunk)
            torch.matmul(x, self.atoms[lo:hi].T, out=out[c, :, : hi - lo])
        return out

    def chunk_scores(
        self, c: int, alpha: torch.Tensor, slots: torch.Tensor, neg_gamma: torch.Tensor
    ) -> torch.Tensor:
        """Columns of chunk c of alpha0 - G[:, support] gamma, for every target (b, chunk)."""
        part = F.embedding_bag(
            slots, self.buf[c, : self.count], per_sample_weights=neg_gamma, mode="sum"
        )
        return part.add_(alpha[c])

    def pairs(self, support: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """G[support[b, j], new[b]] for each target b (the support's rows are cached)."""
        slots = self.slot[support]
        c = torch.div(new, self.chunk, rounding_mode="floor")
        return self.buf[c[:, None], slots, (new - c * self.chunk)[:, None]]


class _ArgMaxAbs:
    """Running arg-max of |score| over column chunks, skipping each target's support.

    Ties resolve to the lowest atom index, as ``argmax`` over the full row would.
    """

    def __init__(self, support: torch.Tensor, n_atoms: int, chunk: int, dtype: torch.dtype) -> None:
        b = support.shape[0]
        # Scores compare in at least fp32 (bf16 scores convert exactly; fp64 stay fp64).
        self.best = torch.full(
            (b,), -math.inf, dtype=torch.promote_types(dtype, torch.float32), device=support.device
        )
        self.arg = torch.zeros((b,), dtype=torch.long, device=support.device)
        self.chunk = chunk
        n_chunks = math.ceil(n_atoms / chunk)
        # The support's (row, column) positions, grouped by chunk, to mask before each max.
        flat = support.reshape(-1)
        rows = torch.arange(b, device=support.device).repeat_interleave(support.shape[1])
        cid = torch.div(flat, chunk, rounding_mode="floor")
        order = torch.argsort(cid, stable=True)
        counts = torch.bincount(cid, minlength=n_chunks).tolist()
        cols = flat - cid * chunk
        self.masks = list(zip(rows[order].split(counts), cols[order].split(counts), strict=True))

    def update(self, c: int, scores: torch.Tensor) -> None:
        """Fold in the scores of chunk c (b, width), which this call may overwrite."""
        scores.abs_()
        rows, cols = self.masks[c]
        if rows.numel():
            scores[rows, cols] = -1.0  # below any |correlation|: never re-picked
        if scores.device.type == "cpu":
            # On CPU a plain max reduction is vectorised but arg-max is not (about 15x slower
            # here), and a row's best rarely improves after the first chunks: take the max of
            # every row, then the arg-max of just the rows that improved.
            val = scores.amax(dim=1).to(self.best.dtype)
            rows = (val > self.best).nonzero().squeeze(1)
            if rows.numel():
                self.best[rows] = val[rows]
                self.arg[rows] = scores[rows].argmax(dim=1) + c * self.chunk
            return
        val, arg = scores.max(dim=1)
        val = val.to(self.best.dtype)
        better = val > self.best
        self.best = torch.where(better, val, self.best)
        self.arg = torch.where(better, arg + c * self.chunk, self.arg)


def _use_gram_step(t: int, dim: int, device: torch.device, strategy: str) -> bool:
    """Whether step t (t support atoms so far) is cheaper in the Gram form."""
    if strategy != "auto":
        return strategy == "gram"
    return (t + 1) * _device_setting(GRAM_COST_RATIO, device) < dim


def _gram_step_ready(
    gram: _GramCache, idx: torch.Tensor, t: int, dim: int, k: int, strategy: str
) -> bool:
    """Whether step t runs in the Gram form, caching the rows it needs.

    When the cache is full (rows of earlier batches), it is refilled with this batch's
    support if that costs fewer row computations than the remaining Gram-form steps save:
    a direct step costs b*N*D, a Gram step b*N*(t+1)*ratio, one cached row N*D.
    """
    device = gram.atoms.device
    if not _use_gram_step(t, dim, device, strategy):
        return False
    if gram.ensure(idx[:, t - 1]):
        return True
    if strategy == "gram":
        return gram.refill(idx[:, :t], math.inf)
    ratio = _device_setting(GRAM_COST_RATIO, device)
    b = idx.shape[0]
    saved = sum(
        b * (1.0 - (s + 1) * ratio / dim)
        for s in range(t, k)
        if _use_gram_step(s, dim, device, strategy)
    )
    return gram.refill(idx[:, :t], saved)


def _omp_block(
    x: torch.Tensor, dic: _Dictionary, k: int, strategy: str, on_step: Callable[[], None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP for one batch of targets x (b, D); returns (indices (b, k), coefficients (b, k))."""
    b, dim = x.shape
    atoms = dic.atoms
    n = atoms.shape[0]
    dtype, device = atoms.dtype, atoms.device
    tol = PIVOT_TOL_EPS * torch.finfo(dtype).eps
    idx = torch.zeros((b, k), dtype=torch.long, device=device)
    chol = torch.zeros((b, k, k), dtype=dtype, device=device)  # lower factor of G_II
    inv = torch.zeros((b, k, k), dtype=dtype, device=device)  # its inverse
    z = torch.zeros((b, k), dtype=dtype, device=device)  # chol^-1 (A_I x)
    active = torch.zeros((b, k), dtype=dtype, device=device)  # 0 for dependent atoms
    gamma = torch.zeros((b, 0), dtype=dtype, device=device)
    gram = dic.gram
    # alpha0 = x . A^T in the Gram layout while the Gram form is in use (Batch-OMP); the
    # support's atoms (b, k, D) once the direct form takes over. The form only ever switches
    # from Gram to direct (t only grows), and alpha0 is dropped before the atoms are gathered,
    # so only one of the two exists at a time. batch_omp makes a cache only for the Gram form.
    alpha = gram.alpha(x) if gram is not None else None
    chosen = None if gram is not None else torch.empty((b, k, dim), dtype=dtype, device=device)
    score_chunk = min(n, int(_device_setting(SCORE_CHUNK, device)))
    sel_dtype = dic.select_atoms.dtype if dic.select_atoms is not None else dtype

    for t in range(k):
        if alpha is not None and t and not _gram_step_ready(gram, idx, t, dim, k, strategy):
            alpha = None  # too late for the Gram form, or its cache is full: direct from now
            chosen = torch.empty((b, k, dim), dtype=dtype, device=device)
            for j in range(t):  # column by column: no second (b, t, D) temporary
                chosen[:, j] = atoms[idx[:, j]]

        if alpha is not None:
            pick = _ArgMaxAbs(idx[:, :t], n, gram.chunk, dtype)
            slots, neg_gamma = gram.slot[idx[:, :t]], -gamma
            for c in range(gram.n_chunks):
                width = min(n, (c + 1) * gram.chunk) - c * gram.chunk
                part = gram.chunk_scores(c, alpha, slots, neg_gamma) if t else alpha[c].clone()
                pick.update(c, part[:, :width])
        else:
            resid = x - torch.bmm(gamma.unsqueeze(1), chosen[:, :t]).squeeze(1) if t else x
            pick = _ArgMaxAbs(idx[:, :t], n, score_chunk, sel_dtype)
            for c, lo in enumerate(range(0, n, score_chunk)):
                pick.update(c, dic.correlate(resid, lo, min(n, lo + score_chunk)))
        new = pick.arg
        idx[:, t] = new

        atom = atoms[new]
        nn = dic.norms2[new]
        # New Cholesky row [w, d] of G_II: w = L^-1 G_I,new, d^2 = ||a||^2 - ||w||^2. L^-1 is
        # kept explicitly (one row per step), so every solve is a batched matmul: thousands of
        # tiny LAPACK triangular solves per step would cost more than the correlations.
        # At t = 0 every product is empty and w is (b, 0).
        if alpha is not None:
            g = gram.pairs(idx[:, :t], new).unsqueeze(-1)
        else:
            g = torch.bmm(chosen[:, :t], atom.unsqueeze(-1))
        w = torch.bmm(inv[:, :t, :t], g * active[:, :t, None]).squeeze(-1)
        piv2 = nn - (w * w).sum(dim=1)
        ok = piv2 > tol * nn
        diag = torch.where(ok, piv2.clamp_min(torch.finfo(dtype).tiny).sqrt(), 1.0)
        w = w * ok.unsqueeze(1)
        chol[:, t, :t] = w
        chol[:, t, t] = diag
        active[:, t] = ok.to(dtype)
        # row t of L^-1: [-(w^T L^-1) / d, 1 / d]
        inv[:, t, :t] = -torch.bmm(w.unsqueeze(1), inv[:, :t, :t]).squeeze(1) / diag[:, None]
        inv[:, t, t] = 1.0 / diag
        if chosen is not None:
            chosen[:, t] = atom
        proj = (x * atom).sum(dim=1)
        z[:, t] = torch.where(ok, (proj - (w * z[:, :t]).sum(dim=1)) / diag, 0.0)
        # gamma = L^-T z
        gamma = torch.bmm(z[:, None, : t + 1], inv[:, : t + 1, : t + 1]).squeeze(1)
        on_step()

    del alpha, chosen
    return idx, _polish(x, atoms, idx, chol, active)


def _polish(
    x: torch.Tensor,
    atoms: torch.Tensor,
    idx: torch.Tensor,
    chol: torch.Tensor,
    active: torch.Tensor,
) -> torch.Tensor:
    """Final coefficients by triangular solves with L (not its inverse), then one step of
    iterative refinement: the Cholesky route squares the support's condition number and
    correcting with the true residual brings the coefficients to QR accuracy. Done in
    sub-batches, so the (b, k, D) gather of the support's atoms stays small."""
    out = []
    for lo in range(0, x.shape[0], POLISH_BATCH):
        sl = slice(lo, lo + POLISH_BATCH)
        chosen, xs, L, act = atoms[idx[sl]], x[sl], chol[sl], active[sl].unsqueeze(-1)
        rhs = torch.bmm(chosen, xs.unsqueeze(-1)) * act  # A_I x
        y = torch.linalg.solve_triangular(L, rhs, upper=False).squeeze(-1)
        gamma = _solve_upper(L, y) * act.squeeze(-1)
        resid = xs - torch.bmm(gamma.unsqueeze(1), chosen).squeeze(1)
        rhs = torch.bmm(chosen, resid.unsqueeze(-1)) * act
        y = torch.linalg.solve_triangular(L, rhs, upper=False).squeeze(-1)
        out.append((gamma + _solve_upper(L, y)) * act.squeeze(-1))
    return torch.cat(out)


def _solve_upper(chol: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve chol^T g = rhs for g (batched back substitution)."""
    return torch.linalg.solve_triangular(chol.mT, rhs.unsqueeze(-1), upper=True).squeeze(-1)


def _memory_plan(
    budget: int, shape: tuple[int, ...], gram_chunk: int, device: torch.device
) -> tuple[int, int]:
    """(Gram cache rows, targets per batch) for a working-memory budget. ``shape`` is (targets,
    atoms, dim, k, bytes per element, bytes per element of a reduced selection copy or 0); a
    ``gram_chunk`` of 0 means no Gram form. The only memory-dependent decision of batch_omp."""
    n_targets, n_atoms, dim, k, elt, sel_elt = shape
    capacity = gram_cols = fixed = 0
    if gram_chunk:
        cols = math.ceil(n_atoms / gram_chunk) * gram_chunk
        rows = int(budget * GRAM_BUDGET_FRACTION) // (cols * elt)
        capacity = max(0, min(n_atoms, n_targets * k, rows))
        if capacity:
            gram_cols, fixed = cols, capacity * cols * elt + GRAM_FILL_BYTES
    fixed += n_atoms * dim * sel_elt
    sel_elt = sel_elt or elt
    # Per target: alpha0 in the Gram layout or the support's atoms (one form at a time: alpha0
    # is dropped before the direct form gathers the atoms, and the final polish gathers the
    # atoms of at most as many targets after both are gone), one score chunk (+ the residual
    # cast to the selection dtype), the Cholesky state.
    score_cols = min(n_atoms, int(_device_setting(SCORE_CHUNK, device)))
    per_item = max(gram_cols * elt, k * dim * elt)
    per_item += score_cols * sel_elt + (dim * sel_elt if sel_elt != elt else 0)
    per_item += (2 * k * k + 4 * k + 2 * dim) * elt + k * 8
    batch = suggest_batch_size(
        per_item, device, fixed_bytes=fixed, maximum=n_targets, budget_bytes=budget
    )
    # Even batches: a small remainder batch would pay the per-step overheads alone.
    return capacity, math.ceil(n_targets / math.ceil(n_targets / batch))


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
        show_progress: show a tqdm bar over greedy steps (targets x k).
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
        return torch.zeros((0, k), dtype=torch.long, device=device), x_all.new_zeros((0, k))
    if select_dtype == work:
        select_dtype = None
    elt = atoms.element_size()
    sel_elt = torch.empty((), dtype=select_dtype).element_size() if select_dtype else 0

    with torch.no_grad():
        gram_chunk = 0
        if select_dtype is None and k > 1 and _use_gram_step(1, dim, device, strategy):
            gram_chunk = min(int(_device_setting(GRAM_CHUNK, device)), n_atoms)
        shape = (n_targets, n_atoms, dim, k, elt, sel_elt)
        capacity, planned = _memory_plan(working_memory_budget(device), shape, gram_chunk, device)
        full = _memory_plan(
            working_memory_budget(device, free_now=False), shape, gram_chunk, device
        )
        if (capacity, batch_size or planned) != (full[0], batch_size or full[1]):
            LOG.warning(
                "%s: batches sized to the memory free now (Gram cache %d rows, batch %d; with "
                "memory free it would be %d, %d): the last bits of the result can differ from "
                "such a run",
                desc, capacity, batch_size or planned, *full,
            )  # fmt: skip
        dic = _Dictionary(
            atoms=atoms,
            norms2=(atoms * atoms).sum(dim=1),
            select_atoms=atoms.to(select_dtype) if select_dtype is not None else None,
            gram=_GramCache(atoms, capacity, gram_chunk) if capacity else None,
            tf32=select_tf32 and select_dtype is None,
        )
        batch_size = batch_size or planned

        # The bar counts greedy steps (targets x k), so a batch of thousands of targets shows
        # progress while it runs; a batch retried after running out of memory rewinds it.
        threads = (
            threads_for_fine_grained_kernel(desc)
            if device.type == "cpu"
            else contextlib.nullcontext()
        )
        bar = tqdm(
            total=n_targets * k, desc=desc, unit="step", disable=not show_progress, leave=False
        )
        with bar, threads:

            def run(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
                start = bar.n
                try:
                    return _omp_block(x_all[lo:hi], dic, k, strategy, lambda: bar.update(hi - lo))
                except BaseException:
                    bar.n = bar.last_print_n = start
                    bar.refresh()
                    raise

            parts = run_batched(run, n_targets, batch_size)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


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


def donor_rows(
    problem: EstimationProblem, k: int, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, dictionary): the targets' and the anchors' donor rows in fp32 on the compute
    device, after checking the problem has donor rows and at least ``k`` anchors."""
    donor = problem.donor
    if donor is None or problem.donor_anchor_ids is None or problem.donor_target_ids is None:
        raise ValueError(
            f"{method} needs donor embeddings (donor, donor_anchor_ids, donor_target_ids)"
        )
    n_anchors = int(problem.anchor_ids.numel())
    if k > n_anchors:
        raise ConfigError(
            f"must be <= {n_anchors} shared tokens (got {k})",
            where="tokenizer.approximation.k",
        )
    targets = donor[problem.donor_target_ids.to(donor.device)].to(problem.device, torch.float32)
    dictionary = donor[problem.donor_anchor_ids.to(donor.device)].to(problem.device, torch.float32)
    return targets, dictionary


def estimate_omp(problem: EstimationProblem, params: OmpParams) -> torch.Tensor:
    """Rows sum_j c_j * base[anchor_j] with (anchor_j, c_j) from OMP in the donor space."""
    if problem.n_targets == 0:
        return torch.zeros((0, problem.base.shape[1]), dtype=torch.float32, device=problem.device)
    targets, dictionary = donor_rows(problem, params.k, "omp")
    device = problem.device
    select_dtype, select_tf32 = select_settings(params.select_precision, device)
    idx, coef = batch_omp(
        targets,
        dictionary,
        params.k,
        batch_size=params.batch_size,
        select_dtype=select_dtype,
        select_tf32=select_tf32,
        show_progress=problem.show_progress,
        desc=f"OMP {problem.label}".strip(),
    )
    # sum_j coef[t, j] * base[anchor_ids[idx[t, j]]] without materialising (T, k, d).
    rows = problem.anchor_ids.to(device)[idx]
    return F.embedding_bag(rows, problem.base.float(), per_sample_weights=coef.float(), mode="sum")


def omp_cost(q: api.CostQuery) -> tuple[int, float | None]:
    """Targets and dictionary in fp32, plus per-target score row, support and factor."""
    k = min(int(getattr(q.params, "k", 64)), max(q.anchors, 1))
    fixed = (q.targets + q.anchors) * q.dim_source * api.FP32
    per_target = (q.anchors + k * q.dim_source + k * k) * api.FP32
    batch = getattr(q.params, "batch_size", None) or max(1, (q.budget - fixed) // per_target)
    batch = min(int(batch), q.targets)
    return fixed + batch * per_target, 2.0 * k * q.targets * q.anchors * q.dim_source


SPEC = MethodSpec(
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
    cost=omp_cost,
)
