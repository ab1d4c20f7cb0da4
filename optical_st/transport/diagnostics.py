"""What a transport plan looks like: how sharp it is, how well it meets its marginals, what the costs spread over.

These numbers explain whether OT distillation can teach anything. The loss's gradient on student token ``i`` is
``sum_j P_ij grad C_ij``: with a sharp plan each token is pulled toward the teacher token(s) it is aligned with; with a
nearly uniform plan (the entropic plan when ``reg`` is not small against the spread of the costs) every token is pulled
toward the average teacher token, which collapses the student's tokens instead of aligning them. One pass over the
plan, in float64: the loss computes them only while a callback reads them (:class:`~optical_st.losses.OTMonitor`).

:func:`plan_stats` and :func:`cost_std` return 0-d tensors and read nothing back to the host (masks, no boolean
indexing), so a training step that records them does not wait for the device; :func:`plan_statistics` and
:func:`cost_statistics` give the same numbers as Python floats.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cost_statistics", "cost_std", "plan_statistics", "plan_stats"]


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum((-2, -1))


def _mean(values: Tensor, rows: Tensor | None) -> Tensor:
    """The mean of ``values`` over ``rows`` (all rows: the plain mean), with masks (no host read)."""
    if rows is None:
        return values.mean()
    return torch.where(rows.all(), values.mean(), values.where(rows, 0).sum() / rows.sum().clamp_min(1))


@torch.no_grad()
def plan_stats(plan: Tensor, a: Tensor, b: Tensor, rows: Tensor | None = None) -> dict[str, Tensor]:
    """Batch means of a plan's sharpness and marginal error, as 0-d float64 tensors.

    Args:
        plan: ``(B, n, m)`` transport plans.
        a: ``(B, n)`` source marginals (zero on padding).
        b: ``(B, m)`` target marginals.
        rows: ``(B,)`` the problems to describe (default: all), e.g. the rows with content of a batch.

    Returns:
        * ``entropy_ratio``: ``H(P) / H(a b^T)``, 1 for the independent (uniform) coupling, lower is sharper; an
          exact (EMD) plan between ``n`` and ``m`` uniform tokens sits near ``log(n + m) / log(n m)``.
        * ``argmax_mass``: the mass on each source token's largest entry, summed (1 = a one-to-one matching).
        * ``marginal_error``: the largest ``||P 1 - a||_1 + ||P^T 1 - b||_1`` in the batch.
    """
    plan, a, b = plan.double(), a.double(), b.double()
    independent = a.unsqueeze(2) * b.unsqueeze(1)
    ratio = _entropy(plan) / _entropy(independent).clamp_min(1e-30)
    argmax_mass = plan.amax(-1).sum(-1) / a.sum(-1)
    error = (plan.sum(-1) - a).abs().sum(-1) + (plan.sum(-2) - b).abs().sum(-1)
    if rows is not None:
        error = error.where(rows, 0)
    return {
        "entropy_ratio": _mean(ratio, rows),
        "argmax_mass": _mean(argmax_mass, rows),
        "marginal_error": error.max() if error.numel() else error.new_zeros(()),
    }


@torch.no_grad()
def plan_statistics(plan: Tensor, a: Tensor, b: Tensor) -> dict[str, float]:
    """:func:`plan_stats` as Python floats."""
    return {key: float(value) for key, value in plan_stats(plan, a, b).items()}


def _carrying_mass(cost: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The costs in float64, the mask of the pairs of tokens that both carry mass, and how many there are."""
    valid = (a.unsqueeze(2) > 0) & (b.unsqueeze(1) > 0)
    return cost.detach().double(), valid, valid.sum()


@torch.no_grad()
def cost_std(cost: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Standard deviation (Bessel-corrected, as ``torch.std``) of the costs between tokens that carry mass, over the
    whole batch, as a 0-d float64 tensor; 0 with fewer than two such pairs."""
    values, valid, count = _carrying_mass(cost, a, b)
    mean = values.masked_fill(~valid, 0).sum() / count.clamp_min(1)
    squares = (values - mean).masked_fill(~valid, 0).square().sum()
    return torch.where(count > 1, squares / (count - 1).clamp_min(1), 0.0).sqrt()


@torch.no_grad()
def cost_statistics(cost: Tensor, a: Tensor, b: Tensor) -> dict[str, float]:
    """Mean, standard deviation (:func:`cost_std`), minimum and maximum of the costs between tokens that carry mass
    (padding and excluded tokens left out), over the whole batch; all 0 when no pair carries mass."""
    values, valid, count = _carrying_mass(cost, a, b)
    if not count:
        return {"cost_mean": 0.0, "cost_std": 0.0, "cost_min": 0.0, "cost_max": 0.0}
    return {
        "cost_mean": float(values.masked_fill(~valid, 0).sum() / count),
        "cost_std": float(cost_std(cost, a, b)),
        "cost_min": float(values.masked_fill(~valid, torch.inf).amin()),
        "cost_max": float(values.masked_fill(~valid, -torch.inf).amax()),
    }
