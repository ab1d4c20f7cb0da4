"""``optical-st search``: search an index built by ``optical-st index`` with queries in your language, through the
model's query route (the student)::

    optical-st search --index-dir runs/english-index "Mulungu ndi chikondi"
    optical-st search --index-dir runs/english-index --queries-file queries.tsv --format trec --output run.trec
    cat queries.txt | optical-st search --index-dir runs/english-index --format jsonl

Queries come from the arguments, a file (JSONL with ids, ``id<TAB>text``, or one query a line), or standard input
(one a line); queries without ids are numbered from 1. The model is the one the index names unless ``--model`` says
otherwise; an index built with another document route is refused. Results: TSV (the default: query id, rank,
document id, score, text), JSONL, or a TREC run (``qid Q0 docid rank score optical-st``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from optical_st.cli._options import add_encoding_options, add_model_option, integer
from optical_st.evaluation.collection import CollectionError, load_texts

__all__ = ["add_parser", "read_queries", "run"]

FORMATS = ("tsv", "jsonl", "trec")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``search`` on the ``optical-st`` sub-command set."""
    p = commands.add_parser(
        "search",
        help="search an index built by `optical-st index` with queries in your language",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    p.add_argument("queries", nargs="*", help="queries (default: --queries-file, else standard input)")
    p.add_argument("--index-dir", required=True, help="a folder written by `optical-st index`")
    add_model_option(p, required=False, help="default: the model the index was built with")
    p.add_argument("--queries-file", default=None, help="JSONL (_id, text), TSV (id<TAB>text) or one query a line")
    p.add_argument("--top-k", type=integer(1), default=10, help="results per query (default: 10)")
    p.add_argument("--format", default="tsv", choices=FORMATS)
    p.add_argument("--output", default=None, help="write the results to this file (default: standard output)")
    add_encoding_options(p, dtype_help="the queries' (auto: float32; bfloat16: faster)")
    return p


def read_queries(args: argparse.Namespace, stdin: TextIO) -> dict[str, str]:
    """Query id -> text from the arguments, ``--queries-file`` or ``stdin`` (ids numbered from 1 where none)."""
    if args.queries and args.queries_file:
        raise CollectionError("Give queries as arguments or --queries-file, not both.")
    if args.queries_file:
        path = Path(args.queries_file)
        if path.suffix.lower() in (".jsonl", ".json", ".tsv"):
            return load_texts(path)
        if not path.is_file():
            raise CollectionError(f"{path}: no such file.")
        lines = path.read_text(encoding="utf-8").splitlines()
    elif args.queries:
        lines = args.queries
    elif stdin.isatty():
        raise CollectionError("No queries: give them as arguments, with --queries-file, or on standard input.")
    else:
        lines = stdin.read().splitlines()
    queries = {str(i): line.strip() for i, line in enumerate(lines, start=1) if line.strip()}
    if not queries:
        raise CollectionError("No queries: every query given is empty.")
    return queries


def run(args: argparse.Namespace) -> int:
    """``optical-st search``; returns the exit status (0 done, 2 bad input)."""
    from optical_st.search import SearchIndex, SearchIndexError

    try:
        queries = read_queries(args, sys.stdin)
        index = SearchIndex.load(args.index_dir, args.model, compute_dtype=args.compute_dtype)
    except (CollectionError, SearchIndexError) as error:
        print(f"optical-st search: error: {error}", file=sys.stderr)
        return 2
    results = index.search(list(queries.values()), top_k=args.top_k, batch_size=args.batch_size)
    lines = format_results(queries, results, args.format)
    if args.output:
        Path(args.output).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    else:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


def format_results(queries: dict[str, str], results: list[list[Any]], kind: str) -> list[str]:
    """The results as lines of TSV (with a header), JSONL or a TREC run."""
    from optical_st.evaluation.clir import trec_run_lines

    if kind == "trec":
        run = {qid: {hit.doc_id: hit.score for hit in hits} for qid, hits in zip(queries, results, strict=True)}
        return list(trec_run_lines(run, "optical-st"))
    lines = ["query_id\trank\tdoc_id\tscore\ttext"] if kind == "tsv" else []
    for (qid, query), hits in zip(queries.items(), results, strict=True):
        for hit in hits:
            if kind == "jsonl":
                row = {"query_id": qid, "query": query, "rank": hit.rank, "doc_id": hit.doc_id, "score": hit.score,
                       "text": hit.text}  # fmt: skip
                lines.append(json.dumps(row, ensure_ascii=False))
            else:  # a tab or line break inside a text would split the row
                text = " ".join((hit.text or "").split())
                lines.append(f"{qid}\t{hit.rank}\t{hit.doc_id}\t{hit.score:.6f}\t{text}")
    return lines
