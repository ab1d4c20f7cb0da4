"""Offline data and model sources: the Chichewa–English Bible bitext (demo, tests of the full pipeline) and the
default English teacher."""

from optical_st.data.bible import BOOKS, DEFAULT_SPLITS, load_bible_bitext
from optical_st.data.minilm import default_teacher

__all__ = ["BOOKS", "DEFAULT_SPLITS", "default_teacher", "load_bible_bitext"]
