"""Your own test collection: queries, documents and relevance judgements, read from the layouts CLIR collections ship in.

* a BEIR folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
  ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a header): :func:`load_beir_folder`;
* TREC files: topics (SGML ``<top>`` blocks, or TSV / JSONL), qrels (``qid iteration docid relevance``) and a corpus
  (JSONL or TSV): :func:`load_trec_files`;
* a Hub dataset in the BEIR/MTEB layout (configurations ``corpus``, ``queries`` and ``default`` or a ``<id>-qrels``
  repository): :func:`load_hub_collection`;
* an ``ir_datasets`` id (CIRAL, NeuCLIR, MIRACL, ...; the ``ir-datasets`` extra): :func:`load_ir_datasets`.

Every loader returns a :class:`TestCollection` and checks it before anything is encoded: a query or document id
used twice, judgements naming no known query, or no judged document in the corpus (ids from another collection) are
errors naming the file. A document's text is its title and text joined by a space, as BEIR and MTEB read them.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CollectionError",
    "TestCollection",
    "load_beir_folder",
    "load_hub_collection",
    "load_ir_datasets",
    "load_qrels",
    "load_texts",
    "load_trec_files",
    "load_trec_topics",
]

# the id and text fields a JSONL line may use: BEIR (_id), ir_datasets and NeuCLIR (doc_id, query_id, id)
_ID_FIELDS = ("_id", "id", "doc_id", "docid", "query_id", "qid", "query-id", "corpus-id")
_TEXT_FIELDS = ("text", "query", "contents", "body")


class CollectionError(ValueError):
    """The collection cannot be evaluated as given; the message names the file and the fix."""


@dataclass
class TestCollection:
    """Queries (id -> text), documents (id -> text) and graded judgements (query id -> {doc id: grade}); a grade of 0
    or less is judged not relevant. ``english_queries`` (id -> English text) give the English-query ceiling."""

    __test__ = False  # not a pytest test class, whatever its name

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    english_queries: dict[str, str] | None = None
    source: str = ""
    split: str = "test"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def relevant_docs(self) -> dict[str, set[str]]:
        """Query id -> ids of the documents judged relevant (grade above 0), for queries that have one."""
        relevant = {qid: {doc for doc, grade in docs.items() if grade > 0} for qid, docs in self.qrels.items()}
        return {qid: docs for qid, docs in relevant.items() if docs}

    @property
    def judged_queries(self) -> dict[str, str]:
        """The queries with at least one relevant document: the ones scored (trec_eval's convention)."""
        relevant = self.relevant_docs
        return {qid: text for qid, text in self.queries.items() if qid in relevant}

    def check(self) -> TestCollection:
        """Raise a :class:`CollectionError` when the collection cannot give a meaningful score; return it."""
        where = self.source or self.name
        if not self.corpus:
            raise CollectionError(f"{where}: the corpus is empty; there is nothing to retrieve.")
        if not self.judged_queries:
            raise CollectionError(
                f"{where}: no query has a relevant document ({len(self.queries)} queries, judgements for "
                f"{len(self.qrels)} query ids, e.g. {sorted(self.qrels)[:3]}). Check that the qrels use the queries' "
                f"ids (e.g. {sorted(self.queries)[:3]}) and the split ({self.split!r})."
            )
        judged = {doc for docs in self.relevant_docs.values() for doc in docs}
        if not judged & set(self.corpus):
            raise CollectionError(
                f"{where}: none of the {len(judged)} relevant documents is in the corpus (e.g. {sorted(judged)[:3]}; "
                f"the corpus has e.g. {sorted(self.corpus)[:3]}): the qrels and the corpus come from different "
                "collections or use different ids."
            )
        if self.english_queries is not None:
            missing = sorted(set(self.judged_queries) - set(self.english_queries))
            if missing:
                raise CollectionError(
                    f"{where}: the English queries lack {len(missing)} judged query id(s), e.g. {missing[:3]}; give "
                    "an English text for every query (same ids)."
                )
        return self

    def __repr__(self) -> str:
        return (
            f"TestCollection({self.name!r}, queries={len(self.queries)}, judged={len(self.judged_queries)}, "
            f"corpus={len(self.corpus)}, english_queries={self.english_queries is not None})"
        )


# ------------------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------------------
def _first(row: dict[str, Any], names: Iterable[str]) -> Any:
    return next((row[name] for name in names if row.get(name) not in (None, "")), None)


def _put(texts: dict[str, str], key: str, text: str, where: str) -> None:
    if key in texts:
        raise CollectionError(f"{where}: id {key!r} appears twice; ids must be unique.")
    texts[key] = text


def _jsonl_texts(path: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise CollectionError(f"{path}, line {number}: not JSON ({error}).") from None
            key, text = _first(row, _ID_FIELDS), _first(row, _TEXT_FIELDS)
            title = str(row.get("title") or "").strip()
            if key is None or (text is None and not title):
                raise CollectionError(
                    f"{path}, line {number}: needs an id ({'/'.join(_ID_FIELDS[:3])}) and a text "
                    f"({'/'.join(_TEXT_FIELDS[:2])} or title); it has {sorted(row)}."
                )
            _put(texts, str(key), " ".join(part for part in (title, str(text or "").strip()) if part), f"{path}")
    return texts


def _tsv_texts(path: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise CollectionError(f"{path}, line {number}: expected 'id<TAB>text', got {row!r}.")
            if number == 1 and row[0].lower() in {"id", "_id", "qid", "query_id", "query-id", "doc_id", "docid"}:
                continue  # a header
            _put(texts, row[0].strip(), " ".join(field.strip() for field in row[1:] if field.strip()), f"{path}")
    return texts


def load_texts(path: str | Path) -> dict[str, str]:
    """Id -> text from a JSONL file (``_id``/``id``/``doc_id``/``query_id`` and ``text``, with an optional ``title``
    put in front), a TSV file (``id<TAB>text``, an optional header) or TREC topics (``<top>`` blocks)."""
    path = Path(path)
    if not path.is_file():
        raise CollectionError(f"{path}: no such file.")
    if path.suffix.lower() in (".jsonl", ".json"):
        return _jsonl_texts(path)
    head = path.read_text(encoding="utf-8", errors="replace")[:4096].lower()
    if "<top>" in head:
        return load_trec_topics(path)
    return _tsv_texts(path)


_TOPIC = re.compile(r"<top>(.*?)</top>", re.S | re.I)
_TAG = re.compile(r"<(num|title|desc|narr)>", re.I)


def load_trec_topics(path: str | Path, field: str = "title") -> dict[str, str]:
    """Topic number -> its ``field`` (``title``, ``desc`` or ``narr``) from TREC SGML topics (``<top> <num> Number:
    401 <title> ... </top>``); the ``Number:`` / ``Description:`` / ``Narrative:`` labels are dropped."""
    if field not in ("title", "desc", "narr"):
        raise CollectionError(f"A topic field is 'title', 'desc' or 'narr', got {field!r}.")
    path = Path(path)
    topics: dict[str, str] = {}
    for block in _TOPIC.findall(path.read_text(encoding="utf-8")):
        parts = _TAG.split(block)
        fields = {
            tag.lower(): re.sub(r"\s+", " ", value).strip() for tag, value in zip(parts[1::2], parts[2::2], strict=True)
        }
        number = re.sub(r"^number:\s*", "", fields.get("num", ""), flags=re.I)
        text = re.sub(r"^(topic|description|narrative):\s*", "", fields.get(field, ""), flags=re.I)
        if not number or not text:
            raise CollectionError(f"{path}: a <top> block without <num> or <{field}>: {block.strip()[:80]!r}.")
        _put(topics, number, text, str(path))
    if not topics:
        raise CollectionError(f"{path}: no <top> ... </top> topic blocks.")
    return topics


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Query id -> {doc id: grade} from TREC qrels (``qid iteration docid relevance``, whitespace-separated) or a
    BEIR qrels TSV (``query-id<TAB>corpus-id<TAB>score``, with a header)."""
    path = Path(path)
    if not path.is_file():
        raise CollectionError(f"{path}: no such file.")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts or (number == 1 and parts[0].lower() in ("query-id", "query_id", "qid")):
                continue
            if len(parts) not in (3, 4):
                raise CollectionError(
                    f"{path}, line {number}: expected 'qid 0 docid relevance' (TREC) or 'query-id corpus-id score' "
                    f"(BEIR), got {line.strip()!r}."
                )
            qid, doc, grade = (parts[0], parts[2], parts[3]) if len(parts) == 4 else parts
            try:
                qrels.setdefault(qid, {})[doc] = int(float(grade))
            except ValueError:
                raise CollectionError(f"{path}, line {number}: relevance {grade!r} is not a number.") from None
    return qrels


# ------------------------------------------------------------------------------------------------------------------
# the four layouts
# ------------------------------------------------------------------------------------------------------------------
def _english(english_queries: str | Path | dict[str, str] | None) -> dict[str, str] | None:
    return load_texts(english_queries) if isinstance(english_queries, (str, Path)) else english_queries


def load_beir_folder(
    folder: str | Path, split: str = "test", english_queries: str | Path | dict[str, str] | None = None
) -> TestCollection:
    """A BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""
    folder = Path(folder)
    missing = [
        name for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (folder / name).is_file()
    ]
    if missing:
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        hint = f" Its qrels splits: {splits} (--split)." if splits else ""
        raise CollectionError(f"{folder} is not a BEIR folder: it lacks {missing}.{hint}")
    return TestCollection(
        name=folder.resolve().name,
        queries=load_texts(folder / "queries.jsonl"),
        corpus=load_texts(folder / "corpus.jsonl"),
        qrels=load_qrels(folder / "qrels" / f"{split}.tsv"),
        english_queries=_english(english_queries),
        source=str(folder),
        split=split,
    ).check()


def load_trec_files(
    topics: str | Path,
    qrels: str | Path,
    corpus: str | Path,
    *,
    topic_field: str = "title",
    english_queries: str | Path | dict[str, str] | None = None,
    name: str | None = None,
) -> TestCollection:
    """TREC-style files: topics (SGML ``<top>`` blocks read for ``topic_field``, or TSV / JSONL), qrels and a corpus
    (JSONL or TSV)."""
    topics = Path(topics)
    is_sgml = topics.is_file() and "<top>" in topics.read_text(encoding="utf-8", errors="replace")[:4096].lower()
    return TestCollection(
        name=name or Path(corpus).stem,
        queries=load_trec_topics(topics, topic_field) if is_sgml else load_texts(topics),
        corpus=load_texts(corpus),
        qrels=load_qrels(qrels),
        english_queries=_english(english_queries),
        source=f"{topics}, {qrels}, {corpus}",
        split=Path(qrels).stem,
    ).check()


def _hub_texts(rows: Any, what: str, dataset_id: str) -> dict[str, str]:
    texts: dict[str, str] = {}
    for row in rows:
        key, text = _first(row, _ID_FIELDS), _first(row, _TEXT_FIELDS)
        title = str(row.get("title") or "").strip()
        if key is None:
            raise CollectionError(f"{dataset_id} ({what}): rows need an id column ('_id'); it has {sorted(row)}.")
        _put(texts, str(key), " ".join(p for p in (title, str(text or "").strip()) if p), f"{dataset_id} ({what})")
    return texts


def load_hub_collection(
    dataset_id: str, split: str = "test", english_queries: str | Path | dict[str, str] | None = None
) -> TestCollection:
    """A Hub dataset in the BEIR/MTEB layout: configurations ``corpus`` and ``queries`` (``_id``, ``title``,
    ``text``), judgements in the ``default`` configuration's ``split`` (MTEB) or in ``<dataset_id>-qrels`` (BEIR)."""
    from datasets import DatasetDict, load_dataset

    def rows(config: str) -> Any:
        data = load_dataset(dataset_id, config)
        return next(iter(data.values())) if isinstance(data, DatasetDict) else data

    try:
        judgements = load_dataset(dataset_id, "default", split=split)
    except (ValueError, FileNotFoundError):  # BEIR's own copies keep their qrels in a second repository
        judgements = load_dataset(f"{dataset_id}-qrels", split=split)
    qrels: dict[str, dict[str, int]] = {}
    for row in judgements:
        qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    return TestCollection(
        name=dataset_id.split("/")[-1],
        queries=_hub_texts(rows("queries"), "queries", dataset_id),
        corpus=_hub_texts(rows("corpus"), "corpus", dataset_id),
        qrels=qrels,
        english_queries=_english(english_queries),
        source=dataset_id,
        split=split,
    ).check()


def load_ir_datasets(dataset_id: str, english_queries: str | Path | dict[str, str] | None = None) -> TestCollection:
    """An ``ir_datasets`` collection by id (``ciral/ha/test-a``, ``neuclir/1/fa/trec-2022``, ...): its documents,
    queries and qrels (``pip install 'optical-st[ir-datasets]'``; it downloads what the id names on first use)."""
    try:
        import ir_datasets
    except ImportError as error:
        raise ImportError("--ir-datasets needs ir_datasets: pip install 'optical-st[ir-datasets]'.") from error
    dataset = ir_datasets.load(dataset_id)
    for part in ("docs", "queries", "qrels"):
        if not getattr(dataset, f"has_{part}")():
            raise CollectionError(f"ir_datasets {dataset_id!r} has no {part}; name a collection with all three.")
    corpus: dict[str, str] = {}
    for doc in dataset.docs_iter():
        _put(corpus, doc.doc_id, doc.default_text(), f"ir_datasets {dataset_id} (docs)")
    queries: dict[str, str] = {}
    for query in dataset.queries_iter():
        _put(queries, query.query_id, query.default_text(), f"ir_datasets {dataset_id} (queries)")
    qrels: dict[str, dict[str, int]] = {}
    for qrel in dataset.qrels_iter():
        qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = int(qrel.relevance)
    return TestCollection(
        name=dataset_id.replace("/", "-"),
        queries=queries,
        corpus=corpus,
        qrels=qrels,
        english_queries=_english(english_queries),
        source=f"ir_datasets:{dataset_id}",
        split=dataset_id.rsplit("/", 1)[-1],
    ).check()
