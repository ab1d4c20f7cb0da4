"""Cross-lingual retrieval evaluation: LRL queries (student route) against English documents (teacher route).

* :class:`CrossLingualRetrievalEvaluator`: ST's ``InformationRetrievalEvaluator`` with explicit routes per side
  (CLIR metrics: accuracy@k, MRR@k, nDCG@k, MAP@k, recall@k; optional trec_eval numbers through ``ir-measures``).
* :class:`BitextRetrievalEvaluator`: XTREME Tatoeba-style bitext retrieval in both directions (LRL→En and En→LRL),
  each side encoded once.

MAP conventions (both are reported when ``trec_eval=True``):

* ``map@k`` (sentence-transformers, and XTREME-R's mAP@20 for LAReQA / Mewsli-X): the sum of precisions at the
  relevant hits within the top ``k``, divided by ``min(k, |relevant|)``.
* ``trec_map@k`` (trec_eval ``map_cut.k``, ir-measures ``AP@k``): the same sum divided by ``|relevant|``.

They agree whenever ``|relevant| <= k`` (always for bitext, where each query has one translation); they differ for
queries with more than ``k`` relevant documents, where ST/XTREME-R's value is higher.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from torch import Tensor

from optical_st.evaluation.cache import EmbeddingCache, document_key

__all__ = ["BitextRetrievalEvaluator", "CrossLingualRetrievalEvaluator", "bitext_to_ir", "trec_eval_metrics"]

Route = Literal["query", "document"] | None


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


def trec_eval_metrics(
    relevant_docs: Mapping[str, set[str] | Mapping[str, int]],
    run: dict[str, dict[str, float]],
    *,
    map_at_k: Sequence[int] = (100,),
    ndcg_at_k: Sequence[int] = (10,),
    mrr_at_k: Sequence[int] = (10,),
    recall_at_k: Sequence[int] = (100,),
) -> dict[str, dict[int, float]]:
    """trec_eval's definitions (through ``ir-measures``, i.e. ``pytrec_eval``) of MAP@k, nDCG@k, MRR@k, R@k.

    Args:
        relevant_docs: ``qid -> {relevant doc ids}`` (binary relevance) or ``qid -> {doc id: grade}`` (graded
            judgements, as TREC and BEIR qrels give them: nDCG gains are the grades, a grade of 0 is not relevant).
        run: ``qid -> {doc id: score}``; the ranked list of each query (at least the top ``max(k)``).

    Returns:
        ``{"trec_map@k": {k: v}, "trec_ndcg@k": ..., "trec_mrr@k": ..., "trec_recall@k": ...}``, averaged over the
        queries of ``relevant_docs`` (a query missing from ``run`` scores 0, as in trec_eval ``-c``).
    """
    try:
        import ir_measures
        from ir_measures import AP, RR, R, nDCG
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("trec_eval metrics need ir-measures: pip install 'optical-st[ir]'.") from err
    qrels = {
        qid: {doc: int(grade) for doc, grade in docs.items()} if isinstance(docs, Mapping) else dict.fromkeys(docs, 1)
        for qid, docs in relevant_docs.items()
        if docs
    }
    full_run = {qid: dict(run.get(qid, {})) for qid in qrels}
    measures = {
        **{AP @ k: ("trec_map@k", k) for k in map_at_k},
        **{nDCG @ k: ("trec_ndcg@k", k) for k in ndcg_at_k},
        **{RR @ k: ("trec_mrr@k", k) for k in mrr_at_k},
        **{R @ k: ("trec_recall@k", k) for k in recall_at_k},
    }
    per_query: dict[Any, list[float]] = {m: [] for m in measures}
    for metric in ir_measures.iter_calc(list(measures), qrels, full_run):
        per_query[metric.measure].append(metric.value)
    out: dict[str, dict[int, float]] = {}
    for measure, (key, k) in measures.items():
        values = per_query[measure] + [0.0] * (len(qrels) - len(per_query[measure]))  # empty runs score 0
        out.setdefault(key, {})[k] = float(np.mean(values)) if values else 0.0
    return out


class CrossLingualRetrievalEvaluator(InformationRetrievalEvaluator):
    """sentence-transformers' ``InformationRetrievalEvaluator`` for cross-lingual retrieval.

    By default queries are encoded with ``model.encode_query`` and documents with ``model.encode_document``: on an
    OPTICAL Router model (:func:`optical_st.build_optical_model`) that is the student for the LRL queries and the
    teacher for the English documents; on a plain model (e.g. the zero-shot teacher) both go through the same
    encoder. ``query_route`` / ``corpus_route`` choose other routes, e.g. English queries against LRL documents
    (``query_route="document", corpus_route="query"``).

    Metrics are ST's (``accuracy@k`` (k=1 is XTREME Tatoeba's accuracy), ``mrr@k``, ``ndcg@k``, ``map@k``
    (XTREME-R's mAP@k convention), ``recall@k``), keyed ``{name}_{score_function}_{metric}``. With
    ``trec_eval=True`` the trec_eval versions are added as ``trec_map@k``, ``trec_ndcg@k``, ``trec_mrr@k``,
    ``trec_recall@k`` (see the module docstring for how MAP differs).

    Args:
        queries, corpus, relevant_docs, **kwargs: as for ``InformationRetrievalEvaluator``.
        query_route: ``"query"`` (``encode_query``), ``"document"`` (``encode_document``) or ``None`` (``encode``).
        corpus_route: the same for the corpus.
        trec_eval: also compute trec_eval's MAP/nDCG/MRR/recall through ``ir-measures`` (``pip install
            'optical-st[ir]'``), at the ``map_at_k`` / ``ndcg_at_k`` / ``mrr_at_k`` / ``precision_recall_at_k`` cutoffs.
        excluded_docs: ``qid -> {doc ids}`` never ranked for that query (as BEIR/MTEB skip a query's own document):
            e.g. the query verse itself in the cross-reference benchmark, where finding its translation is the other
            task. Forces one corpus chunk (the mask is ``queries x corpus`` booleans).
        embedding_cache: an :class:`~optical_st.evaluation.EmbeddingCache` (or a folder for one) for the corpus
            side: its embeddings are read from disk when the same encoder weights, prompts and texts were encoded
            before (a frozen teacher's corpus is encoded once across methods, seeds and runs).

    Example::

        >>> from optical_st.data import load_bible_bitext
        >>> from optical_st.evaluation import CrossLingualRetrievalEvaluator
        >>> test = load_bible_bitext()["test"]
        >>> evaluator = CrossLingualRetrievalEvaluator.from_bitext(test["chichewa"], test["english"], name="nya-eng")
        >>> results = evaluator(model)  # doctest: +SKIP
    """

    def __init__(
        self,
        queries: dict[str, str],
        corpus: dict[str, str],
        relevant_docs: dict[str, set[str]],
        *,
        query_route: Route = "query",
        corpus_route: Route = "document",
        trec_eval: bool = False,
        excluded_docs: dict[str, set[str]] | None = None,
        embedding_cache: EmbeddingCache | str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if excluded_docs:
            kwargs["corpus_chunk_size"] = max(len(corpus), 1)
        super().__init__(queries, corpus, relevant_docs, **kwargs)
        # refused now: an empty side would divide by zero at the first evaluation, hours into training and before
        # the checkpoint of that step is written
        if not self.queries:
            raise ValueError(
                f"{type(self).__name__}({kwargs.get('name', '')!r}) got no query with a relevant document "
                f"({len(queries)} queries, {len(relevant_docs)} with relevance judgements): an evaluation set needs "
                "at least one. Check that the evaluation split is not empty and that relevant_docs uses the query ids."
            )
        if not self.corpus:
            raise ValueError(
                f"{type(self).__name__}({kwargs.get('name', '')!r}) got an empty corpus: there is nothing to retrieve. "
                "Check that the evaluation split's documents were passed."
            )
        for route in (query_route, corpus_route):
            if route not in ("query", "document", None):
                raise ValueError(f"Routes are 'query', 'document' or None; got {route!r}.")
        if trec_eval:
            try:
                import ir_measures  # noqa: F401
            except ImportError as err:
                raise ImportError("trec_eval=True needs ir-measures: pip install 'optical-st[ir]'.") from err
        self.query_route = query_route
        self.corpus_route = corpus_route
        self.trec_eval = trec_eval
        self.last_run: dict[str, dict[str, float]] | None = None
        self.excluded_docs = {qid: set(docs) for qid, docs in (excluded_docs or {}).items() if docs}
        unknown = {d for docs in self.excluded_docs.values() for d in docs} - set(corpus)
        if unknown:
            raise ValueError(f"excluded_docs names {len(unknown)} id(s) not in the corpus, e.g. {sorted(unknown)[:3]}.")
        if embedding_cache is not None and not isinstance(embedding_cache, EmbeddingCache):
            embedding_cache = EmbeddingCache(embedding_cache)
        self.embedding_cache = embedding_cache
        # route -> {text: embedding}, filled by BitextRetrievalEvaluator so each side is encoded once
        self._precomputed: dict[Route, dict[str, Tensor]] | None = None

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

    def embed_inputs(
        self,
        model: Any,
        sentences: Any,
        encode_fn_name: str | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> Tensor:
        route = {"query": self.query_route, "document": self.corpus_route}.get(encode_fn_name, encode_fn_name)
        memo = (self._precomputed or {}).get(route)
        if memo is not None and prompt is None and prompt_name is None and all(s in memo for s in sentences):
            return torch.stack([memo[s] for s in sentences])
        return self.cached_embed(model, sentences, route, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def cached_embed(
        self,
        model: Any,
        sentences: Any,
        route: Route,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """``embed_inputs`` of the plain route; the ``"document"`` route (the frozen teacher of an OPTICAL model)
        through the embedding cache when there is one. The student's side changes with training: never cached."""

        def encode(texts: Any) -> Tensor:
            return InformationRetrievalEvaluator.embed_inputs(
                self, model, texts, route, prompt_name=prompt_name, prompt=prompt, **kwargs
            )

        if self.embedding_cache is None or route != "document":
            return encode(sentences)
        key = document_key(model, truncate_dim=self.truncate_dim, prompt=prompt, prompt_name=prompt_name)
        return self.embedding_cache.encode(model, sentences, route=route, compute=encode, **key)

    def compute_all_metrics(self, model: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not self.excluded_docs:
            return super().compute_all_metrics(model, *args, **kwargs)
        mask = self._exclusion_mask()
        unmasked = self.score_functions

        def masked(fn: Any) -> Any:
            def score(queries: Tensor, corpus: Tensor) -> Tensor:
                scores = fn(queries, corpus)
                return scores.masked_fill(mask.to(scores.device), float("-inf"))

            return score

        self.score_functions = {name: masked(fn) for name, fn in unmasked.items()}
        try:
            return super().compute_all_metrics(model, *args, **kwargs)
        finally:
            self.score_functions = unmasked

    def _exclusion_mask(self) -> Tensor:
        column = {cid: j for j, cid in enumerate(self.corpus_ids)}
        mask = torch.zeros(len(self.queries_ids), len(self.corpus_ids), dtype=torch.bool)
        for i, qid in enumerate(self.queries_ids):
            for cid in self.excluded_docs.get(qid, ()):
                mask[i, column[cid]] = True
        return mask

    def compute_metrics(self, queries_result_list: list[object]) -> dict[str, dict[int, float]]:
        scores = super().compute_metrics(queries_result_list)
        self.last_run = {
            qid: {hit["corpus_id"]: float(hit["score"]) for hit in hits}
            for qid, hits in zip(self.queries_ids, queries_result_list, strict=True)
        }
        if self.trec_eval:
            scores.update(
                trec_eval_metrics(
                    {qid: self.relevant_docs[qid] for qid in self.queries_ids},
                    self.last_run,
                    map_at_k=self.map_at_k,
                    ndcg_at_k=self.ndcg_at_k,
                    mrr_at_k=self.mrr_at_k,
                    recall_at_k=self.precision_recall_at_k,
                )
            )
        return scores

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        if (self.query_route, self.corpus_route) != ("query", "document"):
            config.update(query_route=self.query_route, corpus_route=self.corpus_route)
        return config


class BitextRetrievalEvaluator(BaseEvaluator):
    """XTREME Tatoeba-style bitext retrieval in both directions, on an OPTICAL model.

    * ``lrl2en``: each LRL sentence (``encode_query``, the student) retrieves its English translation among all
      English sentences (``encode_document``, the teacher).
    * ``en2lrl``: each English sentence (teacher) retrieves its LRL translation among all LRL sentences (student).

    Each side is encoded once and shared by both directions. Every direction reports the full
    :class:`CrossLingualRetrievalEvaluator` metrics (``{name}_lrl2en_{fn}_accuracy@1``, ``..._map@100``, ...);
    ``{name}_mean_accuracy@1`` is the mean of both directions' accuracy@1 (the primary metric).

    Args:
        lrl: LRL sentences.
        english: their English translations (aligned with ``lrl``).
        name: prefix of the metric keys.
        directions: which directions to evaluate.
        **kwargs: forwarded to both :class:`CrossLingualRetrievalEvaluator` (k lists, ``batch_size``,
            ``trec_eval``, ``show_progress_bar``, ...).

    Example::

        >>> from optical_st.data import load_bible_bitext
        >>> from optical_st.evaluation import BitextRetrievalEvaluator
        >>> test = load_bible_bitext()["test"]
        >>> evaluator = BitextRetrievalEvaluator(test["chichewa"], test["english"], name="bible")
        >>> evaluator(model)["bible_mean_accuracy@1"]  # doctest: +SKIP
    """

    def __init__(
        self,
        lrl: Sequence[str],
        english: Sequence[str],
        *,
        name: str = "",
        directions: Sequence[Literal["lrl2en", "en2lrl"]] = ("lrl2en", "en2lrl"),
        **kwargs: Any,
    ) -> None:
        super().__init__()
        lrl, english = list(lrl), list(english)
        if not lrl or len(lrl) != len(english):
            raise ValueError(f"Need aligned, non-empty bitext: {len(lrl)} LRL vs {len(english)} English sentences.")
        if not directions or set(directions) - {"lrl2en", "en2lrl"}:
            raise ValueError(f"directions must be a non-empty subset of ('lrl2en', 'en2lrl'); got {directions!r}.")
        self.name = name
        self.lrl, self.english = lrl, english
        self.directions = tuple(directions)
        prefix = f"{name}_" if name else ""
        self.evaluators: dict[str, CrossLingualRetrievalEvaluator] = {}
        for direction in self.directions:
            forward = direction == "lrl2en"
            self.evaluators[direction] = CrossLingualRetrievalEvaluator.from_bitext(
                lrl if forward else english,
                english if forward else lrl,
                name=f"{prefix}{direction}",
                query_route="query" if forward else "document",
                corpus_route="document" if forward else "query",
                **kwargs,
            )
        self.primary_metric = "mean_accuracy@1"

    def _encode_sides(self, model: Any) -> dict[Route, dict[str, Tensor]]:
        any_evaluator = next(iter(self.evaluators.values()))
        memo: dict[Route, dict[str, Tensor]] = {}
        for route, texts in (("query", self.lrl), ("document", self.english)):
            unique = list(dict.fromkeys(texts))
            # the parent class's embed_inputs: the plain route, no memo (and, for documents, the cache if any)
            embeddings = any_evaluator.cached_embed(model, unique, route)
            memo[route] = dict(zip(unique, embeddings, strict=True))
        return memo

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        memo = self._encode_sides(model)
        metrics: dict[str, float] = {}
        accuracies: dict[str, list[float]] = {}
        for evaluator in self.evaluators.values():
            evaluator._precomputed = memo
            try:
                result = evaluator(model, output_path=output_path, epoch=epoch, steps=steps)
            finally:
                evaluator._precomputed = None
            metrics.update(result)
            for fn in evaluator.score_function_names:
                accuracies.setdefault(fn, []).append(result[f"{evaluator.name}_{fn}_accuracy@1"])
        means = {fn: float(np.mean(values)) for fn, values in accuracies.items()}
        if len(means) == 1:
            metrics_mean = {"mean_accuracy@1": next(iter(means.values()))}
        else:
            metrics_mean = {f"{fn}_mean_accuracy@1": value for fn, value in means.items()}
            self.primary_metric = f"{sorted(means)[0]}_mean_accuracy@1"
        metrics_mean = self.prefix_name_to_metrics(metrics_mean, self.name)
        metrics.update(metrics_mean)
        self.store_metrics_in_model_card_data(model, metrics_mean, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        return {"directions": list(self.directions)}
