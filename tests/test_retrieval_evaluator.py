"""CrossLingualRetrievalEvaluator and bitext_to_ir against hand-computed and brute-force metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import PAIRS, tiny_sentence_transformer
from sentence_transformers import util

from optical_st import build_optical_model, export_student
from optical_st.evaluation import CrossLingualRetrievalEvaluator, bitext_to_ir

# ---------------------------------------------------------------------------------------------- bitext_to_ir


def test_bitext_to_ir_merges_identical_documents():
    queries, corpus, relevant = bitext_to_ir(["q0", "q1", "q2"], ["Grace to you.", "Amen.", "Grace to you."])
    assert queries == {"q0": "q0", "q1": "q1", "q2": "q2"}
    assert corpus == {"d0": "Grace to you.", "d1": "Amen."}
    assert relevant == {"q0": {"d0"}, "q1": {"d1"}, "q2": {"d0"}}


def test_bitext_to_ir_identical_queries_share_their_documents():
    _, corpus, relevant = bitext_to_ir(["Ameni.", "Ameni.", "Chisomo."], ["Amen.", "So be it.", "Grace."])
    assert len(corpus) == 3
    assert relevant == {"q0": {"d0", "d1"}, "q1": {"d0", "d1"}, "q2": {"d2"}}


def test_bitext_to_ir_refuses_unaligned_lists():
    with pytest.raises(ValueError, match="aligned pairs"):
        bitext_to_ir(["a", "b"], ["x"])


# ------------------------------------------------------------------------------- evaluator, fixed embeddings


class FixedEmbeddingModel:
    """Duck-typed model: each text has a fixed 2-D unit vector, queries and documents looked up separately."""

    similarity_fn_name = "cosine"

    def __init__(self, query_angles: dict[str, float], document_angles: dict[str, float]) -> None:
        self.queries = query_angles
        self.documents = document_angles
        self.calls: list[str] = []
        self.model_card_data = type("CardData", (), {"set_evaluation_metrics": lambda *args, **kwargs: None})()

    @staticmethod
    def _vectors(angles: dict[str, float], texts: list[str]) -> torch.Tensor:
        radians = torch.tensor([math.radians(angles[t]) for t in texts], dtype=torch.float64)
        return torch.stack([radians.cos(), radians.sin()], dim=1)

    def encode_query(self, texts, **kwargs) -> torch.Tensor:
        self.calls.append("query")
        return self._vectors(self.queries, list(texts))

    def encode_document(self, texts, **kwargs) -> torch.Tensor:
        self.calls.append("document")
        return self._vectors(self.documents, list(texts))

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return util.cos_sim(a, b)


def test_evaluator_matches_hand_computed_metrics():
    # documents at 0°, 60°, 120°; "A" appears twice in the bitext and is merged into one corpus entry.
    # query angle -> ranking by angular distance -> rank of its relevant document:
    #   q0 10° (rel A): A B C -> 1      q1 0° (rel B): A B C -> 2
    #   q2 -20° (rel C): A B C -> 3     q3 100° (rel A): C B A -> 3
    model = FixedEmbeddingModel({"q0": 10, "q1": 0, "q2": -20, "q3": 100}, {"A": 0, "B": 60, "C": 120})
    evaluator = CrossLingualRetrievalEvaluator.from_bitext(
        ["q0", "q1", "q2", "q3"],
        ["A", "B", "C", "A"],
        name="toy",
        accuracy_at_k=[1, 2],
        mrr_at_k=[2, 10],
        ndcg_at_k=[10],
        map_at_k=[100],
        write_csv=False,
    )
    assert len(evaluator.corpus) == 3
    metrics = evaluator(model)
    ranks = [1, 2, 3, 3]
    expected = {
        "toy_cosine_accuracy@1": 1 / 4,
        "toy_cosine_accuracy@2": 2 / 4,
        "toy_cosine_mrr@2": (1 + 1 / 2) / 4,
        "toy_cosine_mrr@10": sum(1 / r for r in ranks) / 4,
        # one relevant document per query: AP = 1 / rank, nDCG = 1 / log2(rank + 1)
        "toy_cosine_map@100": sum(1 / r for r in ranks) / 4,
        "toy_cosine_ndcg@10": sum(1 / math.log2(r + 1) for r in ranks) / 4,
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert set(model.calls) == {"query", "document"}


def _brute_force(query_emb: np.ndarray, doc_emb: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    """accuracy@1, MRR@10, MAP@100 by sorting every query's cosine scores (ties broken by document index)."""
    q = query_emb / np.linalg.norm(query_emb, axis=1, keepdims=True)
    d = doc_emb / np.linalg.norm(doc_emb, axis=1, keepdims=True)
    scores = q @ d.T
    acc1, mrr10, map100 = [], [], []
    for i, rel in enumerate(relevant):
        order = sorted(range(len(d)), key=lambda j: (-scores[i, j], j))
        hits = [rank for rank, j in enumerate(order, start=1) if j in rel]
        acc1.append(float(hits[0] == 1))
        mrr10.append(1 / hits[0] if hits[0] <= 10 else 0.0)
        precisions = [(n + 1) / rank for n, rank in enumerate(h for h in hits if h <= 100)]
        map100.append(sum(precisions) / min(len(rel), 100))
    return {"accuracy@1": np.mean(acc1), "mrr@10": np.mean(mrr10), "map@100": np.mean(map100)}


def test_evaluator_on_optical_model_uses_student_for_queries_and_teacher_for_documents(tiny_dirs, tmp_path):
    teacher = tiny_sentence_transformer(tiny_dirs["teacher"])
    student = tiny_sentence_transformer(tiny_dirs["wide_student"], hidden=48)
    model = build_optical_model(teacher, student)
    english, lrl = (list(x) for x in zip(*PAIRS, strict=True))
    english.append(english[1])  # a repeated document, merged by the evaluator
    lrl.append("mulungu ndi chikondi madzi")
    evaluator = CrossLingualRetrievalEvaluator.from_bitext(lrl, english, name="tiny", write_csv=False)
    metrics = evaluator(model)

    # oracle: the exported student encodes queries, the teacher alone encodes the de-duplicated documents
    documents = list(dict.fromkeys(english))
    query_emb = export_student(model).encode(lrl, convert_to_numpy=True)
    doc_emb = teacher.encode(documents, convert_to_numpy=True)
    relevant = [{documents.index(doc)} for doc in english]
    expected = _brute_force(query_emb, doc_emb, relevant)
    for name, value in expected.items():
        assert metrics[f"tiny_cosine_{name}"] == pytest.approx(value, abs=1e-6), name
    # and the query side really is the student: the teacher encodes the Chichewa queries differently
    assert not np.allclose(teacher.encode(lrl, convert_to_numpy=True), query_emb, atol=1e-3)


# ------------------------------------------------------------------------------------ excluded documents


def test_excluded_documents_never_rank_and_the_rest_move_up():
    # documents at 0°, 60°, 120°; q0 at 10° would rank A first, but A is its own verse (excluded):
    # its ranking is B (60°), C (120°), so relevant B is at rank 1; q1 at 100° ranks C, B, A; nothing excluded.
    model = FixedEmbeddingModel({"q0": 10, "q1": 100}, {"A": 0, "B": 60, "C": 120})
    queries = {"q0": "q0", "q1": "q1"}
    corpus = {"dA": "A", "dB": "B", "dC": "C"}
    relevant = {"q0": {"dB"}, "q1": {"dA"}}
    kwargs = dict(accuracy_at_k=[1], mrr_at_k=[10], ndcg_at_k=[10], map_at_k=[100], write_csv=False, name="x")
    plain = CrossLingualRetrievalEvaluator(queries, corpus, relevant, **kwargs)(model)
    excluded = CrossLingualRetrievalEvaluator(queries, corpus, relevant, excluded_docs={"q0": {"dA"}}, **kwargs)(model)
    # without the exclusion: q0's B at rank 2, q1's A at rank 3
    assert plain["x_cosine_mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # with it: q0's B at rank 1; q1 unchanged
    assert excluded["x_cosine_mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert excluded["x_cosine_accuracy@1"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="not in the corpus"):
        CrossLingualRetrievalEvaluator(queries, corpus, relevant, excluded_docs={"q0": {"dZ"}}, **kwargs)


# ------------------------------------------------------------------------------------------ embedding cache


def test_embedding_cache_encodes_a_frozen_corpus_once(teacher, tmp_path):
    from optical_st.evaluation import EmbeddingCache

    english, lrl = (list(x) for x in zip(*PAIRS, strict=True))
    cache = EmbeddingCache(tmp_path / "cache")
    first = CrossLingualRetrievalEvaluator.from_bitext(lrl, english, embedding_cache=cache, write_csv=False)
    metrics = first(teacher)
    assert (cache.hits, cache.misses) == (0, 1)
    # a second evaluator (another run, another method) on the same teacher and corpus: read back, same scores
    second = CrossLingualRetrievalEvaluator.from_bitext(
        lrl, english, embedding_cache=tmp_path / "cache", write_csv=False
    )
    assert second(teacher) == pytest.approx(metrics)
    assert second.embedding_cache.hits == 1 and second.embedding_cache.misses == 0
    # the stored tensor is what the model computes
    stored = torch.load(next((tmp_path / "cache").glob("*.pt")))
    expected = teacher.encode_document(list(first.corpus), convert_to_tensor=True)
    torch.testing.assert_close(stored, expected.cpu())


def test_embedding_cache_key_follows_weights_prompts_and_texts(teacher, tmp_path):
    from optical_st.evaluation import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    texts = ["god is love", "the light was good"]
    key = cache.key(teacher, "document", texts)
    assert cache.key(teacher, "document", texts) == key
    assert cache.key(teacher, "document", texts[::-1]) != key
    assert cache.key(teacher, "document", texts, prompt="passage: ") != key
    with torch.no_grad():
        next(teacher.parameters()).add_(1e-3)  # an optimizer step: the digest must notice
    assert cache.key(teacher, "document", texts) != key


def test_embedding_cache_shares_entries_between_a_model_and_the_teacher_route_built_from_it(teacher, student, tmp_path):
    from optical_st.evaluation import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    model = build_optical_model(teacher, student)
    texts = ["god is love"]
    # the Router's document route holds a copy of the teacher: same weights, same key, one encoding for both
    assert cache.key(model, "document", texts) == cache.key(teacher, "document", texts)
    assert cache.key(model, "query", texts) != cache.key(teacher, "document", texts)


def test_embedding_cache_survives_a_corrupt_entry_and_a_read_only_folder(teacher, tmp_path):
    from optical_st.evaluation import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    texts = ["god is love"]
    path = tmp_path / f"{cache.key(teacher, 'document', texts)}.pt"
    path.write_bytes(b"not a tensor")
    encode = lambda t: teacher.encode_document(t, convert_to_tensor=True)  # noqa: E731
    out = cache.encode(teacher, texts, route="document", compute=encode)
    assert out.shape[0] == 1 and cache.misses == 1
    torch.testing.assert_close(torch.load(path), out.cpu())  # rewritten
    blocked = EmbeddingCache(tmp_path / "file-not-folder")
    (tmp_path / "file-not-folder").write_text("x")
    assert blocked.encode(teacher, texts, route="document", compute=encode).shape[0] == 1  # warns, still returns


def test_embedding_cache_key_ignores_the_tokenizers_truncation_state(teacher, tmp_path):
    """Training tokenizes with truncation, which rewrites the fast tokenizer's state: that must not change the key
    (it did, and every trained model missed the teacher corpus the zero-shot run had stored)."""
    from optical_st.evaluation import EmbeddingCache

    texts = ["god is love"]
    key = EmbeddingCache(tmp_path).key(teacher, "document", texts)
    teacher.tokenizer(["the light was good " * 20], truncation=True, max_length=8, padding="max_length")
    assert EmbeddingCache(tmp_path).key(teacher, "document", texts) == key
