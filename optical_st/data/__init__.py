"""Datasets: the offline Chichewa–English Bible bitext (demo, tests of the full pipeline)."""

from optical_st.data.bible import BOOKS, DEFAULT_SPLITS, load_bible_bitext

__all__ = ["BOOKS", "DEFAULT_SPLITS", "load_bible_bitext"]
