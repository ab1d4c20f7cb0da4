"""What a distillation loss checks of its inputs, and remembers having checked: a training dataset before training
(:meth:`InputChecks.check_dataset`), the columns and routes of every batch, the prompts and the column direction on
the first batch. The checks themselves are the functions of :mod:`optical_st.losses.checks`; this class holds which
ran already, so each runs once per loss (and a dataset once per fingerprint)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from optical_st import transport
from optical_st.losses import checks
from optical_st.losses._sides import Encoder
from optical_st.routes import LABEL_COLUMNS, column_routes, text_columns

__all__ = ["InputChecks", "check_finite", "check_no_empty_rows"]

logger = logging.getLogger(__name__)

# the loss's own check of one batch's columns: (features, labels) -> None or a ValueError
BatchCheck = Callable[[list[dict[str, Any]], Tensor | None], None]


def check_no_empty_rows(features: dict[str, Any], side: Encoder, name: str) -> None:
    """A ``ValueError`` naming the rows of a tokenized column that hold special tokens only (an empty string
    tokenizes to ``[CLS][SEP]``: nothing to align, whatever ``exclude_special_tokens`` says)."""
    content = features["attention_mask"].bool() & ~transport.special_tokens_mask(features["input_ids"], side.special_ids)
    empty = (content.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{name}: row(s) {empty[:10]} of the batch are empty or only special tokens. Drop empty texts first, "
            "e.g. `dataset.filter(lambda row: row['english'].strip() and row['lrl'].strip())`."
        )


class InputChecks:
    """The input checks of one loss named ``loss_name`` over (english, lrl, *negatives) columns, which its
    ``student`` reads (the second) and its ``teacher`` (the others). ``route_prompts``: the prompts the model's
    ``encode_query`` / ``encode_document`` add, by route (Router models), which training must add too."""

    def __init__(self, loss_name: str, student: Encoder, teacher: Encoder, route_prompts: dict[str, str]) -> None:
        self.loss_name = loss_name
        self.student = student
        self.teacher = teacher
        self.route_prompts = dict(route_prompts)
        self.checked_datasets: set[tuple[Any, ...]] = set()
        self.direction_checked = False  # the swapped-columns heuristic warns once per loss, not once per batch
        self.prompts_checked = False

    # ------------------------------------------------------------------------------------------------
    # every batch
    # ------------------------------------------------------------------------------------------------
    def check_labels_and_routes(self, features: list[dict[str, Any]], labels: Tensor | None) -> None:
        """No label column, and in Router mode (english, lrl, *negatives) routed to (teacher, student, *teacher)."""
        if labels is not None:
            raise ValueError(
                f"{self.loss_name} takes no labels, but the dataset has a label/score column; remove it with "
                "`dataset.remove_columns(...)`."
            )
        if self.teacher.route is None:
            return
        expected = (self.teacher.route, self.student.route) + (self.teacher.route,) * (len(features) - 2)
        got = tuple(f.get("task") for f in features)
        if got != expected:
            raise ValueError(
                f"The columns were routed to {got}, expected {expected} (english -> teacher, lrl -> student, "
                "negatives -> teacher). Set `router_mapping=optical_st.router_mapping(train_dataset)` in "
                "SentenceTransformerTrainingArguments (english column first, lrl second)."
            )

    def check_first_batch(self, features: list[dict[str, Any]]) -> None:
        """Once: the prompts check (:meth:`check_prompts`), and the direction check for datasets that
        :meth:`check_dataset` never saw (a stream, a trainer built for another model object than the loss's),
        decoding one batch."""
        self.check_prompts(features)
        if self.direction_checked or len(features) < 2:
            return
        texts = []
        for feature, side in zip(features[:2], (self.teacher, self.student), strict=True):
            if side.tokenizer is None or "input_ids" not in feature:
                self.direction_checked = True
                return
            texts.append(side.tokenizer.batch_decode(feature["input_ids"].tolist(), skip_special_tokens=True))
        self.warn_if_swapped(texts[0], texts[1], "first training batch")

    def check_prompts(self, features: list[dict[str, Any]]) -> None:
        """Once: in Router mode, a model whose ``encode_query`` / ``encode_document`` add prompts (multilingual-e5's
        ``query: `` / ``passage: ``) must see them in training too, or the student learns on texts it never reads at
        search time. The collator marks prompted columns with ``prompt_length``."""
        if self.prompts_checked:
            return
        self.prompts_checked = True
        prompts = self.route_prompts
        missing = sorted(
            {f["task"] for f in features if prompts.get(f.get("task")) and "prompt_length" not in f}, reverse=True
        )
        if missing:
            wanted = ", ".join(f"{route} {prompts[route]!r}" for route in missing)
            raise ValueError(
                f"{self.loss_name}: the model adds prompts at search time ({wanted}) but the training batch has "
                "none on the columns of those routes, so the student would learn on texts it never reads. Train with "
                "`prompts=optical_st.column_prompts(model, train_dataset)` in SentenceTransformerTrainingArguments "
                "(optical_st.recipe.RECOMMENDED.training_args adds them), or clear the model's prompts "
                "(`model.prompts = {}`) to train and search without them."
            )

    # ------------------------------------------------------------------------------------------------
    # a training dataset, before training
    # ------------------------------------------------------------------------------------------------
    def check_dataset(
        self, dataset: Any, router_mapping: dict[str, Any] | None, name: str, check_batch: BatchCheck
    ) -> None:
        """See :meth:`TeacherStudentMixin.check_dataset`; ``check_batch`` is the loss's own check of a batch's
        columns, run on the columns' routes alone."""
        from datasets import Dataset, DatasetDict

        if isinstance(dataset, (dict, DatasetDict)):
            for split, part in dataset.items():
                self.check_dataset(part, column_routes(router_mapping, split), f"{name}[{split!r}]", check_batch)
            return
        mapping = column_routes(router_mapping)  # a per-dataset mapping routes nothing of a single Dataset
        if not isinstance(dataset, Dataset):
            # IterableDataset: one pass would consume it, so only what its features tell (types, columns, routes)
            if getattr(dataset, "column_names", None):
                self._check_columns(dataset, mapping, name, check_batch)
            return
        if len(dataset) == 0:  # torch would stop with "num_samples=0" when training starts
            raise ValueError(f"{name} is empty (0 rows): nothing to train on. Check the filters that built it.")
        error = checks.transform_error(dataset, name)  # before the memo: a transform does not change the fingerprint
        if error is not None:
            raise error
        key = (getattr(dataset, "_fingerprint", None) or id(dataset), tuple(sorted(mapping.items())))
        if key in self.checked_datasets:
            return
        columns = self._check_columns(dataset, mapping, name, check_batch)
        # (english, lrl, *negatives): the student reads the second column, the teacher the others
        sides = [self.student if i == 1 else self.teacher for i in range(len(columns))]
        readers = [
            checks.TextColumn(column, side.tokenizer, side.special_set)
            for column, side in zip(columns, sides, strict=True)
        ]
        bad = checks.find_bad_rows(dataset, readers)
        if bad:
            raise checks.bad_rows_error(bad, name, columns)
        rows = checks.sample_rows(len(dataset))
        sample = dataset.with_format(None).select(rows)
        self.warn_if_swapped(list(sample[columns[0]]), list(sample[columns[1]]), f"{name} columns {columns[:2]!r}")
        self.checked_datasets.add(key)

    def _check_columns(self, dataset: Any, mapping: dict[str, Any], name: str, check_batch: BatchCheck) -> list[str]:
        """The column checks (types, count, labels, routes) from the column names and features alone; returns the
        text columns."""
        columns = text_columns(dataset.column_names)
        error = checks.non_text_columns_error(dataset, columns, name)  # before the count: it names the column
        if error is not None:
            raise error
        labels = [c for c in dataset.column_names if c in LABEL_COLUMNS and c != "dataset_name"]
        # the checks of the first batch, now: same messages, before any training step
        check_batch([{"task": mapping.get(c)} for c in columns], torch.zeros(0) if labels else None)
        return columns

    def warn_if_swapped(self, english: list[str], lrl: list[str], where: str) -> None:
        """Once per loss: a heuristic, so a warning, and not one per batch."""
        if self.direction_checked:
            return
        self.direction_checked = True
        reason = checks.direction_evidence(english, lrl, self.teacher.tokenizer, self.teacher.special_set)
        if reason:
            logger.warning(
                f"{self.loss_name}: the columns look swapped ({where}): {reason}. The loss reads (english, lrl, "
                "*negatives): the first text column goes to the teacher, the second to the student. If the dataset "
                "is ordered (lrl, english), reorder it with `dataset.select_columns(['english', 'lrl'])` (and rebuild "
                "router_mapping=optical_st.router_mapping(dataset)); otherwise ignore this warning."
            )


def check_finite(loss_name: str, loss: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """``loss`` unchanged if every component is finite; else a ``ValueError`` instead of a NaN step (which would
    turn every student weight into NaN and blame the learning rate one step later)."""
    parts = loss if isinstance(loss, dict) else {"loss": loss}
    values = torch.stack([v.detach().float().sum() for v in parts.values()]).tolist()  # one host sync
    bad = {k: v for k, v in zip(parts, values, strict=True) if not math.isfinite(v)}
    if bad:
        raise ValueError(
            f"{loss_name} is not finite: {bad}. The inputs passed their checks, so the student produced "
            "non-finite embeddings or scores: it diverged (lower the learning rate, set max_grad_norm, train in "
            "bf16 or fp32 instead of fp16), or a custom cost / similarity_fct returned NaN or inf."
        )
    return loss
