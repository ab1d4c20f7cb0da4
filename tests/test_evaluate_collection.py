"""``optical-st evaluate`` and :func:`optical_st.evaluation.clir.evaluate_collection` on small BEIR and TREC
collections written here, with tiny models: every score against a brute-force ranking and trec_eval's definitions
computed by hand, the routes each side goes through, the embedding cache, and the collection loaders' errors."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import tiny_sentence_transformer
from datasets import Dataset, DatasetDict
from sentence_transformers.util import cos_sim

from optical_st import build_optical_model, inference
from optical_st.cli import main
from optical_st.evaluation import EmbeddingCache
from optical_st.evaluation.clir import evaluate_collection
from optical_st.evaluation.collection import (
    CollectionError,
    load_beir_folder,
    load_hub_collection,
    load_ir_datasets,
    load_trec_files,
)

pytest.importorskip("ir_measures")

# doc id -> (title, text): English documents for the teacher
CORPUS = {
    "d1": ("creation", "in the beginning god created the heavens and the earth"),
    "d2": ("", "god is love"),
    "d3": ("", "the light was good"),
    "d4": ("", "day and night"),
    "d5": ("", "the water and the earth"),
    "d6": ("", "the heavens and the water"),
}
# queries in "your language"; q4 has no judgements (not scored), q5 only a grade-0 one
QUERIES = {
    "q1": "pachiyambi mulungu adalenga kumwamba",
    "q2": "mulungu ndi chikondi",
    "q3": "tsiku ndi usiku",
    "q4": "madzi",
    "q5": "kuyera",
}
ENGLISH = {"q1": "in the beginning god created", "q2": "god is love", "q3": "day and night", "q5": "light"}
# graded judgements; dX is judged but not in the corpus (trec_eval counts it as relevant, never retrieved)
QRELS = [("q1", "d1", 2), ("q1", "d6", 1), ("q2", "d2", 1), ("q2", "d5", 0), ("q3", "d4", 1), ("q3", "dX", 1),
         ("q5", "d3", 0)]  # fmt: skip
JUDGED = ["q1", "q2", "q3"]


def write_beir(folder: Path, qrels: list[tuple[str, str, int]] = QRELS) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    rows = [{"_id": d, "title": title, "text": text} for d, (title, text) in CORPUS.items()]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    queries = [{"_id": q, "text": text} for q, text in QUERIES.items()]
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{g}" for q, d, g in qrels)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_english(path: Path) -> Path:
    path.write_text("".join(f"{q}\t{text}\n" for q, text in ENGLISH.items()), encoding="utf-8")
    return path


def write_trec(folder: Path) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    topics = "".join(
        f"<top>\n<num> Number: {q}\n<title> {text}\n<desc> Description:\nsomething about {q}\n</top>\n\n"
        for q, text in QUERIES.items()
    )
    (folder / "topics.txt").write_text(topics, encoding="utf-8")
    (folder / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q, d, g in QRELS), encoding="utf-8")
    (folder / "docs.tsv").write_text(
        "".join(f"{d}\t{title}\t{text}\n" for d, (title, text) in CORPUS.items()), encoding="utf-8"
    )
    return folder / "topics.txt", folder / "qrels.txt", folder / "docs.tsv"


def _document_text(doc: str) -> str:
    title, text = CORPUS[doc]
    return f"{title} {text}".strip()


@pytest.fixture
def optical(tiny_dirs):
    """An OPTICAL model whose student and teacher differ (other weights) and whose routes have prompts."""
    teacher = tiny_sentence_transformer(tiny_dirs["teacher"])
    teacher.prompts = {"query": "query: ", "document": "passage: "}
    student = tiny_sentence_transformer(tiny_dirs["student"])
    student.prompts = {"query": "query: "}
    return build_optical_model(teacher, student)


# ------------------------------------------------------------------------------------------------------------------
# the oracle: a brute-force ranking and trec_eval's definitions, by hand
# ------------------------------------------------------------------------------------------------------------------
def hand_metrics(ranking: list[str], grades: dict[str, int]) -> dict[str, float]:
    relevant = {doc for doc, grade in grades.items() if grade > 0}
    hits = [doc in relevant for doc in ranking]
    precisions = [sum(hits[: i + 1]) / (i + 1) for i, hit in enumerate(hits[:100]) if hit]
    dcg = sum(grades.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:10]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    first = next((i + 1 for i, hit in enumerate(hits[:10]) if hit), None)
    return {
        "MAP@100": sum(precisions) / len(relevant),
        "nDCG@10": dcg / idcg,
        "R@100": sum(hits[:100]) / len(relevant),
        "MRR@10": 1 / first if first else 0.0,
    }


def brute_force(queries: torch.Tensor, documents: torch.Tensor) -> tuple[dict[str, list[str]], torch.Tensor]:
    scores = cos_sim(queries, documents)
    ids = list(CORPUS)
    rankings = {q: [ids[j] for j in scores[i].argsort(descending=True).tolist()] for i, q in enumerate(JUDGED)}
    return rankings, scores


def expected(queries: torch.Tensor, documents: torch.Tensor) -> dict[str, float]:
    rankings, _ = brute_force(queries, documents)
    grades = {q: {d: g for qq, d, g in QRELS if qq == q} for q in JUDGED}
    per_query = [hand_metrics(rankings[q], grades[q]) for q in JUDGED]
    return {name: sum(m[name] for m in per_query) / len(per_query) for name in per_query[0]}


def _close(actual: dict[str, float], wanted: dict[str, float]) -> None:
    assert actual.keys() == wanted.keys()
    for name in wanted:
        assert actual[name] == pytest.approx(wanted[name], abs=1e-6), name


# ------------------------------------------------------------------------------------------------------------------
# scores and routes
# ------------------------------------------------------------------------------------------------------------------
def test_every_system_scores_what_its_routes_rank_by_hand(optical, tmp_path):
    collection = load_beir_folder(write_beir(tmp_path / "beir"), english_queries=write_english(tmp_path / "en.tsv"))
    results = evaluate_collection(optical, collection, compute_dtype="float32")
    assert list(results) == ["model", "teacher", "english"]
    texts = [QUERIES[q] for q in JUDGED]
    documents = optical.encode_document([_document_text(d) for d in CORPUS], convert_to_tensor=True)
    student = optical.encode_query(texts, convert_to_tensor=True)  # the student, with the query prompt
    teacher = optical.encode_document(texts, prompt="query: ", convert_to_tensor=True)  # the teacher reading queries
    english = optical.encode_document([ENGLISH[q] for q in JUDGED], prompt="query: ", convert_to_tensor=True)
    _close(results["model"].metrics, expected(student, documents))
    _close(results["teacher"].metrics, expected(teacher, documents))
    _close(results["english"].metrics, expected(english, documents))
    # the run holds the scores of the routes: queries by the student, never by the teacher
    _, scores = brute_force(student, documents)
    _, teacher_scores = brute_force(teacher, documents)
    run = results["model"].run
    assert set(run) == set(JUDGED) and all(len(docs) == len(CORPUS) for docs in run.values())
    assert run["q1"]["d3"] == pytest.approx(scores[0, 2].item(), abs=1e-5)
    assert run["q1"]["d3"] != pytest.approx(teacher_scores[0, 2].item(), abs=1e-5)


def test_queries_encoded_by_the_teacher_would_fail(optical, tmp_path, monkeypatch):
    """The oracle above tells the routes apart: a model whose encode_query ran the teacher scores as the teacher."""
    collection = load_beir_folder(write_beir(tmp_path / "beir"))
    right = evaluate_collection(optical, collection, compute_dtype="float32")
    monkeypatch.setattr(
        type(optical),
        "encode_query",
        lambda self, texts, **kw: self.encode_document(texts, **{**kw, "prompt": "query: "}),
    )
    wrong = evaluate_collection(optical, collection, compute_dtype="float32")
    assert wrong["model"].metrics == right["teacher"].metrics
    assert wrong["model"].run != right["model"].run


def test_en2lrl_reads_the_documents_with_the_student(optical, tmp_path):
    collection = load_beir_folder(write_beir(tmp_path / "beir"))
    results = evaluate_collection(optical, collection, compute_dtype="float32", direction="en2lrl")
    queries = optical.encode_document([QUERIES[q] for q in JUDGED], prompt="query: ", convert_to_tensor=True)
    documents = optical.encode_query([_document_text(d) for d in CORPUS], convert_to_tensor=True)
    _close(results["model"].metrics, expected(queries, documents))
    with pytest.raises(ValueError, match="lrl2en"):
        english = load_beir_folder(tmp_path / "beir", english_queries=write_english(tmp_path / "en.tsv"))
        evaluate_collection(optical, english, direction="en2lrl")


def test_a_plain_model_is_its_own_baseline(teacher, tmp_path):
    collection = load_beir_folder(write_beir(tmp_path / "beir"))
    results = evaluate_collection(teacher, collection, compute_dtype="float32")
    assert list(results) == ["model"]
    texts = [QUERIES[q] for q in JUDGED]
    documents = teacher.encode([_document_text(d) for d in CORPUS], convert_to_tensor=True)
    _close(results["model"].metrics, expected(teacher.encode(texts, convert_to_tensor=True), documents))


def test_the_teachers_embeddings_are_cached_the_students_are_not(optical, tiny_dirs, tmp_path, monkeypatch):
    collection = load_beir_folder(write_beir(tmp_path / "beir"))
    cache = EmbeddingCache(tmp_path / "cache")
    first = evaluate_collection(optical, collection, compute_dtype="float32", cache=cache)
    assert (cache.misses, cache.hits) == (2, 0)  # the corpus and the teacher's queries; the student's not cached
    # a second model with the same teacher: only its queries are encoded
    teacher = tiny_sentence_transformer(tiny_dirs["teacher"])  # the same weights, loaded again
    teacher.prompts = {"query": "query: ", "document": "passage: "}
    student = tiny_sentence_transformer(tiny_dirs["wide_student"], hidden=48)
    student.prompts = {"query": "query: "}  # the cache key holds the model's prompts
    other = build_optical_model(teacher, student)
    second = evaluate_collection(other, collection, compute_dtype="float32", cache=cache)
    assert (cache.misses, cache.hits) == (2, 2)
    assert second["teacher"].metrics == first["teacher"].metrics
    assert second["model"].metrics != first["model"].metrics
    # bf16 embeddings are other numbers: their own entries
    evaluate_collection(optical, collection, compute_dtype="bfloat16", cache=cache)
    assert cache.misses == 4
    # "auto" on a CPU with fast bf16: the corpus in bf16, the queries in float32; both entries exist by now
    monkeypatch.setattr(inference, "fast_bf16_available", lambda device="cpu": True)
    auto = evaluate_collection(optical, collection, compute_dtype="auto", cache=cache)
    assert cache.misses == 4 and cache.hits == 4
    assert auto["teacher"].metrics != first["teacher"].metrics or auto["teacher"].run != first["teacher"].run


# ------------------------------------------------------------------------------------------------------------------
# loaders
# ------------------------------------------------------------------------------------------------------------------
def test_trec_files_read_as_the_beir_folder(tmp_path):
    beir = load_beir_folder(write_beir(tmp_path / "beir"))
    trec = load_trec_files(*write_trec(tmp_path / "trec"))
    assert trec.queries == beir.queries == QUERIES
    assert trec.corpus == beir.corpus == {d: _document_text(d) for d in CORPUS}
    assert trec.qrels == beir.qrels and beir.qrels["q1"] == {"d1": 2, "d6": 1}
    assert list(beir.judged_queries) == JUDGED
    described = load_trec_files(tmp_path / "trec" / "topics.txt", tmp_path / "trec" / "qrels.txt",
                                tmp_path / "trec" / "docs.tsv", topic_field="desc")  # fmt: skip
    assert described.queries["q1"] == "something about q1"


def test_a_hub_dataset_in_the_mteb_layout(tmp_path, monkeypatch):
    import datasets

    corpus = Dataset.from_list([{"_id": d, "title": t, "text": x} for d, (t, x) in CORPUS.items()])
    queries = Dataset.from_list([{"_id": q, "text": x} for q, x in QUERIES.items()])
    qrels = Dataset.from_list([{"query-id": q, "corpus-id": d, "score": g} for q, d, g in QRELS])

    def load_dataset(name, config=None, split=None):
        assert name == "org/clir"
        if config == "default":
            return qrels
        return DatasetDict({config: {"corpus": corpus, "queries": queries}[config]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    collection = load_hub_collection("org/clir")
    assert collection.corpus == load_beir_folder(write_beir(tmp_path / "beir")).corpus
    assert collection.qrels["q3"] == {"d4": 1, "dX": 1} and collection.name == "clir"


def test_an_ir_datasets_id(monkeypatch):
    fake = types.SimpleNamespace()

    class Item(types.SimpleNamespace):
        def default_text(self):
            return self.text

    dataset = types.SimpleNamespace(
        has_docs=lambda: True, has_queries=lambda: True, has_qrels=lambda: True,
        docs_iter=lambda: [Item(doc_id=d, text=_document_text(d)) for d in CORPUS],
        queries_iter=lambda: [Item(query_id=q, text=t) for q, t in QUERIES.items()],
        qrels_iter=lambda: [types.SimpleNamespace(query_id=q, doc_id=d, relevance=g) for q, d, g in QRELS],
    )  # fmt: skip
    fake.load = lambda name: dataset if name == "ciral/ha/test-a" else None
    monkeypatch.setitem(sys.modules, "ir_datasets", fake)
    collection = load_ir_datasets("ciral/ha/test-a")
    assert collection.queries == QUERIES and collection.qrels["q1"] == {"d1": 2, "d6": 1}
    assert collection.name == "ciral-ha-test-a" and collection.split == "test-a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: (f / "qrels" / "test.tsv").rename(f / "qrels" / "dev.tsv"), r"lacks \['qrels/test.tsv'\].*\['dev'\]"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nQ1\td1\t1\n"), "no query has"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("q1\tD1\t1\n"), "none of the 1 relevant documents"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("q1\td1\tyes\n"), "relevance 'yes' is not a number"),
        (lambda f: (f / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'),
         "id 'd1' appears twice"),
        (lambda f: (f / "queries.jsonl").write_text('{"id": "q1"}\n'), "line 1: needs an id"),
        (lambda f: (f / "corpus.jsonl").write_text("{nope\n"), "line 1: not JSON"),
    ],
)  # fmt: skip
def test_a_broken_collection_is_named_before_anything_is_encoded(tmp_path, change, message):
    folder = write_beir(tmp_path / "beir")
    change(folder)
    with pytest.raises(CollectionError, match=message):
        load_beir_folder(folder)


def test_english_queries_must_cover_the_judged_queries(tmp_path):
    (tmp_path / "en.tsv").write_text("q1\tin the beginning\n", encoding="utf-8")
    with pytest.raises(CollectionError, match=r"lack 2 judged query id\(s\), e.g. \['q2', 'q3'\]"):
        load_beir_folder(write_beir(tmp_path / "beir"), english_queries=tmp_path / "en.tsv")


# ------------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------------
def test_evaluate_command_prints_writes_and_updates_the_card(optical, tmp_path, capsys):
    folder = tmp_path / "model"
    optical.save_pretrained(str(folder))
    beir, english, out = write_beir(tmp_path / "beir"), write_english(tmp_path / "en.tsv"), tmp_path / "eval"
    code = main(["evaluate", "--model", str(folder), "--beir", str(beir), "--english-queries", str(english),
                 "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--compute-dtype", "float32",
                 "--save-runs", "--update-card"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    collection = load_beir_folder(beir, english_queries=english)
    direct = evaluate_collection(optical, collection, compute_dtype="float32")
    for name, result in direct.items():
        _close(record["systems"][name]["metrics"], result.metrics)
    assert record["collection"] == {"name": "beir", "source": str(beir), "split": "test", "queries": 5,
                                    "judged_queries": 3, "documents": 6, "judgements": 7, "english_queries": True}  # fmt: skip
    printed = capsys.readouterr().out
    assert record["table"] in printed and (out / "results.md").read_text().startswith("| system | MAP@100 |")
    run = (out / "run.model.trec").read_text().splitlines()
    assert len(run) == 3 * len(CORPUS) and run[0].split()[1:4:2] == ["Q0", "1"]
    card = (folder / "README.md").read_text()
    assert f"value: {record['systems']['model']['metrics']['MAP@100']}" in card and "type: map@100" in card


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--topics", "t.txt"], "--topics needs --qrels FILE and --corpus FILE"),
        (["--beir", "nowhere", "--update-card"], "--update-card writes the card of a local model folder"),
        (["--beir", "nowhere"], "is not a BEIR folder"),
        (["--beir", "nowhere", "--english-queries", "en.tsv", "--direction", "en2lrl"], "en2lrl's are English"),
    ],
)
def test_evaluate_command_refuses_bad_input_before_loading_the_model(tmp_path, capsys, extra, message):
    assert main(["evaluate", "--model", "org/not-loaded", *extra]) == 2
    assert message in capsys.readouterr().err
