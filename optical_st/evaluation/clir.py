"""A model on your own test collection, next to what you would get without it: the evaluation behind
``optical-st evaluate``.

:func:`evaluate_collection` scores up to three systems on a :class:`~optical_st.evaluation.collection.TestCollection`
with trec_eval's definitions (through ``ir-measures``, :func:`~optical_st.evaluation.retrieval.trec_eval_metrics`),
each ranking the whole corpus exactly (sentence-transformers' ``semantic_search``, the model's similarity):

* ``model``: queries through the model's ``query`` route (``encode_query``: an OPTICAL model's student), documents
  through its ``document`` route (``encode_document``: the frozen teacher);
* ``teacher``: the zero-shot teacher, what a user has for free: the ``document`` route (or a ``teacher`` model)
  reading the queries too, with the query prompt;
* ``english``: the English-query ceiling: the teacher reading English versions of the queries.

The teacher's embeddings (documents, and its own query embeddings) go through an
:class:`~optical_st.evaluation.EmbeddingCache`, keyed by its weights, prompt, texts and compute dtype, so a second
model with the same teacher on the same collection costs only its queries. The model's queries are never cached.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentence_transformers.util import semantic_search
from torch import Tensor

from optical_st.evaluation.cache import EmbeddingCache
from optical_st.evaluation.collection import TestCollection
from optical_st.evaluation.retrieval import trec_eval_metrics
from optical_st.inference import encode_route, resolve_compute_dtype
from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE, find_router

__all__ = [
    "DEPTH",
    "METRICS",
    "SYSTEMS",
    "SystemResult",
    "encode_documents",
    "evaluate_collection",
    "ranked_run",
    "trec_run_lines",
    "write_trec_run",
]

# the table's columns: trec_eval measures at their cut-offs (ir-measures' AP@100, nDCG@10, R@100, RR@10)
METRICS = {"MAP@100": ("map", 100), "nDCG@10": ("ndcg", 10), "R@100": ("recall", 100), "MRR@10": ("mrr", 10)}
DEPTH = 100  # documents ranked per query: the deepest cut-off above
SYSTEMS = {
    "model": "the model (student for your language, teacher for English)",
    "teacher": "zero-shot teacher (teacher for both sides)",
    "english": "English-query ceiling (teacher, English queries)",
}


@dataclass
class SystemResult:
    """One system's scores (the table's metric names), its ranked run (query id -> {doc id: score}, top
    :data:`DEPTH`) and the seconds its query side took to encode."""

    name: str
    description: str
    metrics: dict[str, float]
    run: dict[str, dict[str, float]]
    query_seconds: float


def ranked_run(queries: Tensor, documents: Tensor, query_ids: list[str], doc_ids: list[str], model: Any, k: int) -> (
    dict[str, dict[str, float]]
):  # fmt: skip
    """Query id -> {doc id: score} of the ``k`` best documents of each query, by the model's similarity (exact)."""
    hits = semantic_search(queries, documents, top_k=k, score_function=model.similarity)
    return {
        qid: {doc_ids[hit["corpus_id"]]: float(hit["score"]) for hit in ranked}
        for qid, ranked in zip(query_ids, hits, strict=True)
    }


def trec_run_lines(run: Mapping[str, Mapping[str, float]], tag: str) -> Iterator[str]:
    """``run`` in TREC run format, a line a document (``qid Q0 docid rank score tag``), each query's by score."""
    for qid, docs in run.items():
        for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda item: -item[1]), start=1):
            yield f"{qid} Q0 {doc} {rank} {score:.6f} {tag}"


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str) -> Path:
    """Write ``run`` as a TREC run file (:func:`trec_run_lines`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in trec_run_lines(run, tag)), encoding="utf-8")
    return path


@dataclass(frozen=True)
class _Side:
    """How one side (queries or documents) of a system is encoded: by which model, through which route, with which
    prompt (``None``: the route's own), and whether that encoder is frozen (its embeddings worth caching)."""

    model: Any
    route: str
    prompt: str | None
    frozen: bool

    def embed(self, texts: list[str], cache: EmbeddingCache | None, **settings: Any) -> Tensor:
        """``encode_route`` of ``texts``; a frozen encoder's through ``cache`` (the compute dtype in the key)."""

        def compute(batch: list[str]) -> Tensor:
            return encode_route(self.model, batch, route=self.route, prompt=self.prompt, **settings)

        if not self.frozen or cache is None:
            return compute(texts)
        return cache.encode(
            self.model, texts, route=self.route, compute=compute, prompt=self.prompt,
            compute_dtype=settings["compute_dtype"], max_seq_length=getattr(self.model, "max_seq_length", None),
        )  # fmt: skip


def encode_documents(
    model: Any,
    texts: Sequence[str],
    *,
    cache: EmbeddingCache | None = None,
    compute_dtype: str = "auto",
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> Tensor:
    """The document route's embeddings of ``texts`` (an OPTICAL model's frozen teacher), through ``cache``: the same
    entries :func:`evaluate_collection` reads and writes, so a corpus evaluated on is indexed for free."""
    dtype = resolve_compute_dtype(compute_dtype, model.device, "corpus")
    settings = {"compute_dtype": dtype, "batch_size": batch_size, "show_progress_bar": show_progress_bar}
    return _Side(model, TEACHER_ROUTE, None, True).embed(list(texts), cache, **settings)


def _systems(model: Any, teacher: Any | None, direction: str, english: bool) -> dict[str, tuple[_Side, _Side]]:
    """System name -> (its query side, its document side)."""
    routed = find_router(model) is not None
    query_prompt = (getattr(model, "prompts", None) or {}).get("query", "")
    student = _Side(model, STUDENT_ROUTE, None, not routed)
    if teacher is not None:  # a separate teacher: its own routes and prompts
        teacher_query, teacher_document = (
            _Side(teacher, STUDENT_ROUTE, None, True),
            _Side(teacher, TEACHER_ROUTE, None, True),
        )
    else:  # the model's own teacher reads queries through the document route with the query prompt
        teacher_query = _Side(model, TEACHER_ROUTE, query_prompt, True) if routed else student
        teacher_document = _Side(model, TEACHER_ROUTE, None, True)
    # en2lrl: English queries, documents in your language: the student reads the documents
    model_sides = (student, teacher_document) if direction == "lrl2en" else (teacher_query, student)
    systems = {"model": model_sides}
    if teacher is not None or routed:
        systems["teacher"] = (teacher_query, teacher_document)
    if english:
        systems["english"] = (teacher_query, teacher_document)
    return systems


def evaluate_collection(
    model: Any,
    collection: TestCollection,
    *,
    teacher: Any | None = None,
    compute_dtype: str = "auto",
    cache: EmbeddingCache | None = None,
    direction: str = "lrl2en",
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> dict[str, SystemResult]:
    """Score the model, the zero-shot teacher and (with English queries) the English-query ceiling on ``collection``
    (see the module docstring); system name (:data:`SYSTEMS`) -> :class:`SystemResult`.

    Args:
        model: an OPTICAL model (``load_optical_model``) or any sentence-transformers model.
        teacher: a separate zero-shot baseline model (default: the model's own ``document`` route; none for a plain
            model, which is its own baseline).
        compute_dtype: ``"auto"`` (the corpus under bf16 autocast on a CPU with fast bf16, the queries in float32),
            ``"float32"`` or ``"bfloat16"`` (both sides; :mod:`optical_st.inference`).
        cache: where the frozen teacher's embeddings are kept (``None``: encode everything).
        direction: ``"lrl2en"`` (queries in your language, English documents: the student reads the queries) or
            ``"en2lrl"`` (English queries, documents in your language, as CIRAL's: the student reads the documents
            through the query route, the teacher the queries; no English-query ceiling).
    """
    try:
        import ir_measures  # noqa: F401  (checked now, not after the corpus is encoded)
    except ImportError as error:
        raise ImportError("Scoring a test collection needs ir-measures: pip install 'optical-st[ir]'.") from error
    collection.check()
    if direction not in ("lrl2en", "en2lrl"):
        raise ValueError(f"direction must be 'lrl2en' or 'en2lrl', got {direction!r}.")
    if direction == "en2lrl" and collection.english_queries is not None:
        raise ValueError("English queries give the ceiling of LRL queries (lrl2en); en2lrl queries are English.")
    common = {"batch_size": batch_size, "show_progress_bar": show_progress_bar}
    corpus_settings = {"compute_dtype": resolve_compute_dtype(compute_dtype, model.device, "corpus"), **common}
    query_settings = {"compute_dtype": resolve_compute_dtype(compute_dtype, model.device, "queries"), **common}
    doc_ids = list(collection.corpus)
    doc_texts = [collection.corpus[doc] for doc in doc_ids]
    query_ids = list(collection.judged_queries)
    qrels = {qid: collection.qrels[qid] for qid in query_ids}
    documents: dict[_Side, Tensor] = {}  # the model and its own teacher share one corpus encoding
    results: dict[str, SystemResult] = {}
    systems = _systems(model, teacher, direction, collection.english_queries is not None)
    for name, (query_side, document_side) in systems.items():
        if document_side not in documents:
            documents[document_side] = document_side.embed(doc_texts, cache, **corpus_settings)
        texts = collection.english_queries if name == "english" else collection.queries
        start = time.perf_counter()
        queries = query_side.embed([texts[qid] for qid in query_ids], cache, **query_settings)
        seconds = time.perf_counter() - start
        depth = min(DEPTH, len(doc_ids))
        run = ranked_run(queries, documents[document_side], query_ids, doc_ids, document_side.model, depth)
        scores = trec_eval_metrics(qrels, run, **{f"{measure}_at_k": [k] for measure, k in METRICS.values()})
        metrics = {column: scores[f"trec_{measure}@k"][k] for column, (measure, k) in METRICS.items()}
        plain = name == "model" and find_router(model) is None
        results[name] = SystemResult(name, "the model (one encoder, no routes)" if plain else SYSTEMS[name], metrics,
                                     run, seconds)  # fmt: skip
    return results
