"""What is transported: ground costs between token sets, and the mass each token carries (its marginal)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COSTS", "cosine_cost", "pairwise_cost", "special_tokens_mask", "sqeuclidean_cost", "token_marginals"]


def _check_embeddings(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if y.dim() == 2:
        y = y.unsqueeze(0)
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(
            f"Token embeddings must be (B, n, d) and (B, m, d); got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"Batch sizes differ: {x.shape[0]} student rows vs {y.shape[0]} teacher rows.")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"Embedding dimensions differ: {x.shape[-1]} (student) vs {y.shape[-1]} (teacher). Put a projection in the "
            "student, e.g. `optical_st.add_projection(student, teacher_dim)` or build the model with "
            "`optical_st.build_optical_model(teacher, student)`, which adds one when the sizes differ."
        )
    # fp32 at least: token costs in bf16 lose the small differences the plan depends on
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return x.to(dtype), y.to(dtype)


def cosine_cost(x: Tensor, y: Tensor) -> Tensor:
    """Cosine distance ``1 - cos(x_i, y_j)`` between every pair of tokens: ``(B, n, d), (B, m, d) -> (B, n, m)``.

    Values lie in ``[0, 2]``; zero vectors (e.g. padding that was zeroed) get cost 1, never NaN.
    """
    x, y = _check_embeddings(x, y)
    return 1.0 - torch.bmm(F.normalize(x, dim=-1), F.normalize(y, dim=-1).transpose(1, 2))


def sqeuclidean_cost(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distance ``||x_i - y_j||^2``: ``(B, n, d), (B, m, d) -> (B, n, m)`` (clamped at 0)."""
    x, y = _check_embeddings(x, y)
    xx = (x * x).sum(-1, keepdim=True)
    yy = (y * y).sum(-1).unsqueeze(1)
    return (xx + yy - 2.0 * torch.bmm(x, y.transpose(1, 2))).clamp_min_(0.0)


COSTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"cosine": cosine_cost, "sqeuclidean": sqeuclidean_cost}


def pairwise_cost(x: Tensor, y: Tensor, metric: str | Callable[[Tensor, Tensor], Tensor] = "cosine") -> Tensor:
    """Cost matrix between token sets with a named metric (``"cosine"``, ``"sqeuclidean"``) or a callable."""
    if callable(metric):
        return metric(x, y)
    if metric not in COSTS:
        raise ValueError(f"Unknown cost {metric!r}; choose one of {sorted(COSTS)} or pass a callable (x, y) -> cost.")
    return COSTS[metric](x, y)


def special_tokens_mask(
    input_ids: Tensor, special_ids: list[int] | Tensor, prompt_length: int | Tensor | None = None
) -> Tensor:
    """Boolean ``(B, n)`` mask of special tokens ([CLS], [SEP], <s>, ...) and, if given, prompt tokens.

    ``prompt_length`` is sentence-transformers' ``features["prompt_length"]``: the number of leading tokens (the
    first special token included) that belong to the prompt, an ``int`` or one per row. Pass ``special_ids`` as a
    tensor on ``input_ids``' device to copy nothing to the device.
    """
    special_ids = torch.as_tensor(list(special_ids) if not isinstance(special_ids, Tensor) else special_ids)
    mask = torch.isin(input_ids, special_ids.to(input_ids.device))
    if prompt_length is not None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        if isinstance(prompt_length, Tensor):  # an int (sentence-transformers' collator) is compared as it is
            prompt_length = prompt_length.to(input_ids.device).reshape(-1, 1)
        mask = mask | (positions < prompt_length)
    return mask


def token_marginals(
    attention_mask: Tensor,
    exclude_mask: Tensor | None = None,
    weights: Tensor | None = None,
    *,
    name: str = "input",
) -> Tensor:
    """Probability mass per token: uniform over real tokens, zero on padding and on ``exclude_mask``.

    Args:
        attention_mask: ``(B, n)``, 1 for real tokens, 0 for padding.
        exclude_mask: optional ``(B, n)`` boolean mask of tokens to give zero mass (special or prompt tokens).
        weights: optional non-negative ``(B, n)`` per-token weights (e.g. IDF); normalised per row.
        name: used in error messages to say which input is at fault.

    Returns:
        ``(B, n)`` float tensor whose rows sum to one; a row with no mass left (an empty text, or special tokens
        only) stays all zero, which the solvers reject ("a row of the batch is empty"). The losses check their
        texts before they get here and name the column at fault.

    Raises:
        ValueError: if the weights are negative or not finite.
    """
    mass = attention_mask.to(torch.bool)
    if exclude_mask is not None:
        mass = mass & ~exclude_mask.to(torch.bool)
    marg = mass.to(torch.float32)
    if weights is not None:
        if weights.shape != attention_mask.shape:
            raise ValueError(
                f"{name}: weights have shape {tuple(weights.shape)}, expected {tuple(attention_mask.shape)}."
            )
        weights = weights.detach().to(torch.float32)
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"{name}: token weights must be finite and non-negative.")
        marg = marg * weights
    return marg / marg.sum(-1, keepdim=True).clamp_min(torch.finfo(marg.dtype).tiny)
