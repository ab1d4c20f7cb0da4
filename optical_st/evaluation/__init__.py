"""Evaluation: cross-lingual retrieval (XTREME-style), benchmark loaders, training FLOPs."""

from optical_st.evaluation.benchmarks import (
    RetrievalBenchmark,
    load_benchmark,
    load_bible_benchmark,
    load_lareqa,
    load_mewsli_x,
    load_tatoeba,
)
from optical_st.evaluation.retrieval import (
    BitextRetrievalEvaluator,
    CrossLingualRetrievalEvaluator,
    bitext_to_ir,
    trec_eval_metrics,
)

__all__ = [
    "BitextRetrievalEvaluator",
    "CrossLingualRetrievalEvaluator",
    "RetrievalBenchmark",
    "bitext_to_ir",
    "load_benchmark",
    "load_bible_benchmark",
    "load_lareqa",
    "load_mewsli_x",
    "load_tatoeba",
    "trec_eval_metrics",
]
