"""How closely a student's ranking of English documents for LRL queries follows the teacher's ranking of the same
documents for the English versions of the queries: what score distillation tries to carry over
(:class:`RankingAgreementEvaluator`, :func:`ranking_agreement`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from torch import Tensor

from optical_st.evaluation.cache import EmbeddingCache, document_key
from optical_st.modeling import column_prompts
from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE, find_router

__all__ = ["RankingAgreementEvaluator", "ranking_agreement"]


def ranking_agreement(
    student_queries: Tensor, teacher_queries: Tensor, documents: Tensor, k_values: Sequence[int] = (10, 100)
) -> dict[str, float]:
    """Agreement of two rankings of ``documents`` per query (cosine scores), averaged over queries.

    ``overlap@k``: the share of the teacher's top ``k`` that is also in the student's top ``k``. ``spearman``: the
    rank correlation of the two score vectors over all documents. ``teacher_mass@k``: the teacher's softmax mass
    (at ``T = 0.03``, the score-distillation default) on the student's top ``k``.

    Args:
        student_queries: ``(Q, d)``, the student's LRL query embeddings.
        teacher_queries: ``(Q, d)``, the teacher's embeddings of the English versions.
        documents: ``(N, d)``, the teacher's document embeddings.
    """
    if student_queries.shape[0] != teacher_queries.shape[0]:
        raise ValueError(f"Aligned queries needed: {student_queries.shape[0]} vs {teacher_queries.shape[0]}.")
    docs = F.normalize(documents.float(), dim=-1)
    out: dict[str, list[float]] = {}
    for start in range(0, student_queries.shape[0], 256):
        s = F.normalize(student_queries[start : start + 256].float(), dim=-1) @ docs.T
        t = F.normalize(teacher_queries[start : start + 256].float(), dim=-1) @ docs.T
        for k in k_values:
            k = min(k, docs.shape[0])
            top_s, top_t = s.topk(k, dim=1).indices, t.topk(k, dim=1).indices
            shared = (top_s.unsqueeze(2) == top_t.unsqueeze(1)).any(2).sum(1).float() / k
            out.setdefault(f"overlap@{k}", []).extend(shared.tolist())
            mass = torch.softmax(t / 0.03, dim=1).gather(1, top_s).sum(1)
            out.setdefault(f"teacher_mass@{k}", []).extend(mass.tolist())
        out.setdefault("spearman", []).extend(_spearman(s, t).tolist())
    return {name: sum(values) / len(values) for name, values in out.items()}


def _spearman(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Spearman correlation (ties broken by position: continuous scores have none in practice)."""
    ranks_a = a.argsort(dim=1).argsort(dim=1).float()
    ranks_b = b.argsort(dim=1).argsort(dim=1).float()
    ranks_a = ranks_a - ranks_a.mean(1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(1, keepdim=True)
    return (ranks_a * ranks_b).sum(1) / (ranks_a.norm(dim=1) * ranks_b.norm(dim=1)).clamp_min(1e-12)


class RankingAgreementEvaluator(BaseEvaluator):
    """:func:`ranking_agreement` of an OPTICAL model during or after training: its student reads ``lrl_queries``
    (``encode_query``), its frozen teacher reads ``english_queries`` as queries (the document route with the query
    prompt) and ``corpus`` as documents. The teacher's sides go through ``embedding_cache``, so tracking costs the
    student's queries only. Metric keys ``<name>_overlap@k``, ``<name>_spearman``, ``<name>_teacher_mass@k``; the
    primary metric is ``overlap@100`` (or the largest k).

    Args:
        lrl_queries: the queries in the low-resource language.
        english_queries: their English versions, aligned.
        corpus: the English documents.
        k_values: the cut-offs of overlap and teacher mass.
        batch_size: encoding batch size.
        embedding_cache: the frozen teacher's embeddings (an :class:`~optical_st.evaluation.EmbeddingCache`).
        name: prefix of the metric keys.
    """

    def __init__(
        self,
        lrl_queries: Sequence[str],
        english_queries: Sequence[str],
        corpus: Sequence[str],
        k_values: Sequence[int] = (10, 100),
        batch_size: int = 64,
        embedding_cache: EmbeddingCache | None = None,
        name: str = "agreement",
    ) -> None:
        super().__init__()
        if len(lrl_queries) != len(english_queries) or not lrl_queries:
            raise ValueError(f"Aligned, non-empty queries needed: {len(lrl_queries)} vs {len(english_queries)}.")
        self.lrl_queries, self.english_queries, self.corpus = list(lrl_queries), list(english_queries), list(corpus)
        self.k_values = tuple(k_values)
        self.batch_size = batch_size
        self.embedding_cache = embedding_cache
        self.name = name
        self.primary_metric = f"overlap@{max(self.k_values)}"

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        # a plain model (zero-shot) is its own student and teacher
        routed = find_router(model) is not None
        query_prompt = column_prompts(model, {"q": STUDENT_ROUTE}).get("q") or None
        teacher = self._teacher_queries(model, query_prompt)
        documents = self._documents(model)
        kwargs = {"batch_size": self.batch_size, "convert_to_tensor": True}
        if routed:
            student = model.encode(self.lrl_queries, task=STUDENT_ROUTE, prompt=query_prompt, **kwargs)
        else:
            student = model.encode_query(self.lrl_queries, **kwargs)
        metrics = ranking_agreement(student.cpu(), teacher, documents, self.k_values)
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def _documents(self, model: Any) -> Tensor:
        """The corpus as ``encode_document`` reads it (the frozen teacher), cached under the key the retrieval
        evaluators use, so a corpus they encoded is not encoded again."""

        def encode(batch: list[str]) -> Tensor:
            return model.encode_document(batch, batch_size=self.batch_size, convert_to_tensor=True).cpu()

        if self.embedding_cache is None:
            return encode(self.corpus)
        return self.embedding_cache.encode(
            model, self.corpus, route=TEACHER_ROUTE, compute=encode, **document_key(model)
        )

    def _teacher_queries(self, model: Any, prompt: str | None) -> Tensor:
        """The frozen teacher reading the English queries with the query ``prompt``, through the cache."""
        routed = find_router(model) is not None

        def encode(batch: list[str]) -> Tensor:
            kwargs = {"batch_size": self.batch_size, "convert_to_tensor": True}
            if routed:
                return model.encode(batch, task=TEACHER_ROUTE, prompt=prompt, **kwargs).cpu()
            return model.encode_query(batch, **kwargs).cpu()

        if self.embedding_cache is None:
            return encode(self.english_queries)
        route = TEACHER_ROUTE if routed else None
        length = getattr(model, "max_seq_length", None)  # texts are truncated to it
        key = {"prompt": prompt, "kind": "query", "max_seq_length": length}
        return self.embedding_cache.encode(model, self.english_queries, route=route, compute=encode, **key)
