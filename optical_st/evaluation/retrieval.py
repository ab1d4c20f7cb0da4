"""Cross-lingual retrieval evaluation: LRL queries (student route) against English documents (teacher route)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

__all__ = ["CrossLingualRetrievalEvaluator", "bitext_to_ir"]


def bitext_to_ir(
    queries: Sequence[str], documents: Sequence[str]
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """Turn aligned ``(query_i, document_i)`` pairs into IR inputs ``(queries, corpus, relevant_docs)``.

    Identical documents are merged into one corpus entry (the Bible repeats verses such as greetings), so a query
    whose translation occurs twice is not punished for retrieving the "other" copy; identical queries are kept
    apart but share their relevant documents.
    """
    if len(queries) != len(documents):
        raise ValueError(f"Need aligned pairs: {len(queries)} queries vs {len(documents)} documents.")
    doc_ids: dict[str, str] = {}
    for text in documents:
        doc_ids.setdefault(text, f"d{len(doc_ids)}")
    corpus = {cid: text for text, cid in doc_ids.items()}
    query_dict = {f"q{i}": text for i, text in enumerate(queries)}
    relevant: dict[str, set[str]] = {}
    by_query_text: dict[str, set[str]] = {}
    for query, doc in zip(queries, documents, strict=True):
        by_query_text.setdefault(query, set()).add(doc_ids[doc])
    for qid, text in query_dict.items():
        relevant[qid] = by_query_text[text]
    return query_dict, corpus, relevant


class CrossLingualRetrievalEvaluator(InformationRetrievalEvaluator):
    """sentence-transformers' ``InformationRetrievalEvaluator`` for cross-lingual retrieval from bitext.

    Queries are encoded with ``model.encode_query`` and documents with ``model.encode_document``: on an OPTICAL
    Router model (:func:`optical_st.build_optical_model`) that is the student for the LRL queries and the teacher
    for the English documents; on a plain model (e.g. the zero-shot teacher) both go through the same encoder.
    Metrics are ST's (``accuracy@k`` (k=1 is XTREME Tatoeba's accuracy), ``mrr@k``, ``ndcg@k``, ``map@k``,
    ``recall@k``), keyed ``{name}_{score_function}_{metric}``.

    Example::

        >>> from optical_st.data import load_bible_bitext
        >>> from optical_st.evaluation import CrossLingualRetrievalEvaluator
        >>> test = load_bible_bitext()["test"]
        >>> evaluator = CrossLingualRetrievalEvaluator.from_bitext(test["chichewa"], test["english"], name="nya-eng")
        >>> results = evaluator(model)  # doctest: +SKIP
    """

    @classmethod
    def from_bitext(
        cls,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        name: str = "",
        accuracy_at_k: list[int] | None = None,
        mrr_at_k: list[int] | None = None,
        ndcg_at_k: list[int] | None = None,
        map_at_k: list[int] | None = None,
        precision_recall_at_k: list[int] | None = None,
        **kwargs: Any,
    ) -> CrossLingualRetrievalEvaluator:
        """Build from aligned lists: ``queries[i]`` (LRL) is relevant to ``documents[i]`` (English)."""
        query_dict, corpus, relevant = bitext_to_ir(list(queries), list(documents))
        return cls(
            query_dict,
            corpus,
            relevant,
            name=name,
            accuracy_at_k=accuracy_at_k or [1, 5, 10],
            mrr_at_k=mrr_at_k or [10],
            ndcg_at_k=ndcg_at_k or [10],
            map_at_k=map_at_k or [100],
            precision_recall_at_k=precision_recall_at_k or [1, 10, 100],
            **kwargs,
        )
