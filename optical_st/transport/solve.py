"""Exact OT through POT (:func:`emd`), and the entry points that pick a solver: :func:`transport_plan` and the
distance the distillation loss minimises, :func:`ot_distance`."""

from __future__ import annotations

import torch
from torch import Tensor

from optical_st.transport.sinkhorn import SinkhornLog, _as_batch, input_flags, raise_for_inputs, sinkhorn_log

__all__ = ["SOLVERS", "emd", "ot_distance", "transport_plan"]


def emd(cost: Tensor, a: Tensor | None = None, b: Tensor | None = None, num_itermax: int = 100_000) -> Tensor:
    """Exact (unregularised) OT plans through POT's network simplex (``ot.emd``), one problem at a time.

    Same interface as :func:`sinkhorn_log`; runs on CPU in float64 and returns the plans on ``cost``'s device.
    Zero-mass rows and columns (padding) are dropped before the solve and get zero plan. Meant for small
    problems and for users who want sparse, unregularised alignments.
    """
    import ot  # lazy: importing POT takes seconds

    cost, a, b, squeeze = _as_batch(cost, a, b)
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    if cost.numel() == 0:  # empty in, empty out, like sinkhorn_log()
        plan = torch.zeros(cost.shape, dtype=dtype, device=cost.device)
        return plan.squeeze(0) if squeeze else plan
    with torch.no_grad():
        raise_for_inputs(input_flags(cost.detach().double(), a.detach().double(), b.detach().double()).tolist())
        plan = torch.zeros(cost.shape, dtype=torch.float64)
        C = cost.detach().double().cpu()
        A = a.detach().double().cpu()
        Bm = b.detach().double().cpu()
        for i in range(C.shape[0]):
            rows, cols = A[i] > 0, Bm[i] > 0
            ai, bi = A[i][rows], Bm[i][cols]
            bi = bi * (ai.sum() / bi.sum())  # exact mass equality, as ot.emd checks it
            p = ot.emd(ai.numpy(), bi.numpy(), C[i][rows][:, cols].numpy(), numItermax=num_itermax)
            plan[i][rows.nonzero().flatten().unsqueeze(1), cols.nonzero().flatten().unsqueeze(0)] = torch.from_numpy(p)
    plan = plan.to(device=cost.device, dtype=dtype)
    return plan.squeeze(0) if squeeze else plan


SOLVERS = ("sinkhorn", "emd")


def transport_plan(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    reg: float = 0.05,
    solver: str = "sinkhorn",
    max_iter: int = 1000,
    tol: float = 1e-6,
    *,
    return_log: bool = False,
) -> Tensor | tuple[Tensor, SinkhornLog | None]:
    """One entry point for both solvers: ``solver="sinkhorn"`` (entropic, :func:`sinkhorn_log`) or ``"emd"``
    (exact, :func:`emd`; ``reg`` is ignored). ``return_log=True`` also returns Sinkhorn's log (``None`` for EMD)."""
    if solver == "sinkhorn":
        return sinkhorn_log(cost, a, b, reg=reg, max_iter=max_iter, tol=tol, return_log=return_log)
    if solver == "emd":
        plan = emd(cost, a, b)
        return (plan, None) if return_log else plan
    raise ValueError(f"Unknown solver {solver!r}; use one of {SOLVERS}.")


def ot_distance(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    reg: float = 0.05,
    solver: str = "sinkhorn",
    max_iter: int = 1000,
    tol: float = 1e-6,
    *,
    return_log: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, SinkhornLog | None]:
    """``<P, C>_F`` per problem, differentiable in ``C`` with the envelope gradient ``dL/dC = P``.

    Returns ``(values (B,), plan (B, n, m))``, and the solver's log as a third item with ``return_log=True``. The
    plan is solved without a graph, so memory does not grow with the number of Sinkhorn iterations.
    """
    plan, log = transport_plan(cost, a, b, reg=reg, solver=solver, max_iter=max_iter, tol=tol, return_log=True)
    cost = cost if cost.dtype == torch.float64 else cost.float()
    values = (plan.to(cost.dtype) * cost).sum((-2, -1))
    return (values, plan, log) if return_log else (values, plan)
