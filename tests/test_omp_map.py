"""``omp_map``: OMP plus the ridge-mapped residual, chosen per pair; the default method."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import tensors

from mergekit_tokenplug import registry
from mergekit_tokenplug.cli import main
from mergekit_tokenplug.method_choice import choose_method
from mergekit_tokenplug.methods.base import EstimationProblem
from mergekit_tokenplug.methods.omp_map import (
    OmpMapParams,
    check_anchors,
    choose_alpha_ridge,
    ridge_basis,
)
from mergekit_tokenplug.surgery import transplant

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def pair(n_anchor=600, n_target=80, d_s=24, d_b=32, linear=True, seed=0):
    """A donor space and a base space; with ``linear`` the base is a noisy linear image."""
    g = torch.Generator().manual_seed(seed)
    donor = torch.randn(n_anchor + n_target, d_s, generator=g)
    if linear:
        m = torch.randn(d_s, d_b, generator=g) / d_s**0.5
        base = donor @ m + 0.05 * torch.randn(n_anchor + n_target, d_b, generator=g)
    else:
        base = torch.randn(n_anchor + n_target, d_b, generator=g)
    return donor, base


def problem(donor, base, n_anchor, seed=0):
    n = donor.shape[0]
    return EstimationProblem(
        base=base[:n_anchor],  # the targets' base rows are unknown to the method
        anchor_ids=torch.arange(n_anchor),
        n_targets=n - n_anchor,
        donor=donor,
        donor_anchor_ids=torch.arange(n_anchor),
        donor_target_ids=torch.arange(n_anchor, n),
        seed=seed,
        show_progress=False,
    )


def test_is_the_default_for_transplant_and_recipes(zoo):
    """With a donor that has weights, a recipe or transplant naming no method runs omp_map
    (the method is chosen by what the source offers: method_choice)."""
    assert registry.DEFAULT_METHOD == "omp_map"
    assert choose_method(None, str(zoo.bl_untied)).method == "omp_map"
    assert choose_method(None, "base").method == "omp_map"
    params = {p.name: p.default for p in main.commands["transplant"].params}
    assert params["method"] is None  # "none named": chosen by the source


def test_alpha_zero_is_exactly_omp():
    donor, base = pair()
    prob = problem(donor, base, 600)
    rows = registry.get("omp_map").estimate(prob, OmpMapParams(k=8, alpha=0.0, ridge=0.1))
    ref = registry.get("omp").estimate(prob, registry.get("omp").parse_params({"k": 8}))
    assert torch.equal(rows, ref)


def test_mapped_residual_helps_when_the_spaces_are_linear_and_the_check_finds_it():
    donor, base = pair(linear=True)
    prob = problem(donor, base, 600)
    true = base[600:]
    omp = registry.get("omp").estimate(prob, registry.get("omp").parse_params({"k": 4}))
    ours = registry.get("omp_map").estimate(prob, OmpMapParams(k=4, check_size=64))
    err = lambda e: float(((e - true).norm(dim=1) / true.norm(dim=1)).mean())  # noqa: E731
    assert err(ours) < 0.5 * err(omp)
    d_a, b_a = donor[:600], base[:600]
    hidden = check_anchors(donor[600:], d_a, 64, torch.Generator().manual_seed(1))
    alpha, _, scores = choose_alpha_ridge(d_a, b_a, hidden, OmpMapParams(k=4))
    assert alpha > 0 and scores[(alpha, _)] < min(v for (a, r), v in scores.items() if a == 0.0)


def test_check_keeps_plain_omp_when_the_map_carries_nothing():
    donor, base = pair(linear=False, seed=3)
    d_a, b_a = donor[:600], base[:600]
    hidden = check_anchors(donor[600:], d_a, 64, torch.Generator().manual_seed(1))
    alpha, _, _ = choose_alpha_ridge(d_a, b_a, hidden, OmpMapParams(k=4))
    assert alpha <= 0.25


def test_check_anchors_are_the_targets_nearest_shared_tokens():
    donor, _ = pair()
    anchors, targets = donor[:600], donor[600:]
    pos = check_anchors(targets, anchors, 1000, torch.Generator().manual_seed(0))
    cos = (
        torch.nn.functional.normalize(targets, dim=1)
        @ torch.nn.functional.normalize(anchors, dim=1).T
    )
    assert set(pos.tolist()) == set(cos.argmax(dim=1).tolist())


def test_ridge_map_is_the_closed_form_solution():
    donor, base = pair(n_anchor=300, n_target=0)
    basis = ridge_basis(donor, base)
    dc = (donor - donor.mean(0)).double()
    bc = (base - base.mean(0)).double()
    lam = 0.1 * basis.scale
    want = torch.linalg.solve(
        dc.T @ dc + lam * torch.eye(dc.shape[1], dtype=torch.float64), dc.T @ bc
    )
    assert torch.allclose(basis.map(0.1), want, atol=1e-8)


def test_same_seed_same_rows():
    donor, base = pair()
    a = registry.get("omp_map").estimate(problem(donor, base, 600, seed=5), OmpMapParams(k=4))
    b = registry.get("omp_map").estimate(problem(donor, base, 600, seed=5), OmpMapParams(k=4))
    assert torch.equal(a, b)


def test_bad_params_are_one_line():
    with pytest.raises(Exception, match="alpha"):
        registry.get("omp_map").parse_params({"alpha": -1})
    with pytest.raises(Exception, match="unknown parameter"):
        registry.get("omp_map").parse_params({"lambda": 1})


def test_recipe_without_method_runs_omp_map_on_both_untied_matrices(zoo, tmp_path):
    """An untied base gets both matrices estimated, each from the donor's matching matrix."""
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "-p", "k=4", "-q"]
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    mats = manifest["report"]["matrices"]
    assert {m["weight"] for m in mats} == {EMB, HEAD}
    assert all(
        set(m["by_method"]) <= {"omp_map", "mean"} and m["by_method"].get("omp_map") for m in mats
    )
    t = tensors(out)
    assert not torch.equal(t[EMB], t[HEAD])
    again = tmp_path / "again"
    transplant(str(zoo.sp_untied), str(zoo.bl_untied), str(again), params={"k": 4}, quiet=True)
    assert all(torch.equal(t[k], tensors(again)[k]) for k in (EMB, HEAD))
