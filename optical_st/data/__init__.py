"""Offline data and model sources: Bible bitext between English and low-resource languages, human cross-references
between verses, the English teacher all-MiniLM-L6-v2 and multilingual-e5-small, both from PyPI packages."""

from optical_st.data.bible import (
    BOOKS,
    DEFAULT_SPLITS,
    LANGUAGES,
    BibleLanguage,
    bible_language,
    english_verses,
    load_bible_bitext,
    verse_id,
)
from optical_st.data.minilm import default_teacher
from optical_st.data.multilingual_e5 import load_multilingual_e5, multilingual_e5_path

__all__ = [
    "BOOKS",
    "DEFAULT_SPLITS",
    "LANGUAGES",
    "BibleLanguage",
    "bible_language",
    "default_teacher",
    "english_verses",
    "load_bible_bitext",
    "load_multilingual_e5",
    "multilingual_e5_path",
    "verse_id",
]
