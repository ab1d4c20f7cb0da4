"""Ranking agreement between the student's LRL-query ranking and the teacher's English-query ranking, by hand."""

from __future__ import annotations

import pytest
import torch

from optical_st import build_optical_model
from optical_st.evaluation import EmbeddingCache, RankingAgreementEvaluator, ranking_agreement


def test_agreement_by_hand():
    """Four documents on the unit circle; the teacher's query ranks them 0 > 1 > 2 > 3, the student's 1 > 0 > 3 > 2."""
    angles = torch.tensor([0.0, 0.5, 1.5, 3.0])
    docs = torch.stack([angles.cos(), angles.sin()], 1)
    teacher = torch.tensor([[1.0, 0.0]])  # scores cos(angle): order 0, 1, 2, 3
    student = torch.tensor([[0.8, 0.6]])  # angle 0.6435: nearest 1 (0.14), then 0 (0.64), 2 (0.86), 3 (2.36)
    got = ranking_agreement(student, teacher, docs, k_values=(1, 2))
    assert got["overlap@1"] == 0.0 and got["overlap@2"] == 1.0
    # ranks (0 = lowest): teacher 3, 2, 1, 0; student 2, 3, 1, 0 -> Spearman 1 - 6 * (1 + 1) / (4 * 15) = 0.8
    assert got["spearman"] == pytest.approx(0.8)
    t = torch.softmax(docs @ teacher[0] / 0.03, 0)
    assert got["teacher_mass@1"] == pytest.approx(float(t[1]), rel=1e-5)
    assert got["teacher_mass@2"] == pytest.approx(float(t[0] + t[1]), rel=1e-5)
    with pytest.raises(ValueError, match="Aligned"):
        ranking_agreement(student, torch.zeros(2, 2), docs)


def test_evaluator_reads_the_student_for_lrl_and_the_teacher_for_english(teacher, wide_student, tmp_path):
    """A student that is the teacher's own copy, given the English texts as "LRL" queries, agrees fully; a different
    student does not (so queries go through the student)."""
    texts = ["god is love", "the light was good", "day and night", "the water and the earth", "god created"]
    corpus = [*texts, "the heavens", "night was good", "the day"]
    copy = build_optical_model(teacher)
    cache = EmbeddingCache(tmp_path / "cache")
    same = RankingAgreementEvaluator(texts, texts, corpus, k_values=(3,), embedding_cache=cache)(copy)
    assert same["agreement_overlap@3"] == pytest.approx(1.0) and same["agreement_spearman"] == pytest.approx(1.0)
    other = RankingAgreementEvaluator(texts, texts, corpus, k_values=(3,), embedding_cache=cache)
    assert other(build_optical_model(teacher, wide_student))["agreement_spearman"] < 0.99
    assert other.primary_metric.endswith("overlap@3") and cache.hits > 0


def test_the_corpus_the_retrieval_evaluator_encoded_is_not_encoded_again(teacher, tmp_path):
    """Tracking runs the relevance metrics and the agreement on the same corpus: one encoding of it serves both
    (it was encoded twice, under two cache keys: minutes per tracked run on a whole Bible). Oracle: the
    embeddings the agreement reads equal ``encode_document``'s, and the cache counts one corpus miss."""
    from optical_st.evaluation import CrossLingualRetrievalEvaluator

    texts = ["god is love", "the light was good", "day and night"]
    corpus = {f"d{i}": text for i, text in enumerate([*texts, "the heavens", "night was good", "the day"])}
    model = build_optical_model(teacher)
    cache = EmbeddingCache(tmp_path / "cache")
    queries = {f"q{i}": text for i, text in enumerate(texts)}
    relevance = CrossLingualRetrievalEvaluator(queries, corpus, {q: {"d0"} for q in queries}, embedding_cache=cache)
    relevance(model)
    assert (cache.hits, cache.misses) == (0, 1)  # the corpus; the student's queries are never cached
    agreement = RankingAgreementEvaluator(texts, texts, list(corpus.values()), k_values=(3,), embedding_cache=cache)
    agreement(model)
    assert (cache.hits, cache.misses) == (1, 2)  # the corpus read back; the teacher's English queries encoded
    expected = model.encode_document(list(corpus.values()), convert_to_tensor=True).cpu()
    torch.testing.assert_close(agreement._documents(model), expected)
