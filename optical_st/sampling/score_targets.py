"""Score-distillation data: for each bitext pair, candidate English documents from a pool and the frozen teacher's
query embedding of the English side (:func:`add_teacher_candidates`), for :class:`~optical_st.ScoreDistillationLoss`
and ``OTDistillationLoss(score_weight=...)``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from torch import Tensor

from optical_st.modeling import column_prompts
from optical_st.routes import TEACHER_ROUTE, find_router
from optical_st.sampling.mining import search_topk

__all__ = ["add_teacher_candidates", "frozen_teacher_encoder", "teacher_candidates"]

logger = logging.getLogger(__name__)


def teacher_candidates(queries: Tensor, pool: Tensor, positives: Sequence[int], k: int) -> Tensor:
    """Ids ``(Q, k)`` of the ``k`` pool rows nearest to each query (inner product, best first), leaving out the
    query's own positive (``positives[i]``, its index in the pool). Exact search (faiss when installed)."""
    if k >= pool.shape[0]:
        raise ValueError(f"num_candidates ({k}) must be below the pool's size ({pool.shape[0]} distinct texts).")
    found = search_topk(queries, pool, k + 1)
    scores = torch.gather(queries.float() @ pool.float().T, 1, found) if found.numel() else found.float()
    found = torch.gather(found, 1, scores.argsort(dim=1, descending=True))  # search_topk's order is arbitrary
    own = torch.as_tensor(list(positives), device=found.device).unsqueeze(1)
    keep = found != own
    # drop the positive where it was found, else the (k+1)-th neighbour: k ids per row either way
    last = (~keep).sum(1) == 0
    keep[last, -1] = False
    return found[keep].view(queries.shape[0], k)


def add_teacher_candidates(
    dataset: Dataset,
    model: SentenceTransformer,
    pool: Sequence[str] | None = None,
    *,
    num_candidates: int = 15,
    english_column: str = "english",
    lrl_column: str = "lrl",
    batch_size: int = 64,
    show_progress_bar: bool = True,
    encode: Callable[[list[str], str], Tensor] | None = None,
) -> Dataset:
    """The bitext with candidate English documents and the teacher's query embeddings, once, before training.

    The frozen teacher (an OPTICAL model's document route) encodes the English pool as documents and each pair's
    English side as a *query* (with the model's query prompt, e.g. multilingual-e5's ``query: ``); each pair gets
    its ``num_candidates`` nearest pool texts besides its own English text. Only the student then runs in a step.

    Args:
        dataset: the bitext, with ``english_column`` and ``lrl_column``.
        model: an OPTICAL Router model (:func:`optical_st.build_optical_model`), or a plain model that is its own
            teacher.
        pool: extra English texts to draw candidates from (any English text of the domain: English is free for every
            language); the dataset's English side always belongs to the pool. Never put evaluation texts here.
        num_candidates: candidates per pair besides its translation.
        english_column / lrl_column: the bitext's columns.
        batch_size: encoding batch size.
        show_progress_bar: progress of the encoding.
        encode: ``encode(texts, kind)`` with kind ``"document"`` or ``"query"``, returning L2-normalised teacher
            embeddings, to read them from a cache (the research harness passes its embedding cache); default: the
            model's teacher route.

    Returns:
        A ``Dataset`` with columns ``english``, ``lrl``, ``candidate_1`` ... ``candidate_<num_candidates>`` and
        ``label`` (the teacher's query embedding of ``english``).
    """
    missing = {english_column, lrl_column} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"The dataset has no column(s) {sorted(missing)}; its columns are {dataset.column_names}. "
            "Pass english_column= / lrl_column=."
        )
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be at least 1, got {num_candidates}.")
    english = [str(text) for text in dataset[english_column]]
    texts = list(dict.fromkeys([*english, *(str(t) for t in pool or [])]))  # distinct; the pairs' English first
    index = {text: i for i, text in enumerate(texts)}
    encode = encode or frozen_teacher_encoder(model, batch_size, show_progress_bar)
    documents = encode(texts, "document")
    queries = encode(english, "query")
    ids = teacher_candidates(queries, documents, [index[text] for text in english], num_candidates)
    logger.info(
        "Score distillation: %d pairs, %d candidates each from a pool of %d English texts",
        len(english), num_candidates, len(texts),
    )  # fmt: skip
    columns: dict[str, list[Any]] = {"english": english, "lrl": list(dataset[lrl_column])}
    for j in range(num_candidates):
        columns[f"candidate_{j + 1}"] = [texts[i] for i in ids[:, j].tolist()]
    columns["label"] = queries.float().cpu().tolist()
    return Dataset.from_dict(columns)


def frozen_teacher_encoder(
    model: SentenceTransformer, batch_size: int = 64, progress: bool = True
) -> Callable[[list[str], str], Tensor]:
    """``encode(texts, kind)``: the frozen teacher (an OPTICAL model's document route) reading ``texts`` as documents
    (``kind="document"``) or as queries (``"query"``, with the model's query prompt); L2-normalised, on the CPU."""
    query_prompt = column_prompts(model, {"q": "query"}).get("q")
    routed = find_router(model) is not None

    def encode(texts: list[str], kind: str) -> Tensor:
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "convert_to_tensor": True,
            "normalize_embeddings": True,
            "show_progress_bar": progress,
        }
        if kind == "query" and query_prompt:
            kwargs["prompt"] = query_prompt
        if routed:
            return model.encode(texts, task=TEACHER_ROUTE, **kwargs).cpu()
        return (model.encode_query if kind == "query" else model.encode_document)(texts, **kwargs).cpu()

    return encode
