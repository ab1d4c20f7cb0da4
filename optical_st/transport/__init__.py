"""Optimal-transport maths on batched token embeddings.

Pure tensor code: no sentence-transformers import, so the solver can be tested and reused on its own.

Shapes follow POT's batched API (``ot.batch``): a batch of ``B`` problems, each with ``n`` source
points and ``m`` target points.

* ``cost``: ``(B, n, m)``, the ground cost between every source and target token.
* ``a``: ``(B, n)`` and ``b``: ``(B, m)``, non-negative marginals, each summing to one per problem.
  Padding and excluded tokens carry **zero mass**; the plan then puts no mass on them.
* ``plan``: ``(B, n, m)`` with ``plan.sum(-1) == a`` and ``plan.sum(-2) == b``.

The entropic problem solved by :func:`sinkhorn_log` is

.. math::

    P^\\star = \\arg\\min_{P \\in U(a, b)} \\langle P, C \\rangle_F - \\varepsilon H(P)

and the distillation loss is :math:`\\langle P^\\star, C \\rangle_F` with the plan held fixed (the envelope
theorem gives :math:`\\partial L / \\partial C = P^\\star`), which is what :func:`ot_distance` computes.

The package: :mod:`~optical_st.transport.config` (:class:`OTConfig`, the settings of the distillation loss's problem),
:mod:`~optical_st.transport.costs` (costs and marginals), :mod:`~optical_st.transport.sinkhorn` (the entropic solver),
:mod:`~optical_st.transport.solve` (exact OT, solver choice, the distance), :mod:`~optical_st.transport.diagnostics` (how sharp a plan is,
how well it meets its marginals, how the costs spread).
"""

from optical_st.transport.config import OTConfig
from optical_st.transport.costs import (
    COSTS,
    cosine_cost,
    pairwise_cost,
    special_tokens_mask,
    sqeuclidean_cost,
    token_marginals,
)
from optical_st.transport.diagnostics import cost_statistics, cost_std, plan_statistics, plan_stats
from optical_st.transport.sinkhorn import SinkhornLog, check_reg, sinkhorn_log
from optical_st.transport.solve import SOLVERS, emd, ot_distance, transport_plan

__all__ = [
    "COSTS",
    "SOLVERS",
    "OTConfig",
    "SinkhornLog",
    "check_reg",
    "cosine_cost",
    "cost_statistics",
    "cost_std",
    "emd",
    "ot_distance",
    "pairwise_cost",
    "plan_statistics",
    "plan_stats",
    "sinkhorn_log",
    "special_tokens_mask",
    "sqeuclidean_cost",
    "token_marginals",
    "transport_plan",
]
