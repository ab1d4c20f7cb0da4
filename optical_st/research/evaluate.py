"""Evaluating a research run: the benchmarks of a study (:func:`load_benchmarks`), a model's scores on them under the
report's metric names (:func:`evaluate_model`, :func:`summarize`), and reading an evaluator's metrics back
(:func:`timed_evaluation`, :func:`last_eval_metrics`); how far a student's ranking is from the teacher's
(:func:`agreement_evaluator`, tracked during training by :func:`relevance_tracker`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sentence_transformers import SentenceTransformer

from optical_st.evaluation.agreement import RankingAgreementEvaluator
from optical_st.evaluation.benchmarks import RetrievalBenchmark, load_benchmark
from optical_st.evaluation.cache import EmbeddingCache
from optical_st.research.config import ExperimentConfig
from optical_st.routes import find_router

__all__ = [
    "agreement_evaluator",
    "evaluate_model",
    "last_eval_metrics",
    "load_benchmarks",
    "relevance_tracker",
    "set_max_seq_length",
    "short_metrics",
    "summarize",
    "timed_evaluation",
]


def load_benchmarks(config: ExperimentConfig, language: str) -> dict[str, RetrievalBenchmark]:
    """The benchmarks of ``config.benchmarks`` for one language (``{lang}`` filled in), plus, with
    ``english_ceiling``, the relevance benchmarks with English queries (key ``"<name>:english"``)."""
    benches: dict[str, RetrievalBenchmark] = {}
    for spec in config.benchmarks:
        name = spec.format(lang=language)
        kwargs: dict[str, Any] = {}
        if name.startswith("bible."):
            kwargs["max_pairs"] = config.eval_pairs
        if name.startswith("bible-xref"):
            kwargs["corpus"] = config.xref_corpus
        benches[name] = load_benchmark(name, **kwargs)
        if name.startswith("bible-xref") and config.english_ceiling:
            benches[f"{name}:english"] = load_benchmark(name, english_queries=True, **kwargs)
    return benches


def set_max_seq_length(model: SentenceTransformer, length: int) -> None:
    """Every route's ``max_seq_length`` (training and evaluation read texts at their own lengths)."""
    router = find_router(model)
    routes = list(router.sub_modules.values()) if router is not None else [model]
    for route in routes:
        for module in route:
            if hasattr(module, "max_seq_length"):
                module.max_seq_length = length


def summarize(raw: dict[str, float], bench: RetrievalBenchmark, fn: str) -> dict[str, float]:
    """The report's metric names from an evaluator's raw keys: translation benchmarks (bitext) give accuracy@1 in
    both directions, MRR@10 and nDCG@10; relevance benchmarks give ``xref``-prefixed MAP@100, nDCG@10, R@100, MRR@10."""
    if bench.bitext is not None:
        forward, reverse = f"{bench.name}_lrl2en_{fn}_", f"{bench.name}_en2lrl_{fn}_"
        keys = {"acc@1 LRL→En": forward + "accuracy@1", "acc@1 En→LRL": reverse + "accuracy@1"}
        keys.update({"MRR@10": forward + "mrr@10", "nDCG@10": forward + "ndcg@10"})
    else:
        prefix = "xref " if bench.name.startswith("bible-xref") else ""
        head = f"{bench.name}_{fn}_"
        keys = {f"{prefix}{m}": head + k for m, k in (("MAP@100", "map@100"), ("nDCG@10", "ndcg@10"))}
        keys.update({f"{prefix}R@100": head + "recall@100", f"{prefix}MRR@10": head + "mrr@10"})
        keys[f"{prefix}mAP@20"] = head + "map@20"
    return {metric: float(raw[key]) for metric, key in keys.items() if key in raw}


def evaluate_model(
    model: SentenceTransformer,
    benches: dict[str, RetrievalBenchmark],
    config: ExperimentConfig,
    cache: EmbeddingCache | None = None,
) -> dict[str, Any]:
    """``{"metrics": report names -> value, "raw_metrics": evaluator keys -> value, "eval_seconds": s}`` of a model on
    the benchmarks; the frozen teacher's corpus embeddings go through ``cache``."""
    cache = cache if cache is not None else EmbeddingCache(config.cache_dir)
    set_max_seq_length(model, config.eval_max_seq_length)
    metrics: dict[str, float] = {}
    raw_all: dict[str, float] = {}
    start = time.perf_counter()
    for bench in benches.values():
        evaluator = bench.evaluator(
            batch_size=config.eval_batch_size,
            accuracy_at_k=[1, 10],
            mrr_at_k=[10],
            ndcg_at_k=[10],
            map_at_k=[20, 100],
            precision_recall_at_k=[1, 100],
            embedding_cache=cache,
            write_csv=False,
        )
        raw = evaluator(model)
        raw_all.update({k: float(v) for k, v in raw.items()})
        # the English ceiling's row shows its scores under the same names: its method name says what it is
        metrics.update(summarize(raw, bench, model.similarity_fn_name or "cosine"))
    return {"metrics": metrics, "raw_metrics": raw_all, "eval_seconds": time.perf_counter() - start}


def timed_evaluation(evaluator: Any, model: SentenceTransformer) -> tuple[dict[str, float], float]:
    """``(metrics, seconds)`` of one evaluator call, metric names shortened to their last part
    (``"nya-eng-test_cosine_accuracy@1"`` -> ``"accuracy@1"``)."""
    start = time.perf_counter()
    metrics = short_metrics(evaluator(model))
    return metrics, time.perf_counter() - start


def short_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``{"nya-eng-test_cosine_accuracy@1": x, ...}`` -> ``{"accuracy@1": x, ...}``."""
    return {key.rsplit("_", 1)[-1]: value for key, value in metrics.items()}


def last_eval_metrics(
    log_history: Sequence[dict[str, Any]], name: str, metrics: Iterable[str] | None = None
) -> dict[str, float]:
    """The metrics of evaluator ``name`` at its last evaluation during training, short names (the trainer logs them
    as ``eval_<name>_<score function>_<metric>``); only ``metrics`` when given."""
    logs = [h for h in log_history if any(k.startswith(f"eval_{name}_") for k in h)]
    if not logs:
        return {}
    values = short_metrics({k: v for k, v in logs[-1].items() if k.startswith(f"eval_{name}_")})
    return {k: v for k, v in values.items() if metrics is None or k in metrics}


def agreement_evaluator(
    benches: dict[str, RetrievalBenchmark], config: ExperimentConfig, cache: EmbeddingCache
) -> RankingAgreementEvaluator | None:
    """The ranking agreement on the first relevance benchmark that has English queries (``None`` without one): its
    LRL queries read by the student against the same queries in English read by the teacher."""
    for name, bench in benches.items():
        english = benches.get(f"{name}:english")
        if english is not None and not name.endswith(":english"):
            qids = [q for q in bench.queries if q in english.queries]
            return RankingAgreementEvaluator(
                [bench.queries[q] for q in qids],
                [english.queries[q] for q in qids],
                list(bench.corpus.values()),
                batch_size=config.eval_batch_size,
                embedding_cache=cache,
                name="agreement",
            )
    return None


def relevance_tracker(benches: dict[str, RetrievalBenchmark], config: ExperimentConfig, cache: EmbeddingCache) -> Any:
    """What ``track_every`` evaluates during training: the relevance benchmark's metrics and the ranking agreement."""
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    agreement = agreement_evaluator(benches, config, cache)
    if agreement is None:
        raise ValueError("track_every needs a relevance benchmark with English queries (bible-xref, english_ceiling).")
    xref = next(b for k, b in benches.items() if f"{k}:english" in benches)
    relevance = xref.evaluator(
        batch_size=config.eval_batch_size, map_at_k=[100], ndcg_at_k=[10], embedding_cache=cache, write_csv=False
    )
    return SequentialEvaluator([relevance, agreement])
