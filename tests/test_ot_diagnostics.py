"""optical_st.transport.diagnostics against hand-computed plans."""

from __future__ import annotations

import math

import pytest
import torch

from optical_st.transport import cost_statistics, plan_statistics, sinkhorn_log


def test_independent_coupling_is_maximally_diffuse():
    a = torch.full((1, 4), 0.25)
    b = torch.full((1, 5), 0.2)
    stats = plan_statistics(a.unsqueeze(2) * b.unsqueeze(1), a, b)
    assert stats["entropy_ratio"] == pytest.approx(1.0)
    assert stats["argmax_mass"] == pytest.approx(0.2)  # each row's largest entry is a_i / 5
    assert stats["marginal_error"] == pytest.approx(0.0, abs=1e-6)  # fp32 products


def test_a_permutation_is_a_one_to_one_matching():
    n = 4
    a = torch.full((1, n), 1 / n)
    plan = torch.eye(n)[[2, 0, 3, 1]].unsqueeze(0) / n
    stats = plan_statistics(plan, a, a)
    # H(P) = log n, H(a b^T) = 2 log n
    assert stats["entropy_ratio"] == pytest.approx(0.5)
    assert stats["argmax_mass"] == pytest.approx(1.0)


def test_marginal_error_is_the_l1_violation_of_both_marginals():
    a = torch.tensor([[0.5, 0.5]])
    plan = torch.tensor([[[0.5, 0.2], [0.0, 0.3]]])  # rows 0.7 / 0.3, columns 0.5 / 0.5
    assert plan_statistics(plan, a, a)["marginal_error"] == pytest.approx(0.4)


def test_padding_is_ignored_and_smaller_reg_gives_sharper_plans():
    torch.manual_seed(0)
    cost = torch.rand(3, 6, 7)
    a = torch.full((3, 6), 1 / 6)
    b = torch.tensor([[1 / 5] * 5 + [0, 0]] * 3)  # two padding columns
    cost[:, :, 5:] = 100.0  # padding costs must not enter the statistics
    stats = cost_statistics(cost, a, b)
    assert stats["cost_max"] <= 1.0 and stats["cost_min"] >= 0.0
    valid = cost[:, :, :5]
    assert stats["cost_mean"] == pytest.approx(float(valid.mean()), rel=1e-6)
    ratios = [plan_statistics(sinkhorn_log(cost, a, b, reg=r, max_iter=5000, tol=1e-9), a, b) for r in (1.0, 0.1, 0.01)]
    assert ratios[0]["entropy_ratio"] > ratios[1]["entropy_ratio"] > ratios[2]["entropy_ratio"]
    assert ratios[0]["entropy_ratio"] > 0.99  # reg far above the cost spread: nearly the independent coupling
    assert all(r["marginal_error"] < 1e-5 for r in ratios)  # converged, up to fp32 sums
    assert math.isfinite(ratios[2]["argmax_mass"])


def test_tensor_statistics_read_nothing_back_and_match_the_direct_formulas():
    """The loss records these per step: masks instead of boolean indexing, so no host read; the values are torch.std
    of the costs between tokens with mass, and the per-problem means over the rows asked for."""
    from optical_st.transport import cost_std, plan_stats

    g = torch.Generator().manual_seed(1)
    cost = torch.rand(4, 6, 7, generator=g)
    a = torch.rand(4, 6, generator=g)
    b = torch.rand(4, 7, generator=g)
    a[:, 4:], b[:, 6:] = 0, 0  # padding
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    valid = (a.unsqueeze(2) > 0) & (b.unsqueeze(1) > 0)
    std = cost_std(cost, a, b)
    assert std.dim() == 0 and float(std) == pytest.approx(float(cost.double()[valid].std()), rel=1e-12)
    assert float(cost_std(cost, torch.zeros_like(a), b)) == 0.0  # no pair carries mass
    plan = sinkhorn_log(cost, a, b, reg=0.1)
    rows = torch.tensor([True, False, True, True])
    subset = plan_statistics(plan[rows], a[rows], b[rows])
    masked = plan_stats(plan, a, b, rows)
    assert all(value.dim() == 0 for value in masked.values())
    for key, value in subset.items():
        assert float(masked[key]) == pytest.approx(value, rel=1e-12), key
    everything = plan_stats(plan, a, b, torch.ones(4, dtype=torch.bool))
    assert {k: float(v) for k, v in everything.items()} == plan_statistics(plan, a, b)  # all rows: the plain means
