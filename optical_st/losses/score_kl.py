"""Score distillation: the student's ranking of candidate documents must match the teacher's. The term
:class:`~optical_st.ScoreDistillationLoss` is made of, and :class:`~optical_st.OTDistillationLoss` adds with
``score_weight``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from sentence_transformers.util import cos_sim
from torch import Tensor

__all__ = ["OBJECTIVES", "CandidateTable", "check_objective", "check_score_labels", "score_kl", "score_targets"]

OBJECTIVES = ("kl", "margin-mse")


class CandidateTable(Protocol):
    """Precomputed teacher document embeddings looked up by id (:class:`optical_st.sampling.TeacherCandidates`)."""

    texts: Sequence[str]

    def lookup(self, ids: Tensor) -> Tensor: ...


def score_targets(
    labels: Tensor, positives: Tensor, extra: Sequence[Tensor], candidates: CandidateTable | None
) -> tuple[Tensor, Tensor]:
    """``(teacher_queries (B, d), candidates (B, K, d))`` of a score-distillation batch.

    ``labels``: the teacher's query embeddings ``(B, d)``, followed by ``k`` candidate ids per row when
    ``candidates`` is given (``(B, d + k)``, :meth:`TeacherCandidates.attach`); ``positives``: the teacher's embeddings
    of the English column; ``extra``: teacher embeddings of extra text columns (e.g. a sampler's), ``(B, d)`` each.
    Candidate 0 is the positive. With a table every candidate is L2-normalised (the table's are), so a dot-product
    similarity sees the same geometry as the default cosine."""
    dim = positives.shape[-1]
    if candidates is None:
        if labels.shape[-1] != dim:
            raise ValueError(
                f"The label column has {labels.shape[-1]} values per row; without a candidate table it must hold the "
                f"teacher's query embedding ({dim}). For candidate ids in the label pass candidates=TeacherCandidates."
            )
        return labels, torch.stack([positives, *extra], dim=1)
    if labels.shape[-1] <= dim:
        raise ValueError(
            f"The label column has {labels.shape[-1]} values per row: with candidates=TeacherCandidates it must hold "
            f"the teacher's query embedding ({dim}) and candidate ids, as TeacherCandidates.attach writes it."
        )
    table = candidates.lookup(labels[:, dim:])
    columns = [F.normalize(c.float(), dim=-1).unsqueeze(1) for c in (positives, *extra)]
    return labels[:, :dim], torch.cat([*columns, table.to(columns[0].dtype)], dim=1)


def check_score_labels(labels: Tensor, dim: int, candidates: CandidateTable | None) -> None:
    """The label column, once: finite query embeddings, non-zero, and candidate ids inside the pool."""
    queries = labels[:, :dim].float()
    if not torch.isfinite(queries).all():
        raise ValueError(
            "The label column holds NaN or inf, so every gradient would be NaN. Rebuild it with "
            "optical_st.sampling.TeacherCandidates.attach."
        )
    if bool((queries.norm(dim=-1) == 0).any()):
        raise ValueError("The label column holds a zero query embedding: the teacher's embedding of an empty text?")
    if candidates is not None:
        ids = labels[:, dim:]
        if bool(((ids < 0) | (ids >= len(candidates.texts)) | (ids != ids.round())).any()):
            raise ValueError(
                f"The label column's candidate ids are not ids of the given pool ({len(candidates.texts)} texts): the "
                "dataset was attached to another TeacherCandidates. Use the same object for attach() and the loss."
            )


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    return objective


def score_kl(
    student_queries: Tensor,
    teacher_queries: Tensor,
    candidates: Tensor,
    temperature: float = 0.03,
    *,
    in_batch: bool = True,
    similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
    objective: str = "kl",
) -> Tensor:
    """How far the student's scores of candidate documents are from the teacher's, for the same queries.

    Row ``i``: the student's query embedding ``student_queries[i]`` (the LRL text) and the teacher's query embedding
    ``teacher_queries[i]`` (the English translation, read as a query) each score candidate documents (teacher
    document embeddings). With ``in_batch`` the candidates of row ``i`` are those of every row (``B * K``, like
    in-batch negatives); else its own ``K``. ``"kl"``: ``KL(softmax(t / T) || softmax(s / T))``, mean over rows
    (the loss of DistillKLDivLoss, Translate-Distill and ColBERTv2, one temperature for both sides and without the
    ``T**2`` factor, which below ``T = 1`` shrinks the term far below the others it is added to). ``"margin-mse"``:
    MarginMSE (Hofstätter et al., 2020) of the margins to candidate 0 (the translation), own candidates only.

    A text that is a candidate of two rows counts twice in both softmaxes; the divergence is still zero exactly when
    the student scores as the teacher does. Scores are computed in at least fp32 (also under bf16 autocast); teacher inputs
    are detached.

    Args:
        student_queries: ``(B, d)`` with grad.
        teacher_queries: ``(B, d)``.
        candidates: ``(B, K, d)``; ``candidates[:, 0]`` is each row's own translation.
        temperature: ``T`` (> 0), the softmax temperature of both sides.
        in_batch: score the candidates of all rows (``"kl"`` only).
        similarity_fct: ``(B, d), (N, d) -> (B, N)``; cosine by default.
        objective: ``"kl"`` or ``"margin-mse"``.

    Returns:
        A scalar.
    """
    check_objective(objective)
    if candidates.dim() != 3 or candidates.shape[0] != student_queries.shape[0]:
        raise ValueError(
            f"candidates must be (B, K, d) with B = {student_queries.shape[0]}; got {tuple(candidates.shape)}."
        )
    if teacher_queries.shape != (candidates.shape[0], candidates.shape[2]):
        raise ValueError(
            f"The teacher's query embeddings (the label column) must be (B, d) = {(candidates.shape[0], candidates.shape[2])}; "
            f"got {tuple(teacher_queries.shape)}. Build the dataset with optical_st.sampling.TeacherCandidates "
            "and the same teacher."
        )
    rows, k, dim = candidates.shape
    dtype = torch.promote_types(student_queries.dtype, torch.float32)
    documents = candidates.detach().to(dtype).reshape(rows * k, dim)
    # at least fp32 also under bf16 autocast: at T = 0.03 a bf16 score's rounding moves a logit by about 0.1
    with torch.autocast(device_type=student_queries.device.type, enabled=False):
        student = similarity_fct(student_queries.to(dtype), documents)  # (B, B*K)
        teacher = similarity_fct(teacher_queries.detach().to(dtype), documents)
    if objective == "margin-mse" or not in_batch:
        own = torch.arange(rows, device=student.device)
        student = student.view(rows, rows, k)[own, own]  # (B, K): each row's own candidates
        teacher = teacher.view(rows, rows, k)[own, own]
    if objective == "margin-mse":
        return F.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])
    log_student = torch.log_softmax(student / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
