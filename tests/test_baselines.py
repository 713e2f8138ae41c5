"""Baselines: mean, zero, hewitt (correct multivariate normal), subword_mean (FVT)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mergekit_tokenplug import registry
from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.methods.base import EstimationProblem, Need, rows_of


def _problem(base: torch.Tensor, n_targets: int, **kw) -> EstimationProblem:
    return EstimationProblem(
        base=base,
        anchor_ids=torch.arange(base.shape[0]),
        n_targets=n_targets,
        show_progress=False,
        **kw,
    )


def _run(name: str, problem: EstimationProblem, **params) -> torch.Tensor:
    spec = registry.get(name)
    out = rows_of(spec.estimate(problem, spec.parse_params(params)))
    assert out.dtype == torch.float32
    assert out.shape == (problem.n_targets, problem.base.shape[1])
    return out


def _correlated_base(v: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g)
    return torch.randn(v, d, generator=g) @ mix + torch.arange(d, dtype=torch.float32)


def test_registered_with_needs():
    assert registry.get("mean").needs == frozenset()
    assert registry.get("zero").needs == frozenset()
    assert registry.get("hewitt").needs == frozenset()
    assert registry.get("subword_mean").needs == frozenset({Need.BASE_TOKENIZER})
    assert "poor" in registry.get("zero").summary


def test_mean_and_zero_exact():
    base = _correlated_base(7, 3)
    mu = [sum(float(base[i, j]) for i in range(7)) / 7 for j in range(3)]
    out = _run("mean", _problem(base, 4))
    assert torch.allclose(out, torch.tensor(mu).expand(4, 3), atol=1e-5)
    assert torch.equal(_run("zero", _problem(base, 4)), torch.zeros(4, 3))


def test_unknown_and_invalid_params_rejected():
    with pytest.raises(ConfigError, match="unknown parameter"):
        registry.get("mean").parse_params({"scale": 1.0})
    with pytest.raises(ConfigError, match="scale"):
        registry.get("hewitt").parse_params({"scale": -1.0})


def test_hewitt_samples_have_mean_and_scaled_covariance():
    base = _correlated_base(300, 4)
    mu = base.double().mean(0)
    cov = torch.cov(base.double().T)  # independent reference (numpy-style covariance)
    out = _run("hewitt", _problem(base, 20_000, seed=3), scale=1.0).double()
    assert torch.allclose(out.mean(0), mu, atol=0.05 * cov.diagonal().max().sqrt().item())
    emp = torch.cov(out.T)
    assert (emp - cov).norm() / cov.norm() < 0.05
    # small default scale: rows stay very close to the mean, but are not all identical
    small = _run("hewitt", _problem(base, 50, seed=3)).double()
    assert (small - mu).abs().max() < 0.05 * cov.diagonal().max().sqrt()
    assert not torch.equal(small[0], small[1])


def test_hewitt_deterministic_by_seed():
    base = _correlated_base(50, 5)
    a = _run("hewitt", _problem(base, 10, seed=11), scale=0.1)
    b = _run("hewitt", _problem(base, 10, seed=11), scale=0.1)
    c = _run("hewitt", _problem(base, 10, seed=12), scale=0.1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_hewitt_non_pd_falls_back_to_mean(caplog):
    base = _correlated_base(3, 8)  # 3 rows in 8 dims: covariance has rank 2
    with caplog.at_level(logging.WARNING):
        out = _run("hewitt", _problem(base, 5, label="m embed"), scale=1.0)
    assert torch.allclose(out, base.mean(0).expand(5, 8), atol=1e-6)
    warnings = [r for r in caplog.records if "positive definite" in r.getMessage()]
    assert len(warnings) == 1 and "m embed" in warnings[0].getMessage()


def test_subword_mean_matches_direct_computation():
    base = _correlated_base(10, 5)
    pieces = [[1, 2], [3], [], [4, 4, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    out = _run("subword_mean", _problem(base, len(pieces), target_pieces=pieces))
    for i, ps in enumerate(pieces):
        rows = [base[p] for p in ps] if ps else [base[j] for j in range(10)]
        expected = sum(rows) / len(rows)
        assert torch.allclose(out[i], expected, atol=1e-5), i


def test_subword_mean_rejects_bad_pieces():
    base = _correlated_base(4, 2)
    with pytest.raises(ValueError, match="rows of the base"):
        _run("subword_mean", _problem(base, 1, target_pieces=[[4]]))
    with pytest.raises(ValueError, match="target_pieces"):
        _run("subword_mean", _problem(base, 2))


def test_methods_without_donor_rows_see_which_tokens_are_shared():
    """Every problem says which output tokens the model has (and where) and which are targets,
    whatever the method needs."""
    from mergekit_tokenplug.fill import build_problem

    base = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    src_ids = np.array([0, -1, 2, 4, -1, 1])  # output id -> row of the model
    out_ids = np.array([1, 4])
    problem = build_problem(
        base, src_ids, out_ids, None, None, registry.get("mean"), None,
        role="input", seed=0, label="", show_progress=False,
    )  # fmt: skip
    assert problem.out_to_base.tolist() == src_ids.tolist()
    assert problem.out_to_target.tolist() == [-1, 0, -1, -1, 1, -1]
