"""A closed-form head start for a student that starts outside the teacher's space: fit a linear map from the student's
token space to the teacher's on texts both can read (English), and put it on the student's tokens.

When the student is a different model from the teacher (e.g. multilingual-e5-small learning from the English
retriever all-MiniLM-L6-v2), distillation starts with the student's embeddings far from the teacher's and must first
travel there. Both models already embed English well, in different coordinates: a linear map between the two spaces,
fitted on the same English sentences (orthogonal Procrustes, or least squares), moves the student most of the way
before the first step, so distillation refines instead of travelling. The map acts on token embeddings, before mean
pooling (a linear map commutes with the mean), so the OT loss, which compares tokens, sees mapped tokens too.

References:
    - Schönemann, "A generalized solution of the orthogonal Procrustes problem", Psychometrika 1966.
    - Mikolov, Le & Sutskever, "Exploiting Similarities among Languages for Machine Translation", 2013 (linear maps
      between embedding spaces).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Transformer
from torch import Tensor
from tqdm.auto import tqdm

from optical_st.modeling import _prompt_for
from optical_st.routes import STUDENT_ROUTE, find_router, model_routes, route_modules

__all__ = ["fit_student_map", "solve_linear_map"]


def solve_linear_map(source: Tensor, target: Tensor, method: Literal["procrustes", "lstsq"] = "procrustes") -> Tensor:
    """``W`` (``(d_source, d_target)``) minimising ``||source @ W - target||_F``: over orthogonal ``W`` (Procrustes:
    ``W = U V^T`` from the SVD of ``source^T target``; needs equal widths) or over all ``W`` (least squares)."""
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"source and target need the same rows; got {source.shape[0]} and {target.shape[0]}.")
    source, target = source.double(), target.double()
    if method == "procrustes":
        if source.shape[1] != target.shape[1]:
            raise ValueError(
                f"Orthogonal Procrustes maps a space onto one of the same width ({source.shape[1]} vs "
                f"{target.shape[1]}); use method='lstsq'."
            )
        u, _, vh = torch.linalg.svd(source.T @ target)
        return (u @ vh).float()
    if method == "lstsq":
        return torch.linalg.lstsq(source, target).solution.float()
    raise ValueError(f"Unknown method {method!r}; use 'procrustes' or 'lstsq'.")


@torch.no_grad()
def _student_pooled(model: SentenceTransformer, texts: Sequence[str], batch_size: int, progress: bool) -> Tensor:
    """Mean-pooled token embeddings of the student's transformer (before any projection), unit length."""
    transformer = next(m for m in route_modules(model, STUDENT_ROUTE) if isinstance(m, Transformer))
    prompt = _prompt_for(model, STUDENT_ROUTE)
    device = next(transformer.parameters()).device
    pooled = []
    for start in tqdm(range(0, len(texts), batch_size), desc="student (English)", disable=not progress):
        features = transformer.preprocess([prompt + t for t in texts[start : start + batch_size]])
        features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}
        tokens = transformer(features)["token_embeddings"].float()
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled.append(((tokens * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
    return torch.nn.functional.normalize(torch.cat(pooled), dim=-1)


def fit_student_map(
    model: SentenceTransformer,
    english_texts: Sequence[str],
    *,
    method: Literal["procrustes", "lstsq"] = "procrustes",
    batch_size: int = 64,
    show_progress_bar: bool = True,
) -> dict[str, float]:
    """Fit a linear map from the student's token space to the teacher's on ``english_texts`` and place it on the
    student's tokens (a bias-free ``Dense`` right after the student's transformer: the one that is there, e.g. the
    projection :func:`~optical_st.build_optical_model` adds between different widths, or a new one). It trains with
    the student afterwards and is saved with it.

    Args:
        model: an OPTICAL model (:func:`~optical_st.build_optical_model`) whose student differs from its teacher.
        english_texts: sentences both models read well (the English side of the bitext); a few thousand suffice for
            384-wide models (the map has ``d_student x d_teacher`` numbers).
        method: ``"procrustes"`` (orthogonal: rotates, keeps the student's geometry) or ``"lstsq"`` (any linear map;
            closer fit, may distort). Between different widths: least squares.
        batch_size / show_progress_bar: for encoding.

    Returns:
        ``{"cosine_before": ..., "cosine_after": ...}``: the mean cosine between the student's and the teacher's
        pooled embeddings of the same English texts, before the map (meaningless across different models, near 0)
        and after it (how far into the teacher's space the map alone brings the student).

    Example::

        >>> from optical_st import build_optical_model
        >>> from optical_st.alignment import fit_student_map
        >>> model = build_optical_model("sentence-transformers/all-MiniLM-L6-v2", "intfloat/multilingual-e5-small")  # doctest: +SKIP
        >>> scores = fit_student_map(model, english_verses)  # doctest: +SKIP
        >>> scores["cosine_after"] > scores["cosine_before"]  # doctest: +SKIP
        True
    """
    if STUDENT_ROUTE not in model_routes(model):
        raise ValueError("fit_student_map needs an OPTICAL model; build it with optical_st.build_optical_model().")
    texts = [t for t in english_texts if t and t.strip()]
    if len(texts) < 2:
        raise ValueError("fit_student_map needs at least two non-empty English texts.")
    route = find_router(model).sub_modules[STUDENT_ROUTE]  # the Router's own list: a new projection goes into it
    t_idx = next(i for i, m in enumerate(route) if isinstance(m, Transformer))
    existing = route[t_idx + 1] if t_idx + 1 < len(route) else None
    projection = existing if isinstance(existing, Dense) and existing.linear.bias is None else None
    source = _student_pooled(model, texts, batch_size, show_progress_bar)
    target = model.encode_document(
        list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
    )
    target = torch.nn.functional.normalize(target.float().cpu(), dim=-1)
    if source.shape[1] != target.shape[1]:  # a rotation needs equal widths
        method = "lstsq"
    before = float((source * target).sum(-1).mean()) if source.shape == target.shape else float("nan")
    weight = solve_linear_map(source, target, method)
    mapped = torch.nn.functional.normalize(source @ weight, dim=-1)
    after = float((mapped * target).sum(-1).mean())
    device = next(route[t_idx].parameters()).device
    if projection is None:
        projection = Dense(
            weight.shape[0], weight.shape[1], bias=False, activation_function=None, module_input_name="token_embeddings"
        )
        route.insert(t_idx + 1, projection.to(device))
    with torch.no_grad():
        projection.linear.weight.copy_(weight.T.to(device))
    projection.linear.weight.requires_grad_(True)
    return {"cosine_before": before, "cosine_after": after}
