"""Checks of a training dataset against the loss that will read it, run once before training: rows that would fail
hours in (:func:`find_bad_rows`, whose home is :mod:`optical_st.data.rows`, shared with the ``optical-st train``
command) and bitext read in the wrong direction (:func:`direction_evidence`).

The losses call these from ``check_dataset`` (see :func:`check_bitext`); :class:`optical_st.OpticalTrainer` runs them
on the datasets it is given when it is built (:func:`run_dataset_checks`). Pure Python and tokenizers: no model is
run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from optical_st.data.rows import TextColumn, bad_rows_message, find_bad_rows
from optical_st.routes import column_routes

__all__ = [
    "TextColumn",
    "bad_rows_error",
    "check_bitext",
    "direction_evidence",
    "find_bad_rows",
    "non_text_columns_error",
    "run_dataset_checks",
    "transform_error",
]

# rows of the direction check: enough for stable word statistics, cheap to tokenize
DIRECTION_SAMPLE = 256
# frequent English function words, none a common word of the low-resource languages the project targets
# ("a", "i", "at", "na" ... left out: they are also words in Tagalog, Swahili, Chichewa)
ENGLISH_FUNCTION_WORDS = frozenset(
    [
        "the",
        "and",
        "of",
        "to",
        "is",
        "was",
        "that",
        "for",
        "with",
        "his",
        "he",
        "they",
        "them",
        "this",
        "which",
        "from",
        "have",
        "has",
        "not",
        "but",
        "are",
        "were",
        "be",
        "by",
        "you",
        "your",
        "it",
        "its",
        "in",
        "on",
        "will",
        "shall",
        "who",
        "what",
        "when",
        "there",
        "their",
        "her",
        "she",
        "him",
        "me",
        "my",
        "we",
        "our",
        "us",
        "an",
        "as",
        "or",
        "unto",
        "all",
        "said",
        "if",
    ]
)
_TOKEN = re.compile(r"[^\W\d_]+")  # letters only: words for the function-word share


def check_bitext(dataset: Any, loss: Any, *, router_mapping: dict[str, Any] | None = None) -> None:
    """Check a training dataset against the loss that will train on it, before training starts.

    Raises a ``ValueError`` naming the dataset row and column (and the fix) for what would stop training later:
    ``None``, non-string, empty or whitespace-only texts, texts that tokenize to special tokens only, label columns,
    the wrong number of columns, or a ``router_mapping`` that routes the columns against their order (``english``
    first, to the teacher; ``lrl`` second, to the student). Logs one warning when the columns look swapped (the
    student side reads like English to the teacher's tokenizer; see :func:`direction_evidence`).

    Runs by itself when an :class:`optical_st.OpticalTrainer` is built, for every kind of model (a Router model, a
    plain student with ``teacher=``, a reloaded model); call it yourself to check a dataset before any trainer (a
    plain ``SentenceTransformerTrainer`` runs no dataset check). Also raises for an empty dataset, a column that is
    not text (e.g. an integer ``id``) and a ``set_transform`` that changes the columns the trainer will read.

    Args:
        dataset: a ``datasets.Dataset`` or ``DatasetDict`` (every split is checked); an ``IterableDataset`` is
            checked from its features only (reading it ahead would consume it): column types, count and routes.
        loss: an :class:`~optical_st.OTDistillationLoss` or :class:`~optical_st.ContrastiveDistillationLoss`.
        router_mapping: the ``router_mapping`` of the training arguments (Router models).
    """
    check = getattr(loss, "check_dataset", None)
    if check is None:
        raise TypeError(f"{type(loss).__name__} has no check_dataset(); pass an optical_st loss.")
    check(dataset, router_mapping=router_mapping)


def run_dataset_checks(
    dataset: Any, loss: Any, dataset_type: str = "train", router_mapping: dict[str, Any] | None = None
) -> None:
    """``loss.check_dataset`` on the dataset a trainer was given (each split of a ``DatasetDict``, with its own loss
    when ``loss`` is a dict); a loss without ``check_dataset`` (a stock sentence-transformers loss) is skipped."""
    name = f"{dataset_type}_dataset"
    if isinstance(loss, Mapping):  # one loss per dataset of a DatasetDict
        for key, part_loss in loss.items():
            if isinstance(dataset, Mapping) and key in dataset and hasattr(part_loss, "check_dataset"):
                mapping = column_routes(router_mapping, key)  # flat, or this dataset's entry of a per-dataset one
                part_loss.check_dataset(dataset[key], router_mapping=mapping, name=f"{name}[{key!r}]")
    elif hasattr(loss, "check_dataset"):
        loss.check_dataset(dataset, router_mapping=router_mapping, name=name)


def _feature_dtype(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    return dtype if isinstance(dtype, str) else type(feature).__name__


def non_text_columns_error(dataset: Any, columns: Sequence[str], dataset_name: str) -> ValueError | None:
    """A ``ValueError`` naming the columns among ``columns`` whose feature type is not text (e.g. an integer ``id``,
    a list column), with ``remove_columns([...])``; ``None`` when they are all text or the types are unknown."""
    features = getattr(dataset, "features", None)
    if not features:
        return None
    # "null": a column of None only, which the row check names row by row
    wrong = [
        (c, _feature_dtype(features[c]))
        for c in columns
        if c in features and _feature_dtype(features[c]) not in ("string", "large_string", "null")
    ]
    if not wrong:
        return None
    described = ", ".join(f"column {c!r} is not text ({dtype})" for c, dtype in wrong)
    names = [c for c, _ in wrong]
    return ValueError(
        f"{dataset_name}: {described}. The loss reads every column except label/score columns as a text column "
        f"(english, lrl, then English negatives), so it would try to train on it. Drop it before training: "
        f"`{dataset_name} = {dataset_name}.remove_columns({names!r})`."
    )


def transform_error(dataset: Any, dataset_name: str) -> ValueError | None:
    """A ``ValueError`` when ``dataset`` carries a ``set_transform`` whose rows have other columns than
    ``dataset.column_names`` (the trainer reads the transform's rows; the checks read the columns), naming the
    transform and where it came from; ``None`` otherwise. Reads one row."""
    fmt = getattr(dataset, "format", None) or {}
    if fmt.get("type") != "custom" or len(dataset) == 0:
        return None
    transform = (fmt.get("format_kwargs") or {}).get("transform")
    row_columns = list(dataset[0])
    listed = list(dataset.column_names)
    if sorted(row_columns) == sorted(listed):
        return None
    added = [c for c in row_columns if c not in listed]
    removed = [c for c in listed if c not in row_columns]
    change = " and ".join([f"adds {added}"] * bool(added) + [f"drops {removed}"] * bool(removed))
    who = getattr(transform, "origin", None) or f"{getattr(transform, '__qualname__', type(transform).__name__)}"
    return ValueError(
        f"{dataset_name} carries a transform ({who}) that {change}: its column_names say {listed}, but the trainer "
        f"would read rows with {row_columns}. Remove it with `{dataset_name}.reset_format()` (or apply it for good "
        "with `.map(...)` and check the result)."
    )


def bad_rows_error(bad: list[tuple[int, str, str]], dataset_name: str, columns: Sequence[str]) -> ValueError:
    """The error for :func:`find_bad_rows`' findings, in its one wording, with the rows and the filter that drops
    them."""
    rows = sorted({row for row, _, _ in bad})
    shown = rows if len(rows) <= 20 else [*rows[:20], "..."]
    fix = (
        f"`{dataset_name} = {dataset_name}.filter(lambda row: all(isinstance(row[c], str) and re.search(r'\\w', "
        f"row[c]) for c in {list(columns)!r}))`"
    )
    if len(rows) <= 20:
        fix += f", or by row: `.filter(lambda row, i: i not in {set(rows)!r}, with_indices=True)`"
    return ValueError(
        f"{bad_rows_message(bad, dataset_name)} Rows: {shown}. Every text must be a string with at least one token "
        f"that is not special. Drop them before training, e.g. {fix}."
    )


def _word_stats(texts: list[str], tokenizer: Any, special_ids: frozenset[int]) -> dict[str, float]:
    words = [w.lower() for text in texts for w in _TOKEN.findall(text)]
    stats = {"function_words": sum(w in ENGLISH_FUNCTION_WORDS for w in words) / max(len(words), 1)}
    if tokenizer is not None and texts:
        ids = [i for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in row]
        content = [i for i in ids if i not in special_ids]
        unk = getattr(tokenizer, "unk_token_id", None)
        n_words = sum(len(text.split()) for text in texts)
        stats["pieces_per_word"] = len(content) / max(n_words, 1)
        stats["unknown"] = sum(i == unk for i in content) / max(len(content), 1)
    return stats


def direction_evidence(
    english: list[str], lrl: list[str], teacher_tokenizer: Any, special_ids: frozenset[int] = frozenset()
) -> str | None:
    """Why the two columns look swapped, or ``None`` when they look right or nothing can be told.

    A heuristic on a sample of rows: English text is about 40% function words (``the``, ``and``, ``of``...), a
    low-resource language almost none; and the English teacher's tokenizer reads English with fewer pieces per word
    and fewer unknown pieces than a language it was not trained on. The columns look swapped when the student side
    (``lrl``) wins on one signal and the other does not contradict it.
    """
    en, lr = _word_stats(english, teacher_tokenizer, special_ids), _word_stats(lrl, teacher_tokenizer, special_ids)
    reasons: list[str] = []
    words_swapped = lr["function_words"] > 0.15 and en["function_words"] < lr["function_words"] / 3
    words_right = en["function_words"] > 0.15 and lr["function_words"] < en["function_words"] / 3
    tokens_swapped = tokens_right = False
    if "pieces_per_word" in en:
        tokens_swapped = en["pieces_per_word"] > 1.25 * lr["pieces_per_word"] or en["unknown"] > lr["unknown"] + 0.05
        tokens_right = lr["pieces_per_word"] > 1.25 * en["pieces_per_word"] or lr["unknown"] > en["unknown"] + 0.05
    if words_swapped and not tokens_right:
        reasons.append(
            f"English function words (the, and, of...) are {lr['function_words']:.0%} of the words of the student "
            f"column and {en['function_words']:.0%} of the teacher column's"
        )
    if tokens_swapped and not words_right:
        reasons.append(
            "the teacher's tokenizer reads the teacher column with "
            f"{en['pieces_per_word']:.2f} pieces per word ({en['unknown']:.0%} unknown) and the student column with "
            f"{lr['pieces_per_word']:.2f} ({lr['unknown']:.0%} unknown)"
        )
    return "; ".join(reasons) or None


def sample_rows(n: int, k: int = DIRECTION_SAMPLE) -> list[int]:
    """``k`` rows spread evenly over ``n`` (deterministic: the same warning on every rank and every run)."""
    step = max(n // k, 1)
    return list(range(0, n, step))[:k]
