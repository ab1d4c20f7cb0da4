"""optical_st.transport against POT as the oracle."""

from __future__ import annotations

import numpy as np
import ot as pot
import pytest
import torch

from optical_st.transport import (
    cosine_cost,
    emd,
    ot_distance,
    pairwise_cost,
    sinkhorn_log,
    special_tokens_mask,
    sqeuclidean_cost,
    token_marginals,
    transport_plan,
)

REGS = [1e-3, 1e-2, 0.05, 0.3, 1.0]


def ragged_problem(seed: int, B: int = 4, n_max: int = 9, m_max: int = 11, dtype=torch.float64, min_len: int = 1):
    """Cosine costs between random token sets, each row padded to the batch width with zero-mass tokens."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(max(2, min_len), n_max + 1, (1,), generator=g))
    m = int(torch.randint(max(2, min_len), m_max + 1, (1,), generator=g))
    x = torch.randn(B, n, 16, generator=g, dtype=dtype)
    y = torch.randn(B, m, 16, generator=g, dtype=dtype)
    mask_a = torch.zeros(B, n)
    mask_b = torch.zeros(B, m)
    for i in range(B):
        mask_a[i, : int(torch.randint(min_len, n + 1, (1,), generator=g))] = 1
        mask_b[i, : int(torch.randint(min_len, m + 1, (1,), generator=g))] = 1
    mask_a[0] = 1  # at least one full row so the batch width is used
    a = mask_a.to(dtype) / mask_a.to(dtype).sum(-1, keepdim=True)
    b = mask_b.to(dtype) / mask_b.to(dtype).sum(-1, keepdim=True)
    return cosine_cost(x, y), a, b


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("reg", REGS)
def test_same_iterates_as_pot_batched(seed, reg):
    """Our iterates are POT's log_sinkhorn iterates: equal after the same number of iterations, converged or not."""
    C, a, b = ragged_problem(seed)
    for iters in (1, 7, 40):
        ours, log = sinkhorn_log(C, a, b, reg=reg, max_iter=iters, tol=0.0, return_log=True)
        ref = pot.batch.solve_batch(C, reg, a, b, max_iter=iters, tol=0.0, method="log_sinkhorn")
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref.plan, atol=1e-10, rtol=0)
    if reg == 1e-3:  # scalings outgrow e^30 within a block: the absorption path was exercised too
        assert log.absorptions > 0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("reg", [0.05, 0.1, 0.3, 1.0])
def test_converged_plan_and_value_match_pot(seed, reg):
    """At convergence: plans and <P, C> agree with POT's batched solver and its per-pair sinkhorn_log to 1e-5.
    Smaller reg is covered iterate-by-iterate above: reaching 1e-9 there takes 1e5+ iterations (in POT too)."""
    C, a, b = ragged_problem(100 + seed, min_len=4)
    plan, log = sinkhorn_log(C, a, b, reg=reg, max_iter=50000, tol=1e-10, return_log=True)
    assert log.err.max() < 1e-9
    batched = pot.batch.solve_batch(C, reg, a, b, max_iter=50000, tol=1e-10, method="log_sinkhorn")
    torch.testing.assert_close(plan, batched.plan, atol=1e-5, rtol=0)
    values, _ = ot_distance(C, a, b, reg=reg, max_iter=50000, tol=1e-10)
    torch.testing.assert_close(values, batched.value_linear, atol=1e-5, rtol=0)
    for i in range(C.shape[0]):  # per pair, padding trimmed, through the classic 2-D API
        rows, cols = a[i] > 0, b[i] > 0
        ref = pot.sinkhorn(
            a[i][rows].numpy(),
            b[i][cols].numpy(),
            C[i][rows][:, cols].numpy(),
            reg,
            method="sinkhorn_log",
            numItermax=50000,
            stopThr=1e-10,
        )
        np.testing.assert_allclose(plan[i][rows][:, cols].numpy(), ref, atol=1e-5)
        assert plan[i][~rows].abs().sum() == 0 and plan[i][:, ~cols].abs().sum() == 0


@pytest.mark.parametrize("reg", REGS)
def test_float32_small_reg_is_finite_and_feasible(reg):
    """fp32, ragged padding, reg down to 1e-3: no NaN/inf anywhere, marginals hold, padding gets no mass."""
    C, a, b = ragged_problem(7, B=8, n_max=30, m_max=30, dtype=torch.float32)
    plan, log = sinkhorn_log(C, a, b, reg=reg, max_iter=3000, tol=1e-5, return_log=True)
    assert plan.dtype == torch.float32
    assert torch.isfinite(plan).all() and torch.isfinite(log.err).all()
    assert torch.isfinite(log.f[a > 0]).all() and torch.isfinite(log.g[b > 0]).all()
    torch.testing.assert_close(plan.sum(-2), b, atol=1e-5, rtol=0)  # column update is the last one: exact
    assert (plan.sum(-1) - a).norm(dim=-1).max() < (1e-5 if log.converged else 0.05)
    assert plan[a == 0].abs().max() == 0 and plan.transpose(1, 2)[b == 0].abs().max() == 0


def test_log_domain_fallback_gives_pot_iterates(monkeypatch):
    """A block whose scalings under/overflow is redone with exact log-sum-exp steps: force that path everywhere and
    the iterates must still be POT's."""
    import optical_st.transport.sinkhorn as optical_ot

    C, a, b = ragged_problem(9)
    monkeypatch.setattr(optical_ot, "_scaling_health", lambda u, *args: torch.tensor([1.0, 0.0, 0.0], dtype=u.dtype))
    plan, log = sinkhorn_log(C, a, b, reg=0.01, max_iter=45, tol=0.0, return_log=True)
    ref = pot.batch.solve_batch(C, 0.01, a, b, max_iter=45, tol=0.0, method="log_sinkhorn").plan
    assert log.log_domain_blocks == 5  # 1 log step + 4 blocks of <= 10 iterations
    torch.testing.assert_close(plan, ref, atol=1e-12, rtol=0)


def test_reg_too_small_for_the_dtype_is_refused():
    """cost/reg ~1e9 leaves fp32 no significant digits in exp(-C/reg + f + g): a clear error, not garbage."""
    g = torch.Generator().manual_seed(0)
    C = sqeuclidean_cost(torch.randn(2, 6, 4, generator=g) * 32, torch.randn(2, 5, 4, generator=g) * 32)
    with pytest.raises(ValueError, match="too small for costs"):
        sinkhorn_log(C, reg=1e-6)
    assert torch.isfinite(sinkhorn_log(C.double(), reg=1e-6, max_iter=50)).all()  # fp64 has the digits


def test_batched_equals_per_item_and_unbatched_input():
    C, a, b = ragged_problem(11)
    batched = sinkhorn_log(C, a, b, reg=0.05, max_iter=500, tol=1e-9)
    for i in range(C.shape[0]):
        single = sinkhorn_log(C[i], a[i], b[i], reg=0.05, max_iter=500, tol=1e-9)
        assert single.shape == C[i].shape
        torch.testing.assert_close(single, batched[i], atol=1e-7, rtol=0)


def test_adding_padding_changes_nothing():
    C, a, b = ragged_problem(5)
    padded_C = torch.nn.functional.pad(C, (0, 3, 0, 2), value=0.7)
    padded_a = torch.nn.functional.pad(a, (0, 2))
    padded_b = torch.nn.functional.pad(b, (0, 3))
    p1 = sinkhorn_log(C, a, b, reg=0.05, max_iter=300, tol=0)
    p2 = sinkhorn_log(padded_C, padded_a, padded_b, reg=0.05, max_iter=300, tol=0)
    torch.testing.assert_close(p2[:, : C.shape[1], : C.shape[2]], p1, atol=1e-12, rtol=0)
    assert p2[:, C.shape[1] :].abs().max() == 0 and p2[:, :, C.shape[2] :].abs().max() == 0


def test_no_autograd_graph_and_fp32_under_autocast():
    x = torch.randn(2, 5, 8, requires_grad=True)
    y = torch.randn(2, 6, 8)
    C = cosine_cost(x, y)
    plan = sinkhorn_log(C, reg=0.1)
    assert not plan.requires_grad and plan.grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        C16 = torch.bmm(x, y.transpose(1, 2)).to(torch.bfloat16)
        plan16 = sinkhorn_log(C16, reg=0.1)
    assert plan16.dtype == torch.float32
    torch.testing.assert_close(plan16.sum(-2), torch.full((2, 6), 1 / 6), atol=1e-5, rtol=0)


def test_envelope_gradient_is_the_plan():
    C, a, b = ragged_problem(2)
    C = C.clone().requires_grad_(True)
    values, plan = ot_distance(C, a, b, reg=0.05, max_iter=1000, tol=1e-10)
    values.sum().backward()
    torch.testing.assert_close(C.grad, plan, atol=0, rtol=0)
    # and it is POT's envelope gradient
    C2 = C.detach().clone().requires_grad_(True)
    pot.batch.solve_batch(
        C2, 0.05, a, b, max_iter=1000, tol=1e-10, method="log_sinkhorn", grad="envelope"
    ).value_linear.sum().backward()
    torch.testing.assert_close(C.grad, C2.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_emd_matches_pot_exact_ot(seed):
    C, a, b = ragged_problem(200 + seed)
    plan = emd(C, a, b)
    values, _ = ot_distance(C, a, b, solver="emd")
    for i in range(C.shape[0]):
        rows, cols = a[i] > 0, b[i] > 0
        ref_value = pot.emd2(a[i][rows].numpy(), b[i][cols].numpy(), C[i][rows][:, cols].numpy())
        assert abs(values[i].item() - ref_value) < 1e-9
        torch.testing.assert_close(plan[i].sum(-1), a[i], atol=1e-9, rtol=0)
    assert torch.equal(transport_plan(C, a, b, solver="emd"), plan)
    # entropic plans approach the exact one as reg shrinks
    entropic = ot_distance(C, a, b, reg=1e-3, max_iter=20000, tol=1e-9)[0]
    assert (entropic - values).abs().max() < 0.02


def test_costs_match_brute_force():
    x, y = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    sq = sqeuclidean_cost(x, y)
    cos = cosine_cost(x, y)
    for i in range(2):
        np.testing.assert_allclose(sq[i].numpy(), pot.dist(x[i].numpy(), y[i].numpy()), atol=1e-10)
        for j in range(4):
            for k in range(3):
                ref = 1 - torch.nn.functional.cosine_similarity(x[i, j], y[i, k], dim=0)
                assert abs(cos[i, j, k] - ref) < 1e-12
    assert torch.equal(pairwise_cost(x, y, "cosine"), cos)
    assert torch.isfinite(cosine_cost(torch.zeros(1, 2, 5), torch.randn(1, 3, 5))).all()


def test_marginals_and_special_tokens():
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    attn = (ids != 0).long()
    special = special_tokens_mask(ids, [0, 101, 102])
    a = token_marginals(attn, special)
    torch.testing.assert_close(a, torch.tensor([[0, 0.5, 0.5, 0, 0], [0, 1.0, 0, 0, 0]]))
    # prompt tokens (prompt_length counts [CLS]) get no mass either
    with_prompt = special_tokens_mask(ids, [0, 101, 102], prompt_length=torch.tensor([2, 1]))
    torch.testing.assert_close(token_marginals(attn, with_prompt)[0], torch.tensor([0, 0, 1.0, 0, 0]))
    weights = torch.tensor([[1.0, 3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(token_marginals(attn, special, weights)[0], torch.tensor([0, 0.75, 0.25, 0, 0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reg": 0.0}, "reg must be a positive"),
        ({"reg": -1.0}, "reg must be a positive"),
        ({"reg": float("nan")}, "reg must be a positive"),
        ({"cost": torch.full((2, 3, 4), float("nan"))}, "NaN or inf"),
        ({"a": torch.full((2, 2), 0.5)}, "must match the cost matrix"),
        ({"a": torch.zeros(2, 3)}, "positive mass"),
        ({"a": torch.full((2, 3), 1.0)}, "a.sum"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    args = {"cost": torch.rand(2, 3, 4), "a": None, "b": None, "reg": 0.05} | kwargs
    with pytest.raises(ValueError, match=match):
        sinkhorn_log(args["cost"], args["a"], args["b"], reg=args["reg"])


def test_dimension_mismatch_and_empty_rows_name_the_fix():
    with pytest.raises(ValueError, match="add_projection"):
        cosine_cost(torch.randn(1, 2, 8), torch.randn(1, 2, 4))
    empty_row = token_marginals(torch.tensor([[1, 1], [0, 0]]))
    assert empty_row[1].tolist() == [0.0, 0.0]  # no NaN: the solver says what is wrong
    with pytest.raises(ValueError, match="a row of the batch is empty"):
        sinkhorn_log(torch.rand(2, 2, 2), empty_row, token_marginals(torch.ones(2, 2)))
    with pytest.raises(ValueError, match="Unknown cost"):
        pairwise_cost(torch.randn(1, 2, 4), torch.randn(1, 2, 4), "manhattan")
