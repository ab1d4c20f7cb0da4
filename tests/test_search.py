"""``optical-st index`` / ``optical-st search`` and :mod:`optical_st.search`: the index round trip against a
brute-force search of the routes (queries through the student, documents through the teacher), and every index that
must be refused: built with another document route or prompt, changed weights, damaged or foreign folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_sentence_transformer
from sentence_transformers.util import cos_sim

from optical_st import build_optical_model
from optical_st.cli import main
from optical_st.evaluation import EmbeddingCache
from optical_st.evaluation.clir import evaluate_collection
from optical_st.evaluation.collection import load_beir_folder
from optical_st.search import IndexMismatchError, SearchIndex, SearchIndexError, build_index
from tests.test_evaluate_collection import CORPUS, QUERIES, write_beir

DOCS = {doc: f"{title} {text}".strip() for doc, (title, text) in CORPUS.items()}
ASKED = [QUERIES["q1"], QUERIES["q3"]]


def _optical(tiny_dirs, teacher: str = "teacher", student: str = "student", prompts: dict | None = None):
    teacher_model = tiny_sentence_transformer(tiny_dirs[teacher])
    teacher_model.prompts = prompts or {"query": "query: ", "document": "passage: "}
    student_model = tiny_sentence_transformer(tiny_dirs[student])
    student_model.prompts = {"query": "query: "}
    return build_optical_model(teacher_model, student_model)


@pytest.fixture
def saved(tiny_dirs, tmp_path) -> Path:
    folder = tmp_path / "model"
    _optical(tiny_dirs).save_pretrained(str(folder))
    return folder


def _brute_force(model, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
    scores = cos_sim(model.encode_query(queries, convert_to_tensor=True), model.encode_document(list(DOCS.values()),
                     convert_to_tensor=True))  # fmt: skip
    ids = list(DOCS)
    top = scores.topk(k, dim=1)
    return [[(ids[j], s) for s, j in zip(v.tolist(), i.tolist(), strict=True)] for v, i in zip(*top, strict=True)]


def _pairs(results) -> list[list[tuple[str, float]]]:
    return [[(hit.doc_id, hit.score) for hit in hits] for hits in results]


def _same(actual, wanted) -> None:
    assert [[d for d, _ in row] for row in actual] == [[d for d, _ in row] for row in wanted]
    assert np.allclose([[s for _, s in row] for row in actual], [[s for _, s in row] for row in wanted], atol=1e-5)


def test_index_then_search_returns_the_brute_force_ranking_of_the_routes(saved, tmp_path):
    from optical_st import load_optical_model

    model = load_optical_model(str(saved))
    index = build_index(model, DOCS, tmp_path / "index", model_name=str(saved), compute_dtype="float32")
    assert index.manifest["documents"] == 6 and index.manifest["document_prompt"] == "passage: "
    again = SearchIndex.load(tmp_path / "index", compute_dtype="float32")  # the model the index names
    results = again.search(ASKED, top_k=3)
    _same(_pairs(results), _brute_force(model, ASKED, 3))
    assert [hit.rank for hit in results[0]] == [1, 2, 3] and results[0][0].text == DOCS[results[0][0].doc_id]
    # the queries went through the student: the teacher reading them ranks with other scores
    teacher_scores = cos_sim(model.encode_document(ASKED, prompt="query: ", convert_to_tensor=True),
                             model.encode_document(list(DOCS.values()), convert_to_tensor=True))  # fmt: skip
    assert results[0][0].score != pytest.approx(teacher_scores[0].max().item(), abs=1e-5)


def test_another_student_of_the_same_teacher_searches_the_same_index(saved, tiny_dirs, tmp_path):
    from optical_st import load_optical_model

    build_index(load_optical_model(str(saved)), DOCS, tmp_path / "index", compute_dtype="float32")
    other = _optical(tiny_dirs, student="wide_student")
    _same(_pairs(SearchIndex.load(tmp_path / "index", other, compute_dtype="float32").search(ASKED, top_k=2)),
          _brute_force(other, ASKED, 2))  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("teacher", "its document route"),  # another teacher
        ("prompt", "its document prompt"),
        ("weights", "its document route"),  # the same model, its teacher's weights changed since: a stale index
    ],
)
def test_an_index_of_another_document_route_is_refused(saved, tiny_dirs, tmp_path, change, message):
    from optical_st import load_optical_model

    model = load_optical_model(str(saved))
    build_index(model, DOCS, tmp_path / "index", model_name=str(saved))
    if change == "teacher":
        model = _optical(tiny_dirs, teacher="student")
    elif change == "prompt":
        model = _optical(tiny_dirs, prompts={"query": "query: ", "document": "document: "})
    else:
        with torch.no_grad():
            next(model[0].sub_modules["document"].parameters()).add_(0.01)
    with pytest.raises(IndexMismatchError, match=f"differs in {message}.*rebuild it"):
        SearchIndex.load(tmp_path / "index", model)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "index.json").unlink(), "is not an optical-st index"),
        (lambda f: (f / "embeddings.npy").unlink(), r"lacks \['embeddings.npy'\]"),
        (lambda f: (f / "documents.jsonl").write_text('{"_id": "d1", "text": "x"}\n'), "is damaged"),
        (lambda f: (f / "index.json").write_text(json.dumps({"format": "faiss", "version": 3})), "holds a 'faiss'"),
        (lambda f: (f / "index.json").write_text("{"), "is not JSON"),
    ],
)
def test_a_damaged_or_foreign_folder_is_refused(saved, tmp_path, damage, message):
    from optical_st import load_optical_model

    model = load_optical_model(str(saved))
    build_index(model, DOCS, tmp_path / "index")
    damage(tmp_path / "index")
    with pytest.raises(SearchIndexError, match=message):
        SearchIndex.load(tmp_path / "index", model)
    with pytest.raises(SearchIndexError, match=r"already holds an index|not an optical-st"):
        if (tmp_path / "index" / "index.json").exists():
            build_index(model, DOCS, tmp_path / "index")  # an index is never overwritten unasked
        else:
            SearchIndex.load(tmp_path / "index", model)


def test_the_index_reads_a_corpus_already_evaluated_from_the_cache(saved, tmp_path):
    from optical_st import load_optical_model

    model = load_optical_model(str(saved))
    cache = EmbeddingCache(tmp_path / "cache")
    evaluate_collection(model, load_beir_folder(write_beir(tmp_path / "beir")), compute_dtype="float32", cache=cache)
    misses = cache.misses
    build_index(model, load_beir_folder(tmp_path / "beir").corpus, tmp_path / "index", cache=cache,
                compute_dtype="float32")  # fmt: skip
    assert cache.misses == misses and cache.hits == 1


def test_an_approximate_index_finds_what_the_exact_one_finds(saved, tmp_path):
    pytest.importorskip("faiss")
    from optical_st import load_optical_model

    model = load_optical_model(str(saved))
    exact = build_index(model, DOCS, tmp_path / "exact", compute_dtype="float32")
    approximate = build_index(model, DOCS, tmp_path / "hnsw", compute_dtype="float32", approximate=True)
    assert (tmp_path / "hnsw" / "faiss.index").is_file()
    _same(_pairs(approximate.search(ASKED, top_k=4)), _pairs(exact.search(ASKED, top_k=4)))


def test_index_and_search_commands(saved, tmp_path, capsys, monkeypatch):
    beir = write_beir(tmp_path / "beir")
    assert main(["index", "--model", str(saved), "--beir", str(beir), "--index-dir", str(tmp_path / "index"),
                 "--compute-dtype", "float32", "--no-cache"]) == 0  # fmt: skip
    assert "Indexed 6 documents" in capsys.readouterr().out
    from optical_st import load_optical_model

    wanted = _brute_force(load_optical_model(str(saved)), ASKED, 2)
    base = ["search", "--index-dir", str(tmp_path / "index"), "--top-k", "2", "--compute-dtype", "float32"]
    assert main([*base, *ASKED]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["query_id", "rank", "doc_id", "score", "text"] and len(rows) == 5
    _same([[(r[2], float(r[3])) for r in rows[1:3]]], wanted[:1])
    assert rows[1][4] == DOCS[rows[1][2]]
    # a file of id<TAB>text, written as a TREC run
    (tmp_path / "q.tsv").write_text(f"a\t{ASKED[0]}\nb\t{ASKED[1]}\n", encoding="utf-8")
    assert main([*base, "--queries-file", str(tmp_path / "q.tsv"), "--format", "trec", "--output",
                 str(tmp_path / "run.trec")]) == 0  # fmt: skip
    trec = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    assert [(t[0], t[2], t[3]) for t in trec] == [("a", wanted[0][0][0], "1"), ("a", wanted[0][1][0], "2"),
                                                 ("b", wanted[1][0][0], "1"), ("b", wanted[1][1][0], "2")]  # fmt: skip
    # standard input, one query a line, as JSONL
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{ASKED[1]}\n\n"))
    assert main([*base, "--format", "jsonl"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(h["query_id"], h["query"], h["doc_id"]) for h in hits] == [("1", ASKED[1], d) for d, _ in wanted[1]]


def test_search_command_errors(saved, tmp_path, capsys):
    assert main(["search", "--index-dir", str(tmp_path / "nowhere"), "q"]) == 2
    assert "is not an optical-st index" in capsys.readouterr().err
    assert main(["index", "--model", str(saved), "--corpus", str(tmp_path / "none.jsonl"), "--index-dir",
                 str(tmp_path / "i")]) == 2  # fmt: skip
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "--index-dir", "i", "--top-k", "0", "q"], "--top-k: must be an integer >= 1, got '0'"),
        (["search", "--index-dir", "i", "--batch-size", "-1", "q"], "--batch-size: must be an integer >= 1"),
        (["index", "--model", "m", "--corpus", "c", "--index-dir", "i", "--batch-size", "0"], "--batch-size: must"),
        (["evaluate", "--model", "m", "--beir", "b", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
        (["index", "--model", "m", "--corpus", "c", "--index-dir", "i", "--compute-dtype", "fp8"], "invalid choice"),
    ],
)
def test_the_encoding_commands_check_their_numbers_before_reading_anything(argv, message, capsys):
    """evaluate, index and search share their --model / --compute-dtype / --batch-size options (cli._options)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
