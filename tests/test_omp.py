"""OMP kernel: parity with mergekit's batch_omp, exactness, robustness, batching back-off."""

from __future__ import annotations

import logging

import pytest
import torch
from mergekit.tokensurgeon.omp import batch_omp as mergekit_batch_omp

from mergekit_tokenplug import registry
from mergekit_tokenplug.compute.batching import run_batched, suggest_batch_size
from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.methods.base import EstimationProblem
from mergekit_tokenplug.methods.omp import OmpParams, batch_omp, estimate_omp


def _embedding_like(gen: torch.Generator, n: int, dim: int) -> torch.Tensor:
    scales = torch.arange(1, dim + 1, dtype=torch.float32) ** -0.5
    rows = torch.randn(n, dim, generator=gen) * scales + 0.3
    return rows * torch.exp(0.3 * torch.randn(n, 1, generator=gen))


def _reference_min_gaps(x: torch.Tensor, atoms: torch.Tensor, k: int) -> torch.Tensor:
    """Independent fp64 greedy OMP (lstsq refit); per target, the smallest relative gap between
    the best and second-best |correlation| over the k steps (where ties make supports ambiguous)."""
    x, atoms = x.double(), atoms.double()
    gaps = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    support = torch.zeros((x.shape[0], 0), dtype=torch.long)
    resid = x
    for _ in range(k):
        corr = (resid @ atoms.T).abs()
        corr.scatter_(1, support, -1.0)
        top = corr.topk(2, dim=1).values
        gaps = torch.minimum(gaps, (top[:, 0] - top[:, 1]) / top[:, 0].clamp_min(1e-300))
        support = torch.cat([support, corr.argmax(dim=1, keepdim=True)], dim=1)
        sub = atoms[support].mT  # (B, D, t)
        coef = torch.linalg.lstsq(sub, x.unsqueeze(-1)).solution
        resid = x - (sub @ coef).squeeze(-1)
    return gaps


@pytest.fixture(scope="module")
def parity_case() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, n, dim, k = 64, 800, 48, 12
    x = _embedding_like(gen, b, dim)
    atoms = _embedding_like(gen, n, dim)
    idx_mk, coef_mk = mergekit_batch_omp(x, atoms, k)
    gaps = _reference_min_gaps(x, atoms, k)
    return {"x": x, "atoms": atoms, "k": k, "idx_mk": idx_mk, "coef_mk": coef_mk, "gaps": gaps}


@pytest.mark.parametrize("strategy", ["auto", "gram", "direct"])
def test_parity_with_mergekit(parity_case: dict, strategy: str) -> None:
    c = parity_case
    idx, coef = batch_omp(c["x"], c["atoms"], c["k"], strategy=strategy)
    assert idx.shape == c["idx_mk"].shape and coef.dtype == torch.float32

    unambiguous = c["gaps"] > 1e-4
    assert unambiguous.float().mean() > 0.8  # the comparison covers most rows
    same = (idx == c["idx_mk"]).all(dim=1)
    assert bool(same[unambiguous].all()), "supports differ on rows without near-ties"
    rel = (coef - c["coef_mk"]).norm(dim=1) / c["coef_mk"].norm(dim=1)
    assert float(rel[same].max()) < 1e-4


@pytest.mark.parametrize("strategy", ["auto", "gram", "direct"])
def test_exact_recovery_of_sparse_combination(strategy: str) -> None:
    gen = torch.Generator().manual_seed(1)
    atoms = torch.randn(300, 256, generator=gen)
    planted = torch.tensor([[7, 120, 250], [3, 4, 5]])
    weights = torch.tensor([[1.0, -0.8, 0.6], [0.5, 0.9, -1.2]])
    x = torch.einsum("bs,bsd->bd", weights, atoms[planted])
    idx, coef = batch_omp(x, atoms, 3, strategy=strategy)
    for row in range(2):
        order = idx[row].argsort()
        assert torch.equal(idx[row][order], planted[row].sort().values)
        expected = weights[row][planted[row].argsort()]
        torch.testing.assert_close(coef[row][order], expected, rtol=1e-5, atol=1e-6)
    # More atoms than needed: the extra ones get ~0 weight, the reconstruction stays exact.
    idx, coef = batch_omp(x, atoms, 8, strategy=strategy)
    recon = torch.einsum("bk,bkd->bd", coef, atoms[idx])
    torch.testing.assert_close(recon, x, rtol=1e-4, atol=1e-4)
    assert set(planted[0].tolist()) <= set(idx[0].tolist())


def test_zero_target_and_dependent_atoms() -> None:
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(10, 16, generator=gen)
    atoms = torch.cat([base, base[:3] * 2.0, torch.zeros(2, 16)])  # duplicates, zero atoms
    x = torch.stack([torch.zeros(16), base[0] + base[1]])
    idx, coef = batch_omp(x, atoms, 12)
    assert torch.isfinite(coef).all()
    assert torch.equal(coef[0], torch.zeros(12))
    recon = torch.einsum("k,kd->d", coef[1], atoms[idx[1]])
    torch.testing.assert_close(recon, x[1], rtol=1e-4, atol=1e-4)
    assert idx[1].unique().numel() == 12  # never re-picks an atom


def test_deterministic_and_batch_independent() -> None:
    gen = torch.Generator().manual_seed(3)
    x = _embedding_like(gen, 50, 32)
    atoms = _embedding_like(gen, 400, 32)
    a = batch_omp(x, atoms, 10)
    b = batch_omp(x, atoms, 10)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = batch_omp(x, atoms, 10, batch_size=7)
    assert torch.equal(a[0], c[0])
    torch.testing.assert_close(a[1], c[1], rtol=1e-5, atol=1e-6)


def test_batches_sized_by_the_memory_free_now_say_so(monkeypatch, caplog) -> None:
    """Batch and Gram-cache shapes can change the last bits: a plan bounded by the memory free
    at the moment (not by the budget setting) is logged, so such a run is never silently
    different from one on a machine with memory to spare."""
    from mergekit_tokenplug.compute import batching

    gen = torch.Generator().manual_seed(5)
    x, atoms = _embedding_like(gen, 100, 64), _embedding_like(gen, 2000, 64)
    monkeypatch.setattr(batching, "available_cpu_memory", lambda: 1 << 40)
    with caplog.at_level(logging.WARNING, logger="mergekit_tokenplug.methods.omp"):
        roomy = batch_omp(x, atoms, 16, desc="roomy")
    assert "roomy" not in caplog.text
    monkeypatch.setattr(batching, "available_cpu_memory", lambda: 4 << 20)
    with caplog.at_level(logging.WARNING, logger="mergekit_tokenplug.methods.omp"):
        tight = batch_omp(x, atoms, 16, desc="tight")
    assert "tight: batches sized to the memory free now" in caplog.text
    assert torch.equal(roomy[0], tight[0])


def test_fp64_and_reduced_select_dtype() -> None:
    gen = torch.Generator().manual_seed(4)
    atoms = torch.randn(200, 64, generator=gen, dtype=torch.float64)
    x = 2.0 * atoms[11] - atoms[42]
    _, coef64 = batch_omp(x.unsqueeze(0), atoms, 2)
    assert coef64.dtype == torch.float64
    idx, coef = batch_omp(x.unsqueeze(0).float(), atoms.float(), 2, select_dtype=torch.bfloat16)
    assert coef.dtype == torch.float32
    assert sorted(idx[0].tolist()) == [11, 42]


def _problem(k_anchors: int, targets_per_combo: int = 5) -> tuple[EstimationProblem, torch.Tensor]:
    """Donor and base spaces related by a known linear map M (base = donor @ M on anchors)."""
    gen = torch.Generator().manual_seed(5)
    d_donor, d_base = 32, 24
    m = torch.randn(d_donor, d_base, generator=gen)
    anchors_donor = torch.randn(k_anchors, d_donor, generator=gen)
    combos = torch.randint(0, k_anchors, (targets_per_combo, 3), generator=gen)
    w = torch.randn(targets_per_combo, 3, generator=gen)
    targets_donor = torch.einsum("ts,tsd->td", w, anchors_donor[combos])
    # Donor matrix: targets and anchors interleaved in a shuffled order.
    v_donor = k_anchors + targets_per_combo + 6
    perm = torch.randperm(v_donor, generator=gen)
    donor = torch.randn(v_donor, d_donor, generator=gen)
    donor_anchor_ids, donor_target_ids = (
        perm[:k_anchors],
        perm[k_anchors : k_anchors + targets_per_combo],
    )
    donor[donor_anchor_ids] = anchors_donor
    donor[donor_target_ids] = targets_donor
    # Base matrix: the anchors' rows (mapped by M) at other, shuffled positions.
    v_base = k_anchors + 9
    base = torch.randn(v_base, d_base, generator=gen)
    anchor_ids = torch.randperm(v_base, generator=gen)[:k_anchors]
    base[anchor_ids] = anchors_donor @ m
    problem = EstimationProblem(
        base=base,
        anchor_ids=anchor_ids,
        n_targets=targets_per_combo,
        donor=donor,
        donor_anchor_ids=donor_anchor_ids,
        donor_target_ids=donor_target_ids,
        show_progress=False,
    )
    return problem, targets_donor @ m


def test_estimate_maps_coefficients_to_base_space() -> None:
    problem, expected = _problem(40)
    out = estimate_omp(problem, OmpParams(k=3))
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    empty = EstimationProblem(base=problem.base, anchor_ids=problem.anchor_ids, n_targets=0)
    assert estimate_omp(empty, OmpParams()).shape == (0, 24)


def test_k_larger_than_anchors_is_a_config_error() -> None:
    problem, _ = _problem(10)
    spec = registry.get("omp")
    params = spec.parse_params({"k": 11})
    with pytest.raises(ConfigError, match=r"tokenizer\.approximation\.k.*<= 10 shared tokens"):
        spec.estimate(problem, params)
    with pytest.raises(ConfigError):
        spec.parse_params({"k": 0})


def test_batch_size_backs_off_on_out_of_memory() -> None:
    calls: list[tuple[int, int]] = []

    def fn(lo: int, hi: int) -> list[int]:
        calls.append((lo, hi))
        if hi - lo > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(range(lo, hi))

    parts = run_batched(fn, 10, 16)
    assert [i for p in parts for i in p] == list(range(10))
    assert [hi - lo for lo, hi in calls] == [10, 8, 4, 4, 2]

    cpu_failed = []

    def cpu_fn(lo: int, hi: int) -> int:
        if not cpu_failed:
            cpu_failed.append(hi - lo)
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
        return hi - lo

    assert sum(run_batched(cpu_fn, 9, 8)) == 9 and cpu_failed == [8]

    def broken(lo: int, hi: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        run_batched(broken, 3, 2)
    assert suggest_batch_size(100, "cpu", fixed_bytes=200, budget_bytes=1200, maximum=50) == 10


def test_bf16_selection_matches_fp32_on_well_separated_correlations() -> None:
    """bf16 selection picks the same atoms as fp32 when correlations are well separated.

    bf16 keeps 8 significant bits (relative rounding 2^-9 per element); with D = 256 the
    correlation error stays well under 2% of |<r, a>|, so any step whose best |correlation|
    leads the runner-up by more than that picks the same atom in both precisions. The fit
    never uses the reduced dtype, so on identical supports the coefficients agree to fp32
    accuracy: documented tolerance, relative norm difference < 1e-5 per row.
    """
    gen = torch.Generator().manual_seed(6)
    n, dim, k = 400, 256, 4
    atoms = torch.randn(n, dim, generator=gen) / dim**0.5  # nearly orthonormal
    support = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(32)])
    weights = torch.tensor([1.0, 0.6, 0.35, 0.2]) * torch.where(
        torch.rand(32, k, generator=gen) < 0.5, -1.0, 1.0
    )
    x = torch.einsum("bk,bkd->bd", weights, atoms[support])
    gaps = _reference_min_gaps(x, atoms, k)
    assert float(gaps.min()) > 0.05  # the premise: well-separated at every step

    idx32, coef32 = batch_omp(x, atoms, k)
    idx16, coef16 = batch_omp(x, atoms, k, select_dtype=torch.bfloat16)
    assert coef16.dtype == torch.float32
    assert torch.equal(idx16, idx32)
    assert torch.equal(idx32, support)  # greedy order follows the planted weights
    rel = (coef16 - coef32).norm(dim=1) / coef32.norm(dim=1)
    assert float(rel.max()) < 1e-5
    torch.testing.assert_close(coef32, weights, rtol=1e-4, atol=1e-5)


def test_select_precision_param() -> None:
    problem, expected = _problem(40)
    assert OmpParams().select_precision == "auto"
    auto = estimate_omp(problem, OmpParams(k=3))
    fp32 = estimate_omp(problem, OmpParams(k=3, select_precision="fp32"))
    assert torch.equal(auto, fp32)  # auto is fp32 off CUDA
    flag = torch.backends.cuda.matmul.allow_tf32
    tf32 = estimate_omp(problem, OmpParams(k=3, select_precision="tf32"))
    assert torch.equal(tf32, fp32)  # TF32 affects CUDA matmuls only
    assert torch.backends.cuda.matmul.allow_tf32 == flag  # the global flag is restored
    bf16 = estimate_omp(problem, OmpParams(k=3, select_precision="bf16"))
    torch.testing.assert_close(bf16, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError):
        registry.get("omp").parse_params({"select_precision": "fp16"})


def test_chunking_and_gram_cache_pressure_keep_the_answer(parity_case: dict, monkeypatch) -> None:
    """Odd chunk widths (a padded last chunk), a Gram cache too small for the run (refilled
    between batches, abandoned for the direct form mid-batch) all give the same greedy answer."""
    from mergekit_tokenplug.compute.batching import working_memory_budget
    from mergekit_tokenplug.methods import omp

    c = parity_case
    x, atoms, k = c["x"], c["atoms"], c["k"]
    reference = batch_omp(x, atoms, k, strategy="direct")
    monkeypatch.setitem(omp.GRAM_CHUNK, "cpu", 96)  # 800 atoms: 9 chunks, the last one padded
    monkeypatch.setitem(omp.SCORE_CHUNK, "cpu", 123)
    row_bytes = 9 * 96 * atoms.element_size()
    unambiguous = c["gaps"] > 1e-4
    # 100 rows: each new batch refills the cache with its own support; 40 rows: a batch's
    # support outgrows the cache and the run continues in the direct form.
    for rows in (100, 40):
        fraction = (rows + 0.5) * row_bytes / working_memory_budget("cpu")
        monkeypatch.setattr(omp, "GRAM_BUDGET_FRACTION", fraction)
        for strategy in ("gram", "auto"):
            idx, coef = batch_omp(x, atoms, k, strategy=strategy, batch_size=16)
            same = (idx == reference[0]).all(dim=1)
            assert bool(same[unambiguous].all()), (rows, strategy)
            rel = (coef - reference[1]).norm(dim=1) / reference[1].norm(dim=1)
            assert float(rel[same].max()) < 1e-4


@pytest.mark.parametrize("strategy", ["gram", "direct"])
def test_ties_go_to_the_lowest_atom_index(strategy: str) -> None:
    """Duplicated atoms in different chunks: the first occurrence wins, as argmax's does."""
    gen = torch.Generator().manual_seed(7)
    atoms = torch.randn(700, 32, generator=gen)
    atoms[650] = atoms[5]
    atoms[300] = atoms[90]
    x = torch.stack([atoms[5] * 3.0, atoms[90] - 0.01 * atoms[7]])
    idx, _ = batch_omp(x, atoms, 2, strategy=strategy)
    assert int(idx[0, 0]) == 5 and int(idx[1, 0]) == 90
