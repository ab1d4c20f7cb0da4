"""Evaluation: cross-lingual retrieval (XTREME-style), benchmark loaders, training FLOPs, agreement with the teacher's
ranking."""

from optical_st.evaluation.agreement import RankingAgreementEvaluator, ranking_agreement
from optical_st.evaluation.benchmarks import (
    RetrievalBenchmark,
    load_benchmark,
    load_bible_benchmark,
    load_bible_crossref_benchmark,
    load_lareqa,
    load_mewsli_x,
    load_tatoeba,
)
from optical_st.evaluation.cache import EmbeddingCache
from optical_st.evaluation.flops import (
    FlopReport,
    FlopsCallback,
    PhaseFlopCounter,
    count_flops,
    sinkhorn_elementwise_flops,
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
    "EmbeddingCache",
    "FlopReport",
    "FlopsCallback",
    "PhaseFlopCounter",
    "RankingAgreementEvaluator",
    "RetrievalBenchmark",
    "bitext_to_ir",
    "count_flops",
    "load_benchmark",
    "load_bible_benchmark",
    "load_bible_crossref_benchmark",
    "load_lareqa",
    "load_mewsli_x",
    "load_tatoeba",
    "ranking_agreement",
    "sinkhorn_elementwise_flops",
    "trec_eval_metrics",
]
