"""The settings of one optimal-transport problem, in one checked object: :class:`OTConfig`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from torch import Tensor

from optical_st.transport.costs import COSTS
from optical_st.transport.sinkhorn import check_reg
from optical_st.transport.solve import SOLVERS
from optical_st.utils import as_float, as_int

__all__ = ["OTConfig"]


@dataclass(frozen=True)
class OTConfig:
    """How the distillation loss builds and solves its transport problem: the cost, the marginals and the solver.

    Every number is checked (finite, in range) when the config is made and stored as a plain ``float`` / ``int``
    (numpy scalars and 0-d tensors accepted): an inf or NaN setting would otherwise wipe the student in one optimizer
    step, long after the line that caused it. Change a setting with :func:`dataclasses.replace`.

    Args:
        reg: entropic regularisation of Sinkhorn, relative to each pair's largest cost with ``cost_scale="max"``
            (else in cost units). Smaller gives sharper plans (closer to exact OT) but needs more iterations
            (``max_iter``; iteration counts per ``reg`` in docs/ot_multilingual.md).
        max_iter: maximum Sinkhorn iterations per batch.
        tol: Sinkhorn stops early once every plan's row-marginal error (L2) is below ``tol``; a batch that stops at
            ``max_iter`` more than 10 times above it gets a ``SinkhornConvergenceWarning``.
        cost: ``"cosine"`` (1 - cosine similarity), ``"sqeuclidean"``, or a callable ``(x, y) -> (B, n, m)``.
        exclude_special_tokens: give zero mass to special tokens ([CLS], [SEP], <s>, ...) and prompt tokens, so only
            content tokens are aligned.
        center: subtract the batch's mean teacher token (over the tokens that carry mass, without gradient) from both
            sides before the cost. Contextual token embeddings share a large common direction (measured for
            multilingual-e5-small in docs/ot_multilingual.md), which squeezes all cosine costs into a narrow band
            where any useful ``reg`` gives a nearly uniform plan, and a uniform plan pulls every student token toward
            the average teacher token. Centring removes the shared direction (one
            translation for both sides, so a student token equal to its teacher token still costs 0) and the plan
            aligns tokens again; see docs/ot_multilingual.md. ``False`` is the paper's cost exactly. No effect on
            ``"sqeuclidean"`` (translation invariant).
        cost_scale: ``"max"`` divides each pair's cost matrix by its largest entry between tokens that carry mass
            (without gradient), so ``reg`` is relative to the costs: the same ``reg`` gives equally sharp plans, and
            converges in the default iterations, for cosine and squared-Euclidean costs and whatever the embeddings'
            norms (unscaled squared-Euclidean costs grow with them, and so do the iterations Sinkhorn needs:
            docs/ot_multilingual.md). ``None``: the raw costs (the paper's).
        solver: ``"sinkhorn"`` (entropic, batched) or ``"emd"`` (exact network simplex through POT, CPU, slow; for
            small experiments).

    Example::

        >>> from optical_st import OTConfig
        >>> paper = OTConfig(center=False, cost_scale=None)  # the paper's raw cosine cost
        >>> paper.reg, paper.solver
        (0.05, 'sinkhorn')
    """

    # the order of the fields is the order of the loss's config (and so of the model card's loss section)
    reg: float = 0.05
    max_iter: int = 200
    tol: float = 1e-4
    cost: Literal["cosine", "sqeuclidean"] | Callable[[Tensor, Tensor], Tensor] = "cosine"
    exclude_special_tokens: bool = True
    center: bool = True
    cost_scale: Literal["max"] | None = "max"
    solver: Literal["sinkhorn", "emd"] = "sinkhorn"

    def __post_init__(self) -> None:
        if self.cost not in COSTS and not callable(self.cost):
            raise ValueError(f"Unknown cost {self.cost!r}; use one of {sorted(COSTS)} or a callable.")
        if self.solver not in SOLVERS:
            raise ValueError(f"Unknown solver {self.solver!r}; use one of {SOLVERS}.")
        checked = {
            "reg": check_reg(self.reg),
            "max_iter": as_int("max_iter", self.max_iter, minimum=1),
            "tol": as_float("tol", self.tol, minimum=0.0),
            "exclude_special_tokens": bool(self.exclude_special_tokens),
            "center": bool(self.center),
        }
        if self.cost_scale not in ("max", None):
            raise ValueError(f"cost_scale must be 'max' or None, got {self.cost_scale!r}.")
        for name, value in checked.items():  # frozen: the checked values replace the given ones once, here
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (a callable cost by its name), in field order, for configs and model cards."""
        config = {f.name: getattr(self, f.name) for f in fields(self)}
        if not isinstance(self.cost, str):
            config["cost"] = getattr(self.cost, "__name__", repr(self.cost))
        return config
