"""Search an English collection with queries in your language: the documents encoded once by the model's document
route (an OPTICAL model's frozen teacher) into an index folder, then searched with the query route (the student).

An index folder holds the embeddings (``embeddings.npy``), the document ids and texts (``documents.jsonl``), and
``index.json``: the model it was built with, a digest of its document route (modules, weights, tokenizer), the
document prompt, the similarity and the compute dtype. Loading it with a model whose document route or prompt is not
the one it was built with is an error (its queries would be compared with embeddings from another space): a student
retrained on the same teacher, or another language's student of that teacher, searches the same index. Search is
exact (sentence-transformers' ``semantic_search``) unless the index was built ``approximate`` (a faiss HNSW graph,
``pip install 'optical-st[faiss]'``)::

    >>> from optical_st.search import SearchIndex, build_index
    >>> index = build_index(model, {"d1": "God is love.", "d2": "Jesus wept."}, "runs/index")  # doctest: +SKIP
    >>> index = SearchIndex.load("runs/index")  # doctest: +SKIP  (loads the model it names)
    >>> index.search(["Mulungu ndi chikondi"], top_k=1)  # doctest: +SKIP
    [[Hit(rank=1, doc_id='d1', score=0.91, text='God is love.')]]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers.util import semantic_search

from optical_st.evaluation.cache import EmbeddingCache
from optical_st.evaluation.clir import encode_documents
from optical_st.inference import encode_route, resolve_compute_dtype
from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE

__all__ = ["Hit", "IndexMismatchError", "SearchIndex", "SearchIndexError", "build_index", "document_prompt"]

FORMAT = "optical-st-index"
VERSION = 1
MANIFEST, EMBEDDINGS, DOCUMENTS, GRAPH = "index.json", "embeddings.npy", "documents.jsonl", "faiss.index"


class SearchIndexError(ValueError):
    """The folder is not a complete index of this format; the message says how to rebuild it."""


class IndexMismatchError(SearchIndexError):
    """The index was built with another document route (or prompt, or similarity) than the model searching it."""


@dataclass(frozen=True)
class Hit:
    """One search result: its rank (from 1), the document id, the score and the text (``None`` when not stored)."""

    rank: int
    doc_id: str
    score: float
    text: str | None


def document_prompt(model: Any) -> str:
    """The prompt ``encode_document`` puts in front of a document (``""`` for none)."""
    prompts = getattr(model, "prompts", None) or {}
    return next((prompts[name] for name in ("document", "passage", "corpus") if prompts.get(name)), "")


def _fingerprint(model: Any) -> dict[str, Any]:
    """What decides the document embeddings an index holds, as recorded and compared."""
    return {
        "document_route": EmbeddingCache().route_digest(model, TEACHER_ROUTE),
        "document_prompt": document_prompt(model),
        "similarity_fn_name": model.similarity_fn_name or "cosine",
    }


def _model_name(model: Any, name: str | None) -> str | None:
    """How the manifest names the model: a local folder by its absolute path, a Hub id as it is."""
    name = (
        name or getattr(model.model_card_data, "model_id", None) or getattr(model.model_card_data, "model_name", None)
    )
    return str(Path(name).resolve()) if name and Path(name).is_dir() else name


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def build_index(
    model: Any,
    corpus: Mapping[str, str],
    folder: str | os.PathLike,
    *,
    model_name: str | None = None,
    compute_dtype: str = "auto",
    cache: EmbeddingCache | None = None,
    approximate: bool = False,
    store_texts: bool = True,
    overwrite: bool = False,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> SearchIndex:
    """Encode ``corpus`` (doc id -> English text) with the document route and write an index to ``folder``.

    Args:
        model_name: how ``SearchIndex.load`` finds the model later (default: the model's folder or Hub id).
        compute_dtype: for the documents: ``"auto"`` (bf16 autocast on CPUs with fast bf16), ``"float32"`` or
            ``"bfloat16"``; the index's :meth:`~SearchIndex.search` encodes queries in float32 unless told bfloat16.
        cache: an :class:`~optical_st.evaluation.EmbeddingCache`: a corpus already evaluated on is read from it.
        approximate: also build a faiss HNSW graph and search it instead of every embedding.
        store_texts: keep the texts to show with the results.
        overwrite: replace an index already in ``folder`` (otherwise an error).
    """
    folder = Path(folder)
    if not corpus:
        raise SearchIndexError("The corpus is empty: there is nothing to index.")
    if (folder / MANIFEST).exists() and not overwrite:
        raise SearchIndexError(f"{folder} already holds an index; pass overwrite=True (--overwrite) to replace it.")
    fingerprint = _fingerprint(model)
    if approximate and fingerprint["similarity_fn_name"] not in ("cosine", "dot"):
        raise SearchIndexError(
            f"approximate search needs cosine or dot similarity, not {fingerprint['similarity_fn_name']}."
        )
    dtype = resolve_compute_dtype(compute_dtype, model.device, "corpus")
    ids, texts = list(corpus), list(corpus.values())
    embeddings = encode_documents(model, texts, cache=cache, compute_dtype=dtype, batch_size=batch_size,
                                  show_progress_bar=show_progress_bar)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # the manifest goes last: a half-written index has none
    np.save(folder / EMBEDDINGS, embeddings.numpy().astype(np.float32))
    rows = ({"_id": doc, "text": text if store_texts else None} for doc, text in zip(ids, texts, strict=True))
    _write_atomic(folder / DOCUMENTS, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    if approximate:
        _write_graph(folder / GRAPH, embeddings, fingerprint["similarity_fn_name"])
    manifest = {
        "format": FORMAT, "version": VERSION, "model": _model_name(model, model_name), **fingerprint,
        "compute_dtype": dtype, "documents": len(ids), "dimension": int(embeddings.shape[1]),
        "approximate": approximate, "texts": store_texts, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    return SearchIndex.load(folder, model, compute_dtype=compute_dtype)


def _searchable(embeddings: torch.Tensor, similarity: str) -> np.ndarray:
    """Embeddings for an inner-product index: normalised for cosine."""
    if similarity == "cosine":
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
    return np.ascontiguousarray(embeddings.numpy().astype(np.float32))


def _write_graph(path: Path, embeddings: torch.Tensor, similarity: str) -> None:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("approximate search needs faiss: pip install 'optical-st[faiss]'.") from error
    graph = faiss.IndexHNSWFlat(embeddings.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    graph.add(_searchable(embeddings, similarity))
    faiss.write_index(graph, str(path))


class SearchIndex:
    """An index folder loaded for a model; :meth:`search` encodes queries with the model's query route."""

    def __init__(self, folder: Path, manifest: dict[str, Any], embeddings: torch.Tensor, ids: list[str],
                 texts: list[str | None], model: Any, compute_dtype: str = "auto") -> None:  # fmt: skip
        self.folder, self.manifest, self.embeddings, self.ids, self.texts = folder, manifest, embeddings, ids, texts
        self.model, self.compute_dtype = model, compute_dtype
        self._graph = None

    @classmethod
    def load(
        cls, folder: str | os.PathLike, model: Any | str | None = None, *, compute_dtype: str = "auto"
    ) -> SearchIndex:
        """Load the index in ``folder`` for ``model`` (a model, a name or path, or ``None``: the one the index names)
        and check that its document route is the one the index was built with (:class:`IndexMismatchError`)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        if model is None and not manifest["model"]:
            raise SearchIndexError(f"The index in {folder} does not name its model; pass the model it was built with.")
        if model is None or isinstance(model, str):
            from optical_st.modeling import load_optical_model

            model = load_optical_model(model or manifest["model"])
        check_model(manifest, model, folder)
        embeddings = torch.from_numpy(np.load(folder / EMBEDDINGS))
        rows = [json.loads(line) for line in (folder / DOCUMENTS).read_text(encoding="utf-8").splitlines() if line]
        if embeddings.shape != (manifest["documents"], manifest["dimension"]) or len(rows) != manifest["documents"]:
            raise SearchIndexError(
                f"{folder} is damaged: {MANIFEST} says {manifest['documents']} documents of dimension "
                f"{manifest['dimension']}, {EMBEDDINGS} holds {tuple(embeddings.shape)} and {DOCUMENTS} {len(rows)} "
                "rows. Rebuild it (optical-st index ... --overwrite)."
            )
        return cls(folder, manifest, embeddings, [r["_id"] for r in rows], [r["text"] for r in rows], model,
                   compute_dtype)  # fmt: skip

    def search(self, queries: Sequence[str], top_k: int = 10, *, batch_size: int = 64) -> list[list[Hit]]:
        """The ``top_k`` best documents of each query (a text in your language), best first."""
        queries = list(queries)
        if not queries:
            raise ValueError("No queries to search with.")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")
        dtype = resolve_compute_dtype(self.compute_dtype, self.model.device, "queries")
        encoded = encode_route(self.model, queries, route=STUDENT_ROUTE, compute_dtype=dtype, batch_size=batch_size)
        k = min(top_k, len(self.ids))
        if self.manifest["approximate"]:
            hits = self._search_graph(encoded, k)
        else:
            hits = semantic_search(encoded, self.embeddings, top_k=k, score_function=self.model.similarity)
        return [
            [Hit(rank, self.ids[h["corpus_id"]], float(h["score"]), self.texts[h["corpus_id"]])
             for rank, h in enumerate(ranked, start=1)]
            for ranked in hits
        ]  # fmt: skip

    def _search_graph(self, queries: torch.Tensor, k: int) -> list[list[dict[str, Any]]]:
        import faiss
        from sentence_transformers.util.quantization import semantic_search_faiss

        if self._graph is None:
            self._graph = faiss.read_index(str(self.folder / GRAPH))
        similarity = self.manifest["similarity_fn_name"]
        hits, _ = semantic_search_faiss(_searchable(queries, similarity), corpus_index=self._graph, top_k=k,
                                        rescore=False)  # fmt: skip
        return hits


def read_manifest(folder: Path) -> dict[str, Any]:
    """``index.json`` of an index folder, checked for its format, version and files."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchIndexError(
            f"{folder} is not an optical-st index (no {MANIFEST}; an interrupted build leaves none). Build it with "
            "`optical-st index --model ... --corpus ... --index-dir ...`."
        ) from None
    except ValueError as error:
        raise SearchIndexError(f"{folder / MANIFEST} is not JSON ({error}); rebuild the index.") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise SearchIndexError(
            f"{folder} holds a {manifest.get('format')!r} index, version {manifest.get('version')!r}; this optical-st "
            f"reads {FORMAT!r} version {VERSION}. Rebuild it (optical-st index ... --overwrite)."
        )
    missing = [name for name in (EMBEDDINGS, DOCUMENTS) + ((GRAPH,) if manifest["approximate"] else ())
               if not (folder / name).is_file()]  # fmt: skip
    if missing:
        raise SearchIndexError(f"{folder} lacks {missing}; rebuild the index (optical-st index ... --overwrite).")
    return manifest


def check_model(manifest: Mapping[str, Any], model: Any, folder: Path) -> None:
    """Raise :class:`IndexMismatchError` unless ``model`` encodes documents as the index's model did."""
    mine = _fingerprint(model)
    differ = [key for key, value in mine.items() if manifest.get(key) != value]
    if not differ:
        return
    what = {"document_route": "its document route (the encoder, its weights or tokenizer)",
            "document_prompt": "its document prompt", "similarity_fn_name": "its similarity"}  # fmt: skip
    name = _model_name(model, None) or "this model"
    raise IndexMismatchError(
        f"The index in {folder} was built with {manifest.get('model')}; {name} differs in "
        f"{' and '.join(what[key] for key in differ)} "
        f"({', '.join(f'{key}: {manifest.get(key)!r} vs {mine[key]!r}' for key in differ)}), so its queries would be "
        f"compared with documents from another space. Search with the model the index was built with, or rebuild it: "
        f"optical-st index --model <this model> --corpus ... --index-dir {folder} --overwrite."
    )
