"""Batched, log-stabilised entropic OT (:func:`sinkhorn_log`) and the input checks every solver shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from optical_st.utils import as_float

__all__ = ["SinkhornLog", "check_reg", "input_flags", "raise_for_inputs", "sinkhorn_log"]


@dataclass
class SinkhornLog:
    """What :func:`sinkhorn_log` did: iterations run, final marginal error per problem, convergence, the dual
    potentials ``f (B, n)``, ``g (B, m)`` in cost units (``plan = exp((f_i + g_j - C_ij) / reg)``), and how often the
    stabilised iterations rebuilt their kernel: ``log_domain_blocks`` (blocks of ``check_every`` iterations redone
    with exact log-sum-exp updates after the scalings under- or overflowed) and ``absorptions`` (the scalings grew
    large and were absorbed into the potentials)."""

    n_iter: int
    err: Tensor
    converged: bool
    f: Tensor
    g: Tensor
    log_domain_blocks: int = 0
    absorptions: int = 0


def _as_batch(cost: Tensor, a: Tensor | None, b: Tensor | None) -> tuple[Tensor, Tensor, Tensor, bool]:
    squeeze = cost.dim() == 2
    if squeeze:
        cost = cost.unsqueeze(0)
        a = None if a is None else a.unsqueeze(0)
        b = None if b is None else b.unsqueeze(0)
    if cost.dim() != 3:
        raise ValueError(f"cost must be (n, m) or (B, n, m); got shape {tuple(cost.shape)}.")
    B, n, m = cost.shape
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    # max(., 1): an empty side (n or m = 0) has no points to weigh, and an empty plan comes back
    a = torch.full((B, n), 1.0 / max(n, 1), dtype=dtype, device=cost.device) if a is None else a
    b = torch.full((B, m), 1.0 / max(m, 1), dtype=dtype, device=cost.device) if b is None else b
    if a.shape != (B, n) or b.shape != (B, m):
        raise ValueError(
            f"Marginals must match the cost matrix {tuple(cost.shape)}: got a {tuple(a.shape)} and b {tuple(b.shape)}."
        )
    return cost, a, b, squeeze


def input_flags(cost: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The input checks every solver runs, as one tensor of flags for :func:`raise_for_inputs` (1 = passed): finite
    costs; finite, non-negative marginals; positive mass on both sides of every problem; balanced masses. A tensor, so
    a solver reads it with a read it makes anyway (Sinkhorn: its first convergence check), not with a sync of its
    own."""
    return torch.stack(
        [
            torch.isfinite(cost).all(),
            torch.isfinite(a).all() & torch.isfinite(b).all(),
            (a >= 0).all() & (b >= 0).all(),
            (a.sum(-1) > 0).all() & (b.sum(-1) > 0).all(),
            ((a.sum(-1) - b.sum(-1)).abs() <= 1e-4 * a.sum(-1)).all(),
        ]
    )


def raise_for_inputs(flags: list[float] | list[bool]) -> None:
    """A ``ValueError`` naming the first check of :func:`input_flags` that failed (its values read back)."""
    if not flags[0]:
        raise ValueError(
            "The cost matrix contains NaN or inf: the encoders produced non-finite token embeddings "
            "(lower the learning rate, or train in fp32/bf16 instead of fp16)."
        )
    if not flags[1] or not flags[2]:
        raise ValueError("Marginals must be finite and non-negative.")
    if not flags[3]:
        raise ValueError("Every problem needs positive mass on both sides; a row of the batch is empty.")
    if not flags[4]:
        raise ValueError("Balanced OT needs a.sum(-1) == b.sum(-1) for every problem; normalise the marginals.")


# |C / reg| beyond which exp(-C/reg + f + g) has lost all its digits: fp32 keeps ~7, fp64 ~16
_MAX_COST_OVER_REG = {torch.float32: 1e5, torch.float64: 1e13}


def _check_precision(largest_cost: float, reg: float, dtype: torch.dtype) -> None:
    # |K| = |C| / reg itself, not the spread of C: the rounding error of K + f + g grows with |K|
    scale = largest_cost / reg
    limit = _MAX_COST_OVER_REG[dtype]
    if scale > limit:
        raise ValueError(
            f"reg={reg:g} is too small for costs spanning {scale * reg:.3g} in {dtype}: cost/reg = {scale:.3g} > "
            f"{limit:.0e}, beyond the precision of the dtype. Raise reg (e.g. to {scale * reg / limit * 10:.2g}), use a "
            "bounded cost such as cosine, or pass float64 costs."
        )


def check_reg(reg: float) -> float:
    """``reg`` as a float (numpy scalars and 0-d tensors accepted), or a clear error for a regularisation that
    Sinkhorn cannot use (<= 0, NaN, inf, non-number)."""
    return as_float("reg", reg, minimum=0.0, exclusive_minimum=True)


def sinkhorn_log(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    reg: float = 0.05,
    max_iter: int = 1000,
    tol: float = 1e-6,
    *,
    check_every: int = 10,
    return_log: bool = False,
) -> Tensor | tuple[Tensor, SinkhornLog]:
    """Batched entropic OT plans, stable for any ``reg``, without an autograd graph.

    Solves ``min_P <P, C> - reg * H(P)`` s.t. ``P 1 = a``, ``P^T 1 = b`` for every problem of the batch.
    The dual potentials live in the log domain, so nothing under- or overflows however small ``reg`` is
    (``reg=1e-3`` on cosine costs stays finite and exact), but the number of iterations grows as ``reg`` shrinks
    (iterations per ``reg`` on real token costs: docs/ot_multilingual.md, from ``benchmarks/ot_plan_diagnostics.py``).
    Check ``return_log=True``'s ``converged``: a plan that stopped at ``max_iter`` misses its marginals. Between
    convergence checks the iterations run as cheap matrix-vector scalings on a kernel into which the potentials have
    been absorbed (log-stabilised Sinkhorn, Schmitzer 2019); a block that under- or overflows is redone with exact
    log-sum-exp updates.
    The iterates are those of POT's ``sinkhorn_log``/``solve_batch(method="log_sinkhorn")``.

    Args:
        cost: ``(B, n, m)`` or ``(n, m)`` ground costs. Any float dtype; computed in fp32 (fp64 if given fp64),
            also under ``torch.autocast``.
        a: ``(B, n)`` source marginals, zero on padding; uniform when ``None``.
        b: ``(B, m)`` target marginals, zero on padding; uniform when ``None``.
        reg: entropic regularisation ``epsilon`` (> 0), in the units of the cost.
        max_iter: maximum number of Sinkhorn iterations (one iteration = a row and a column update).
        tol: stop once ``max_b ||P 1 - a||_2 < tol`` (POT's criterion), checked every ``check_every`` iterations.
        check_every: iterations between convergence checks (each check is one host sync on GPU; the input checks are
            read with the first one).
        return_log: also return a :class:`SinkhornLog`.

    Returns:
        The plans ``(B, n, m)`` (``(n, m)`` for 2-D input), detached, in the dtype used for the solve;
        with ``return_log=True`` a tuple ``(plan, log)``.

    Raises:
        ValueError: non-finite costs or marginals, ``reg <= 0``, mismatched shapes, empty rows, unbalanced masses.

    Example::

        >>> import torch
        >>> from optical_st.transport import sinkhorn_log
        >>> C = torch.rand(4, 5, 7)
        >>> P = sinkhorn_log(C, reg=0.05)
        >>> torch.allclose(P.sum(-1), torch.full((4, 5), 1 / 5), atol=1e-5)
        True
    """
    reg = check_reg(reg)
    if max_iter < 1 or check_every < 1:
        raise ValueError("max_iter and check_every must be >= 1.")
    cost, a, b, squeeze = _as_batch(cost, a, b)
    if cost.numel() == 0:  # no problem (B = 0) or no points (n or m = 0): empty in, empty out, like emd()
        return _empty_result(cost, squeeze, return_log)
    device_type = cost.device.type
    with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
        dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
        cost = cost.detach().to(dtype)
        a = a.detach().to(dtype)
        b = b.detach().to(dtype)
        # the input checks are read with the first convergence check (one host sync for both), then raise
        inputs = torch.cat([input_flags(cost, a, b).to(dtype), cost.abs().amax().reshape(1)])

        def check_inputs(values: list[float]) -> None:
            raise_for_inputs(values[:-1])
            _check_precision(values[-1], reg, dtype)

        b = b * (a.sum(-1, keepdim=True) / b.sum(-1, keepdim=True))  # exact balance, so tiny tol is reachable
        plan, f, g, n_iter, err, converged, fallbacks, absorptions = _sinkhorn_stabilized(
            cost, a, b, reg, max_iter, tol, check_every, (inputs, check_inputs)
        )
    if squeeze:
        plan = plan.squeeze(0)
    if not return_log:
        return plan
    return plan, SinkhornLog(
        n_iter=n_iter,
        err=err,
        converged=converged,
        f=f * reg,
        g=g * reg,
        log_domain_blocks=fallbacks,
        absorptions=absorptions,
    )


def _empty_result(cost: Tensor, squeeze: bool, return_log: bool) -> Tensor | tuple[Tensor, SinkhornLog]:
    B, n, m = cost.shape
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    plan = torch.zeros(cost.shape, dtype=dtype, device=cost.device)
    plan = plan.squeeze(0) if squeeze else plan
    if not return_log:
        return plan
    zeros = torch.zeros((B, 0), dtype=dtype, device=cost.device)
    log = SinkhornLog(
        n_iter=0, err=zeros.new_zeros(B), converged=True, f=zeros.new_zeros(B, n), g=zeros.new_zeros(B, m)
    )
    return plan, log


# absorb the scalings into the potentials once |log u| or |log v| exceeds this: far from fp32 overflow (e^88),
# and rare enough that most iterations are two batched matrix-vector products
_ABSORB_LOG = 30.0


def _scaling_health(u: Tensor, v: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """(bad, max |log u|, max |log v|) over the rows/columns that carry mass, as one tensor (read with the convergence
    check)."""
    real_u, real_v = a > 0, b > 0
    # masks, not boolean indexing (which would read the number of entries back: a host sync on GPU)
    positive = torch.where(real_u, u > 0, True).all() & torch.where(real_v, v > 0, True).all()
    bad = ~(torch.isfinite(u).all() & torch.isfinite(v).all() & positive)
    log_u = torch.where(real_u, u, 1).log().abs().amax()
    log_v = torch.where(real_v, v, 1).log().abs().amax()
    return torch.stack([bad.to(u.dtype), log_u.nan_to_num(float("inf")), log_v.nan_to_num(float("inf"))])


def _convergence(err: Tensor, tol: float) -> Tensor:
    """(continue, converged) of the marginal errors as a tensor: both 0 for a NaN error, as the comparisons give."""
    largest = err.max()
    return torch.stack([largest >= tol, largest < tol]).to(err.dtype)


def _absorb(f: Tensor, g: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    # log(0) = -inf on padding, where f and g are -inf already
    return f + u.squeeze(1).log(), g + v.squeeze(1).log()


def _sinkhorn_stabilized(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    reg: float,
    max_iter: int,
    tol: float,
    check_every: int,
    inputs: tuple[Tensor, Callable[[list[float]], None]],
) -> tuple[Tensor, Tensor, Tensor, int, Tensor, bool, int, int]:
    """The iterations; ``inputs``: checks read with the first convergence check, and what to do with their values.
    One host read per block of ``check_every`` iterations (scalings' health and convergence together)."""
    K = cost / -reg  # log-kernel
    loga, logb = a.log(), b.log()  # -inf on zero mass: those rows/columns get exactly zero plan
    pad = (a == 0).unsqueeze(2) | (b == 0).unsqueeze(1)

    def log_step(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        f = loga - torch.logsumexp(K + g.unsqueeze(1), dim=2)
        g = logb - torch.logsumexp(K + f.unsqueeze(2), dim=1)
        return f, g

    def kernel(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        # exp(K + f + g) is the current plan; padding rows/columns are set to 1 so that u = 0 / positive = 0 there
        # without a clamp in the inner loop. Both orientations are kept contiguous: a row vector times a matrix is
        # the faster batched product on CPU
        Kt = torch.exp(K + f.unsqueeze(2) + g.unsqueeze(1)).masked_fill_(pad, 1.0)
        return Kt, Kt.transpose(1, 2).contiguous()

    def row_err(KtT: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return torch.linalg.vector_norm((u * torch.bmm(v, KtT)).squeeze(1) - a, dim=-1)

    # the first iteration in the log domain: afterwards every column holds exactly b_j and every row at least
    # a_i * min(b), so the absorbed kernel has no all-zero row or column whatever reg is
    f, g = log_step(torch.zeros_like(a), torch.zeros_like(b))
    n_iter, fallbacks, absorptions = 1, 0, 0
    Kt, KtT = kernel(f, g)
    a_row, b_row = a.unsqueeze(1), b.unsqueeze(1)
    # zero scalings on padding keep the ones placed there by `kernel` out of every product
    u_init, v_init = (a_row > 0).to(a.dtype), (b_row > 0).to(b.dtype)
    u, v = u_init, v_init
    err = row_err(KtT, u, v)
    checks, check_inputs = inputs
    *values, keep_going, converged = torch.cat([checks.to(err.dtype), _convergence(err, tol)]).tolist()
    check_inputs(values)
    while n_iter < max_iter and keep_going:
        steps = min(check_every, max_iter - n_iter)
        # plan = diag(u) Kt diag(v); each iteration is two batched (row vector x matrix) products
        u_start, v_start = u, v
        for _ in range(steps):
            u = a_row / torch.bmm(v, KtT)
            v = b_row / torch.bmm(u, Kt)
        n_iter += steps
        err = row_err(KtT, u, v)
        health = _scaling_health(u.squeeze(1), v.squeeze(1), a, b)
        bad, log_u, log_v, keep_going, converged = torch.cat([health, _convergence(err, tol)]).tolist()
        if bad:
            # the scalings under/overflowed in this block: redo it with exact log-sum-exp updates
            fallbacks += 1
            f, g = _absorb(f, g, u_start, v_start)
            for _ in range(steps):
                f, g = log_step(f, g)
            Kt, KtT = kernel(f, g)
            u, v = u_init, v_init
            err = row_err(KtT, u, v)
            keep_going, converged = _convergence(err, tol).tolist()
        elif max(log_u, log_v) > _ABSORB_LOG:
            absorptions += 1
            f, g = _absorb(f, g, u, v)
            Kt, KtT = kernel(f, g)
            u, v = u_init, v_init
    f, g = _absorb(f, g, u, v)
    plan = torch.exp(K + f.unsqueeze(2) + g.unsqueeze(1))
    return plan, f, g, n_iter, err, bool(converged), fallbacks, absorptions
