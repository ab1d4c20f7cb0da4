"""Evaluation: cross-lingual retrieval (XTREME-style), benchmark loaders, your own test collections, training FLOPs,
agreement with the teacher's ranking."""

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
from optical_st.evaluation.clir import evaluate_collection
from optical_st.evaluation.collection import (
    CollectionError,
    TestCollection,
    load_beir_folder,
    load_hub_collection,
    load_ir_datasets,
    load_trec_files,
)
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
    "CollectionError",
    "CrossLingualRetrievalEvaluator",
    "EmbeddingCache",
    "FlopReport",
    "FlopsCallback",
    "PhaseFlopCounter",
    "RankingAgreementEvaluator",
    "RetrievalBenchmark",
    "TestCollection",
    "bitext_to_ir",
    "count_flops",
    "evaluate_collection",
    "load_beir_folder",
    "load_benchmark",
    "load_bible_benchmark",
    "load_bible_crossref_benchmark",
    "load_hub_collection",
    "load_ir_datasets",
    "load_lareqa",
    "load_mewsli_x",
    "load_tatoeba",
    "load_trec_files",
    "ranking_agreement",
    "sinkhorn_elementwise_flops",
    "trec_eval_metrics",
]
