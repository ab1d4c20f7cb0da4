"""Evaluation: cross-lingual retrieval (XTREME-style)."""

from optical_st.evaluation.retrieval import CrossLingualRetrievalEvaluator, bitext_to_ir

__all__ = ["CrossLingualRetrievalEvaluator", "bitext_to_ir"]
