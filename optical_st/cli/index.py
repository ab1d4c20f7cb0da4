"""``optical-st index``: encode an English collection once with the model's document route (its frozen teacher) into
an index folder that ``optical-st search`` reads::

    optical-st index --model runs/swahili --corpus english_docs.jsonl --index-dir runs/english-index
    optical-st index --model runs/swahili --beir data/my-clir --index-dir runs/clir-index     # its corpus.jsonl

The corpus is a JSONL file (``_id`` or ``id``, ``text``, an optional ``title``) or a TSV file (``id<TAB>text``).
Documents are encoded with bf16 autocast on CPUs with fast bf16 (``--compute-dtype float32`` turns it off), through
the embedding cache: a corpus ``optical-st evaluate`` has encoded is indexed without encoding it again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from optical_st.cli._options import add_encoding_options, add_model_option
from optical_st.evaluation.collection import CollectionError, load_texts

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``index`` on the ``optical-st`` sub-command set."""
    p = commands.add_parser(
        "index",
        help="encode an English collection with the document route into an index folder for `optical-st search`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    add_model_option(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", metavar="FILE", help="the documents: JSONL (_id/id, title, text) or TSV (id, text)")
    source.add_argument("--beir", metavar="FOLDER", help="a BEIR folder: its corpus.jsonl")
    p.add_argument("--index-dir", required=True, help="the folder the index is written to")
    p.add_argument("--overwrite", action="store_true", help="replace an index already in --index-dir")
    p.add_argument("--approximate", action="store_true", help="also build a faiss HNSW graph and search that")
    p.add_argument("--no-texts", action="store_true", help="store ids and embeddings only (results show no text)")
    add_encoding_options(
        p,
        dtype_help="auto: bf16 autocast on CPUs with fast bf16 (AMX / AVX512-BF16), else float32; float32 turns it off",
        cache_help="encode the corpus even when it is cached",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """``optical-st index``; returns the exit status (0 done, 2 bad input)."""
    from optical_st.evaluation import EmbeddingCache
    from optical_st.modeling import load_optical_model
    from optical_st.search import SearchIndexError, build_index

    start = time.perf_counter()
    try:
        corpus = load_texts(args.corpus or Path(args.beir) / "corpus.jsonl")
        if (Path(args.index_dir) / "index.json").exists() and not args.overwrite:
            raise SearchIndexError(f"{args.index_dir} already holds an index; pass --overwrite to replace it.")
        model = load_optical_model(args.model)
        index = build_index(
            model, corpus, args.index_dir, model_name=args.model, compute_dtype=args.compute_dtype,
            cache=None if args.no_cache else EmbeddingCache(args.cache_dir), approximate=args.approximate,
            store_texts=not args.no_texts, overwrite=args.overwrite, batch_size=args.batch_size, show_progress_bar=True,
        )  # fmt: skip
    except (CollectionError, SearchIndexError, ImportError) as error:
        print(f"optical-st index: error: {error}", file=sys.stderr)
        return 2
    manifest = index.manifest
    print(f"Indexed {manifest['documents']} documents ({manifest['dimension']} dimensions, {manifest['compute_dtype']}) "
          f"in {index.folder} in {time.perf_counter() - start:.0f} s.\n"
          f"Search it: optical-st search --index-dir {index.folder} \"a query in your language\"")  # fmt: skip
    return 0
