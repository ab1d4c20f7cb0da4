"""InfoNCE of student embeddings against frozen teacher embeddings: the contrastive term both distillation losses
share (:class:`~optical_st.ContrastiveDistillationLoss` is this term alone; :class:`~optical_st.OTDistillationLoss`
adds it with ``contrastive_weight``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.util import cos_sim
from torch import Tensor

from optical_st.utils import as_float

__all__ = ["check_temperature", "info_nce"]


def info_nce(
    student: Tensor,
    teacher: Tensor,
    negatives: Sequence[Tensor] | None = None,
    temperature: float = 0.05,
    *,
    similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
    symmetric: bool = False,
    mask_duplicates: bool = True,
) -> Tensor:
    """InfoNCE of student embeddings against frozen teacher embeddings.

    Row ``i`` of ``student`` must score its own ``teacher[i]`` above every other candidate: the other teacher rows
    (in-batch negatives) and every row of every ``negatives`` tensor (hard negatives of all rows, as in ST's
    MultipleNegativesRankingLoss). With ``mask_duplicates``, candidates whose teacher embedding equals ``teacher[i]``
    (cosine > 1 - 1e-5: the same text twice) are masked, since they are not negatives. Teacher inputs are detached;
    scores are computed in at least fp32 (also under bf16 autocast).

    Args:
        student: ``(B, d)`` with grad.
        teacher: ``(B, d)``.
        negatives: ``K`` tensors ``(B, d)`` (one per negative column), or None.
        temperature: softmax temperature.
        similarity_fct: similarity of two ``(N, d)``/``(M, d)`` matrices (default cosine).
        symmetric: also the reverse direction (teacher anchor ``i`` against the ``B`` student embeddings), averaged.
        mask_duplicates: mask candidates identical to the positive.

    Returns:
        The mean cross-entropy over the batch.
    """
    temperature = check_temperature(temperature)  # also for direct calls: a NaN temperature gives NaN logits
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"Need (B, d) student and teacher sentence embeddings of the same shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}. Give the student a projection to the teacher's width "
            "(optical_st.build_optical_model adds one)."
        )
    teacher = _at_least_fp32(teacher.detach())
    negatives = [_at_least_fp32(n.detach()) for n in (negatives or [])]
    if any(n.shape != teacher.shape for n in negatives):
        raise ValueError("Every negative column must give (B, d) embeddings like the positives.")
    student = _at_least_fp32(student)
    candidates = torch.cat([teacher, *negatives])  # (B * (1 + K), d); positive i at row i
    scores = similarity_fct(student, candidates) / temperature
    labels = torch.arange(len(teacher), device=scores.device)
    duplicates = _duplicate_mask(teacher, candidates) if mask_duplicates else None
    if duplicates is not None:
        scores = scores.masked_fill(duplicates, float("-inf"))
    loss = F.cross_entropy(scores, labels)
    if not symmetric:
        return loss
    reverse = similarity_fct(teacher, student) / temperature
    if duplicates is not None:
        reverse = reverse.masked_fill(duplicates[:, : len(teacher)], float("-inf"))
    return (loss + F.cross_entropy(reverse, labels)) / 2


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a float (numpy scalars and 0-d tensors accepted), or a clear error for one that would make
    the InfoNCE logits meaningless (<= 0, NaN, inf, non-number)."""
    return as_float("temperature", temperature, minimum=0.0, exclusive_minimum=True)


def _at_least_fp32(x: Tensor) -> Tensor:
    # bf16/fp16 embeddings (autocast) would round the logits; fp64 inputs keep their precision
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.no_grad()
def _duplicate_mask(teacher: Tensor, candidates: Tensor) -> Tensor:
    """``(B, N)`` True where candidate ``c`` is (numerically) the same text as positive ``i``, except ``c == i``.

    Identical texts give identical teacher embeddings up to padding round-off, so cosine > 1 - 1e-5 is the test.
    """
    same = cos_sim(teacher, candidates) > 1 - 1e-5
    same.fill_diagonal_(False)  # fills (i, i) for i < B: the positive itself stays
    return same
