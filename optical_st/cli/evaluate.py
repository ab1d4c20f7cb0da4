"""``optical-st evaluate``: your model on your own cross-lingual test collection, next to the zero-shot teacher.

Queries in your language go through the model's query route (the student), documents through its document route
(the frozen English teacher); the zero-shot teacher reads both, and with ``--english-queries`` the teacher reading
English versions of the queries gives the ceiling. Scores are trec_eval's MAP@100, nDCG@10, R@100 and MRR@10
(through ``ir-measures``: ``pip install 'optical-st[ir]'``); the table is printed and written with ``results.json``::

    optical-st evaluate --model runs/swahili --beir data/my-clir               # corpus.jsonl, queries.jsonl, qrels/
    optical-st evaluate --model runs/swahili --topics topics.txt --qrels qrels.txt --corpus docs.jsonl
    optical-st evaluate --model my-org/optical-hausa --ir-datasets ciral/ha/test-a --direction en2lrl

The teacher's embeddings are cached (``--cache-dir``), so a second model on the same collection costs only its
queries. ``--update-card`` writes the model's scores into its folder's model card (``model-index``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from optical_st.cli._options import add_encoding_options, add_model_option
from optical_st.evaluation.collection import (
    CollectionError,
    TestCollection,
    load_beir_folder,
    load_hub_collection,
    load_ir_datasets,
    load_trec_files,
)

__all__ = ["add_parser", "collection_from_args", "evaluate", "run"]

logger = logging.getLogger("optical_st.evaluate")

# the card's metric names for the table's columns
CARD_METRICS = {"MAP@100": "map@100", "nDCG@10": "ndcg@10", "R@100": "recall@100", "MRR@10": "mrr@10"}


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``optical-st`` sub-command set."""
    p = commands.add_parser(
        "evaluate",
        help="score a model on your CLIR test collection (BEIR, TREC, Hub, ir_datasets) next to its teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    add_model_option(p)
    data = p.add_argument_group("the test collection (one of)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--beir", metavar="FOLDER", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
    )
    source.add_argument(
        "--topics", metavar="FILE", help="TREC topics (<top> blocks, TSV or JSONL); with --qrels, --corpus"
    )
    source.add_argument("--hub-dataset", metavar="ID", help="a Hub dataset in the BEIR/MTEB layout")
    source.add_argument("--ir-datasets", metavar="ID", help="an ir_datasets id (needs optical-st[ir-datasets])")
    data.add_argument("--qrels", metavar="FILE", help="TREC qrels (qid 0 docid relevance) for --topics")
    data.add_argument("--corpus", metavar="FILE", help="the documents for --topics: JSONL (id, title, text) or TSV")
    data.add_argument("--topic-field", default="title", choices=("title", "desc", "narr"), help="<top> field read")
    data.add_argument("--split", default="test", help="the qrels split of --beir / --hub-dataset (default: test)")
    data.add_argument("--english-queries", metavar="FILE", help="English versions of the queries (same ids): ceiling")
    data.add_argument(
        "--direction",
        default="lrl2en",
        choices=("lrl2en", "en2lrl"),
        help="lrl2en: queries in your language, English documents; en2lrl: English queries (CIRAL's), the student "
        "reads the documents",
    )
    p.add_argument(
        "--teacher", default=None, help="a separate zero-shot baseline (default: the model's document route)"
    )
    add_encoding_options(
        p,
        dtype_help="auto: the corpus under bf16 autocast on CPUs with fast bf16 (AMX / AVX512-BF16), queries in "
        "float32; float32 turns it off, bfloat16 uses it for both",
        cache_help="encode the teacher's side again",
    )
    p.add_argument("--output-dir", default=None, help="where results.json / results.md go (default: eval-<collection>)")
    p.add_argument("--save-runs", action="store_true", help="also write each system's top 100 as a TREC run file")
    p.add_argument("--update-card", action="store_true", help="add the model's scores to its folder's README.md")
    return p


def run(args: argparse.Namespace) -> int:
    """``optical-st evaluate``; returns the exit status (0 done, 2 bad input)."""
    try:
        evaluate(args)
    except (CollectionError, ImportError) as error:
        print(f"optical-st evaluate: error: {error}", file=sys.stderr)
        return 2
    return 0


def collection_from_args(args: argparse.Namespace) -> TestCollection:
    """The test collection the arguments name, read and checked."""
    english = getattr(args, "english_queries", None)
    if args.topics:
        if not (args.qrels and args.corpus):
            raise CollectionError("--topics needs --qrels FILE and --corpus FILE (the judgements and the documents).")
        return load_trec_files(
            args.topics, args.qrels, args.corpus, topic_field=args.topic_field, english_queries=english
        )
    if args.qrels or args.corpus:
        raise CollectionError("--qrels and --corpus go with --topics; a BEIR folder or a dataset holds its own.")
    if args.beir:
        return load_beir_folder(args.beir, split=args.split, english_queries=english)
    if args.hub_dataset:
        return load_hub_collection(args.hub_dataset, split=args.split, english_queries=english)
    return load_ir_datasets(args.ir_datasets, english_queries=english)


def _check_args(args: argparse.Namespace) -> None:
    """What can be told wrong before the collection and the model are read."""
    if args.update_card and not (Path(args.model) / "README.md").is_file():
        raise CollectionError(
            f"--update-card writes the card of a local model folder; {args.model} has no README.md. Save the model to "
            "a folder first (model.save_pretrained(...)) and pass that folder."
        )
    if args.direction == "en2lrl" and args.english_queries:
        raise CollectionError("--english-queries gives the ceiling of queries in your language; en2lrl's are English.")
    try:
        import ir_measures  # noqa: F401
    except ImportError as error:
        raise ImportError("optical-st evaluate scores with ir-measures: pip install 'optical-st[ir]'.") from error


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``optical-st evaluate`` with parsed arguments; returns what it wrote to ``results.json``."""
    from sentence_transformers import SentenceTransformer

    from optical_st.evaluation import EmbeddingCache
    from optical_st.evaluation.clir import evaluate_collection, write_trec_run
    from optical_st.inference import resolve_compute_dtype
    from optical_st.modeling import load_optical_model

    start = time.perf_counter()
    _check_args(args)
    collection = collection_from_args(args)
    logger.info("%r", collection)
    model = load_optical_model(args.model)
    teacher = SentenceTransformer(args.teacher, device=str(model.device)) if args.teacher else None
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir)
    results = evaluate_collection(
        model, collection, teacher=teacher, compute_dtype=args.compute_dtype, cache=cache, direction=args.direction,
        batch_size=args.batch_size, show_progress_bar=True,
    )  # fmt: skip
    out = Path(args.output_dir or f"eval-{collection.name}")
    record = {
        "model": args.model,
        "teacher": args.teacher or ("the model's document route" if "teacher" in results else None),
        "collection": _describe(collection),
        "direction": args.direction,
        "compute_dtype": {side: resolve_compute_dtype(args.compute_dtype, model.device, side)
                          for side in ("corpus", "queries")},
        "systems": {name: {"description": r.description, "metrics": r.metrics, "query_seconds": r.query_seconds}
                    for name, r in results.items()},
        "table": _table(results),
        "total_seconds": time.perf_counter() - start,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    if args.save_runs:
        record["runs"] = {
            name: str(write_trec_run(r.run, out / f"run.{name}.trec", name)) for name, r in results.items()
        }
    if args.update_card:
        record["card"] = str(_update_card(args.model, collection, results["model"].metrics))
    (out / "results.md").write_text(f"{record['table']}\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"\n{collection.name}: {record['collection']['judged_queries']} judged queries, "
          f"{record['collection']['documents']} documents (corpus {record['compute_dtype']['corpus']}).\n\n{record['table']}\n\n"
          f"Wrote {out / 'results.md'} and results.json.")  # fmt: skip
    return record


def _describe(collection: TestCollection) -> dict[str, Any]:
    return {
        "name": collection.name,
        "source": collection.source,
        "split": collection.split,
        "queries": len(collection.queries),
        "judged_queries": len(collection.judged_queries),
        "documents": len(collection.corpus),
        "judgements": sum(len(docs) for docs in collection.qrels.values()),
        "english_queries": collection.english_queries is not None,
    }


def _table(results: dict[str, Any]) -> str:
    from optical_st.evaluation.clir import METRICS

    header = ["system", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results.values():
        lines.append("| " + " | ".join([result.description, *(f"{result.metrics[m]:.4f}" for m in METRICS)]) + " |")
    return "\n".join(lines)


def _update_card(folder: str, collection: TestCollection, metrics: dict[str, float]) -> Path:
    from optical_st.hub import add_eval_results_to_card, eval_results_from_metrics

    results = eval_results_from_metrics(
        {CARD_METRICS[name]: value for name, value in metrics.items()},
        dataset_name=f"{collection.name} ({len(collection.judged_queries)} queries, {len(collection.corpus)} documents)",
        dataset_type=collection.source if _hub_id(collection.source) else collection.name,
        dataset_split=collection.split,
    )
    add_eval_results_to_card(folder, results)
    return Path(folder) / "README.md"


def _hub_id(source: str) -> bool:
    """Whether the collection came from a Hub dataset (its id names the dataset on the card)."""
    return source.count("/") == 1 and not Path(source).exists() and ":" not in source and "," not in source
