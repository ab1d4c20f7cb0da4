"""What a transport plan looks like: how sharp it is, how well it meets its marginals, what the costs spread over.

These numbers explain whether OT distillation can teach anything. The loss's gradient on student token ``i`` is
``sum_j P_ij grad C_ij``: with a sharp plan each token is pulled toward the teacher token(s) it is aligned with; with a
nearly uniform plan (the entropic plan when ``reg`` is not small against the spread of the costs) every token is pulled
toward the average teacher token, which collapses the student's tokens instead of aligning them. Cheap (one pass over
the plan), so the loss records them every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cost_statistics", "plan_statistics"]


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum((-2, -1))


@torch.no_grad()
def plan_statistics(plan: Tensor, a: Tensor, b: Tensor) -> dict[str, float]:
    """Batch means of a plan's sharpness and marginal error.

    Args:
        plan: ``(B, n, m)`` transport plans.
        a: ``(B, n)`` source marginals (zero on padding).
        b: ``(B, m)`` target marginals.

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
    return {
        "entropy_ratio": float(ratio.mean()),
        "argmax_mass": float(argmax_mass.mean()),
        "marginal_error": float(error.max()) if error.numel() else 0.0,
    }


@torch.no_grad()
def cost_statistics(cost: Tensor, a: Tensor, b: Tensor) -> dict[str, float]:
    """Mean, standard deviation, minimum and maximum of the costs between tokens that carry mass (padding and
    excluded tokens left out), over the whole batch."""
    valid = (a.unsqueeze(2) > 0) & (b.unsqueeze(1) > 0)
    values = cost.detach().double()[valid]
    if values.numel() == 0:
        return {"cost_mean": 0.0, "cost_std": 0.0, "cost_min": 0.0, "cost_max": 0.0}
    return {
        "cost_mean": float(values.mean()),
        "cost_std": float(values.std()) if values.numel() > 1 else 0.0,
        "cost_min": float(values.min()),
        "cost_max": float(values.max()),
    }
