"""Teacher/student plumbing shared by the distillation losses (:class:`~optical_st.OTDistillationLoss`,
:class:`~optical_st.ContrastiveDistillationLoss`).

Both losses accept the same two ways of supplying the frozen English teacher:

1. ``model`` is an OPTICAL Router model (:func:`optical_st.build_optical_model`): ``query`` route = student,
   ``document`` route = frozen teacher. The teacher route is called on the *unwrapped* Router, so under DDP only the
   student pass goes through the wrapper.
2. ``model`` is the student alone and ``teacher`` a separate ``SentenceTransformer`` with an identical tokenizer
   (the English column is tokenized by the student's tokenizer).

:class:`TeacherStudentMixin` holds that logic once: a loss mixes it in and calls :meth:`_init_teacher` from its
``__init__``; afterwards ``self._student.run(features)`` / ``self._teacher.run(features)`` run the two sides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device
from torch import Tensor, nn

from optical_st import ot
from optical_st.losses import checks
from optical_st.losses.teacher_cache import TeacherCache, weights_versions
from optical_st.modeling import column_prompts, same_tokenizer
from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE, find_router

__all__ = ["TeacherStudentMixin"]

logger = logging.getLogger(__name__)


class _Encoder:
    """One side of the distillation (student or teacher): how to run it and which token ids are special."""

    def __init__(self, run: Callable[[dict[str, Any]], dict[str, Tensor]], tokenizer: Any, route: str | None) -> None:
        self.run = run
        self.route = route
        self.tokenizer = tokenizer  # read by the dataset checks (optical_st.losses.checks)
        # [UNK] stays: in LRL text it stands for real (unknown) words that must be aligned too
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.special_ids = sorted(special - {getattr(tokenizer, "unk_token_id", None)})
        self.special_set = frozenset(self.special_ids)


def _route_tokenizer(modules: Iterable[nn.Module]) -> Any:
    for module in modules:
        if getattr(module, "tokenizer", None) is not None:
            return module.tokenizer
    return None


class TeacherStudentMixin:
    """Mixin for ``nn.Module`` losses with a frozen teacher; see the module docstring for the two teacher modes.

    After :meth:`_init_teacher`:

    * ``self.teacher``: the separate teacher (a registered submodule, so ``loss.to(device)`` moves it), or ``None``
      in Router mode (the teacher is then part of ``self.model``).
    * ``self._student`` / ``self._teacher``: :class:`_Encoder` objects (``run``, ``route``, ``special_ids``).
    """

    model: nn.Module
    teacher: SentenceTransformer | None
    # (query, document) positions among the text columns (english, lrl, *negatives): without a Router there is no
    # router_mapping to tell the sides apart, so hard-negative samplers read this to mine English negatives for the
    # LRL side (see optical_st.DynamicHardNegativeSampler)
    retrieval_columns = (1, 0)

    def _init_teacher(
        self,
        model: SentenceTransformer,
        teacher: SentenceTransformer | None,
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        name = type(self).__name__
        if teacher_cache is not None and not isinstance(teacher_cache, TeacherCache):
            raise ValueError(f"teacher_cache must be an optical_st.TeacherCache or None, got {type(teacher_cache)}.")
        # a plain attribute (not a submodule, not in the config): a speed-up that changes no result
        self.teacher_cache = teacher_cache
        router = find_router(model)
        if router is not None:
            if teacher is not None:
                raise ValueError(
                    "`model` is an OPTICAL Router model, which already holds the teacher as its "
                    f"{TEACHER_ROUTE!r} route; do not pass `teacher` as well."
                )
            missing = {STUDENT_ROUTE, TEACHER_ROUTE} - set(router.sub_modules)
            if missing:
                raise ValueError(f"The Router has no {sorted(missing)} route(s); build it with build_optical_model().")
            teacher_route = router.sub_modules[TEACHER_ROUTE]
            teacher_route.requires_grad_(False)  # also after reloading a saved model, whose params come back trainable
            self.teacher = None
            # a plain list, not a submodule: the teacher is already part of `model`. Module by module, so the
            # teacher cache's fingerprint reads each one's weights (an adapter model's document route: its base)
            self._teacher_modules = list(teacher_route)
            # the unwrapped Router, called directly: under DDP only the student pass goes through the wrapper
            self._router = [router]
            self._student = _Encoder(
                self._run_student, _route_tokenizer(router.sub_modules[STUDENT_ROUTE]), STUDENT_ROUTE
            )
            self._teacher = _Encoder(self._run_router_teacher, _route_tokenizer(teacher_route), TEACHER_ROUTE)
            # the prompts encode_query / encode_document add, which training must add too (_check_prompts)
            self._route_prompts = column_prompts(model, {STUDENT_ROUTE: STUDENT_ROUTE, TEACHER_ROUTE: TEACHER_ROUTE})
        else:
            if teacher is None:
                raise ValueError(
                    f"{name} needs a teacher: pass `teacher=` (a SentenceTransformer), or build the model "
                    "with optical_st.build_optical_model(teacher, student)."
                )
            if not same_tokenizer(model.tokenizer, teacher.tokenizer):
                raise ValueError(
                    "The teacher's tokenizer differs from the student's, and the English column is tokenized by the "
                    "student's. Build the model with optical_st.build_optical_model(teacher, student) and train with "
                    "router_mapping=optical_st.router_mapping(train_dataset), so the teacher reads its own tokens."
                )
            self.teacher = teacher.eval().requires_grad_(False)  # a submodule: moves with loss.to(device)
            self._teacher_modules = [teacher]
            # capture tokenizers now: under DDP `self.model` is the wrapper, which has no `.tokenizer`
            self._student = _Encoder(self._run_student, model.tokenizer, None)
            self._teacher = _Encoder(self._run_separate_teacher, teacher.tokenizer, None)
        # bad rows, columns and routes stop SentenceTransformerTrainer(...), for every kind of model (checks.py)
        checks.check_when_trainer_is_built(model)

    def _run_student(self, features: dict[str, Any]) -> dict[str, Tensor]:
        return self.model(features)

    def _set_teacher_eval(self) -> None:
        # the trainer calls model.train() every step, which would switch on the teacher's dropout
        for module in self._teacher_modules:
            module.eval()

    def _run_router_teacher(self, features: dict[str, Any]) -> dict[str, Tensor]:
        return self._router[0](features)

    def _run_separate_teacher(self, features: dict[str, Any]) -> dict[str, Tensor]:
        device = next(self.teacher.parameters()).device
        return self.teacher(batch_to_device(dict(features), device))

    def _run_teacher_frozen(self, features: dict[str, Any]) -> dict[str, Tensor]:
        """The teacher side in eval mode without a graph (the teacher is never trained); through
        ``self.teacher_cache`` when there is one."""
        self._set_teacher_eval()
        cache = self.__dict__.get("teacher_cache")
        with torch.no_grad():
            if cache is None:
                return self._teacher.run(features)
            # the weights' fingerprint is compared with the cache's whenever PyTorch saw them change (or the cache
            # is new to this loss): load_state_dict, optimizer steps, in-place ops bump the version counters
            versions = weights_versions(self._teacher_modules)
            bound = self.__dict__.get("_cache_bound")
            if bound is None or bound[0] is not cache or bound[1] != versions:
                cache.bind(self._teacher_modules)
                self._cache_bound = (cache, versions)
            return cache.run(features, self._teacher.run)

    def _check_labels_and_routes(self, features: list[dict[str, Any]], labels: Tensor | None) -> None:
        """The input checks both losses share: no label column, and in Router mode (english, lrl, *negatives)
        routed to (teacher, student, *teacher)."""
        if labels is not None:
            raise ValueError(
                f"{type(self).__name__} takes no labels, but the dataset has a label/score column; remove it with "
                "`dataset.remove_columns(...)`."
            )
        if self._teacher.route is None:
            return
        expected = (self._teacher.route, self._student.route) + (self._teacher.route,) * (len(features) - 2)
        got = tuple(f.get("task") for f in features)
        if got != expected:
            raise ValueError(
                f"The columns were routed to {got}, expected {expected} (english -> teacher, lrl -> student, "
                "negatives -> teacher). Set `router_mapping=optical_st.router_mapping(train_dataset)` in "
                "SentenceTransformerTrainingArguments (english column first, lrl second)."
            )

    def _empty_rows_check(self, features: dict[str, Any], side: _Encoder, name: str) -> None:
        # an empty string tokenizes to [CLS][SEP]: nothing to align, whatever exclude_special_tokens says
        content = features["attention_mask"].bool() & ~ot.special_tokens_mask(features["input_ids"], side.special_ids)
        empty = (content.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"{name}: row(s) {empty[:10]} of the batch are empty or only special tokens. Drop empty texts first, "
                "e.g. `dataset.filter(lambda row: row['english'].strip() and row['lrl'].strip())`."
            )

    # ------------------------------------------------------------------------------------------------
    # checks before training (optical_st.check_bitext) and on the returned loss
    # ------------------------------------------------------------------------------------------------
    def check_dataset(
        self, dataset: Any, router_mapping: dict[str, Any] | None = None, name: str = "train_dataset"
    ) -> None:
        """Check a training dataset before training: see :func:`optical_st.check_bitext`.

        Certain problems raise a ``ValueError`` (bad rows named by dataset row and column, label columns, column
        count, routes against the column order); swapped-looking columns log one warning. A dataset already checked
        (same fingerprint and mapping) is not read again.
        """
        from datasets import Dataset, DatasetDict

        if isinstance(dataset, (dict, DatasetDict)):
            for split, part in dataset.items():
                nested = (
                    router_mapping.get(split)
                    if router_mapping and isinstance(router_mapping.get(split), dict)
                    else None
                )
                self.check_dataset(part, nested if nested is not None else router_mapping, f"{name}[{split!r}]")
            return
        mapping = dict(router_mapping or {})
        if mapping and isinstance(next(iter(mapping.values())), dict):
            mapping = {}  # a per-dataset mapping routes nothing of a single Dataset (as in the trainer's collator)
        if not isinstance(dataset, Dataset):
            # IterableDataset: one pass would consume it, so only what its features tell (types, columns, routes)
            if getattr(dataset, "column_names", None):
                self._check_columns(dataset, mapping, name)
            return
        if len(dataset) == 0:  # torch would stop with "num_samples=0" when training starts
            raise ValueError(f"{name} is empty (0 rows): nothing to train on. Check the filters that built it.")
        error = checks.transform_error(dataset, name)  # before the memo: a transform does not change the fingerprint
        if error is not None:
            raise error
        key = (getattr(dataset, "_fingerprint", None) or id(dataset), tuple(sorted(mapping.items())))
        checked = self.__dict__.setdefault("_checked_datasets", set())
        if key in checked:
            return
        columns = self._check_columns(dataset, mapping, name)
        # (english, lrl, *negatives): the student reads the second column, the teacher the others
        sides = [self._student if i == 1 else self._teacher for i in range(len(columns))]
        text_columns = [
            checks.TextColumn(column, side.tokenizer, side.special_set)
            for column, side in zip(columns, sides, strict=True)
        ]
        bad = checks.find_bad_rows(dataset, text_columns)
        if bad:
            raise checks.bad_rows_error(bad, name, columns)
        rows = checks.sample_rows(len(dataset))
        sample = dataset.with_format(None).select(rows)
        self._warn_if_swapped(list(sample[columns[0]]), list(sample[columns[1]]), f"{name} columns {columns[:2]!r}")
        checked.add(key)

    def _check_columns(self, dataset: Any, mapping: dict[str, Any], name: str) -> list[str]:
        """The column checks (types, count, labels, routes) from the column names and features alone; returns the
        text columns."""
        columns = checks.text_columns(dataset.column_names)
        error = checks.non_text_columns_error(dataset, columns, name)  # before the count: it names the column
        if error is not None:
            raise error
        labels = [c for c in dataset.column_names if c in checks.LABEL_COLUMNS and c != "dataset_name"]
        # the checks of the first batch, now: same messages, before any training step
        self._check_inputs([{"task": mapping.get(c)} for c in columns], torch.zeros(0) if labels else None)
        return columns

    def _warn_if_swapped(self, english: list[str], lrl: list[str], where: str) -> None:
        # once per loss: a heuristic, so a warning, and not one per batch
        if self.__dict__.get("_direction_checked"):
            return
        self._direction_checked = True
        reason = checks.direction_evidence(english, lrl, self._teacher.tokenizer, self._teacher.special_set)
        if reason:
            logger.warning(
                f"{type(self).__name__}: the columns look swapped ({where}): {reason}. The loss reads (english, lrl, "
                "*negatives): the first text column goes to the teacher, the second to the student. If the dataset "
                "is ordered (lrl, english), reorder it with `dataset.select_columns(['english', 'lrl'])` (and rebuild "
                "router_mapping=optical_st.router_mapping(dataset)); otherwise ignore this warning."
            )

    def _check_prompts(self, features: list[dict[str, Any]]) -> None:
        """Once: in Router mode, a model whose ``encode_query`` / ``encode_document`` add prompts (multilingual-e5's
        ``query: `` / ``passage: ``) must see them in training too, or the student learns on texts it never reads at
        search time. The collator marks prompted columns with ``prompt_length``."""
        if self.__dict__.get("_prompts_checked"):
            return
        self._prompts_checked = True
        prompts = self.__dict__.get("_route_prompts") or {}
        missing = sorted(
            {f["task"] for f in features if prompts.get(f.get("task")) and "prompt_length" not in f}, reverse=True
        )
        if missing:
            wanted = ", ".join(f"{route} {prompts[route]!r}" for route in missing)
            raise ValueError(
                f"{type(self).__name__}: the model adds prompts at search time ({wanted}) but the training batch has "
                "none on the columns of those routes, so the student would learn on texts it never reads. Train with "
                "`prompts=optical_st.column_prompts(model, train_dataset)` in SentenceTransformerTrainingArguments "
                "(optical_st.recipe.RECOMMENDED.training_args adds them), or clear the model's prompts "
                "(`model.prompts = {}`) to train and search without them."
            )

    def _first_batch_check(self, features: list[dict[str, Any]]) -> None:
        """The direction check on the first batch, for datasets that :meth:`check_dataset` never saw (a stream, a
        trainer built for another model object than the loss's): decodes one batch, once. Also the
        prompts check (:meth:`_check_prompts`)."""
        self._check_prompts(features)
        if self.__dict__.get("_direction_checked") or len(features) < 2:
            return
        texts = []
        for feature, side in zip(features[:2], (self._teacher, self._student), strict=True):
            if side.tokenizer is None or "input_ids" not in feature:
                self._direction_checked = True
                return
            texts.append(side.tokenizer.batch_decode(feature["input_ids"].tolist(), skip_special_tokens=True))
        self._warn_if_swapped(texts[0], texts[1], "first training batch")

    def _finite(self, loss: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """``loss`` unchanged if every component is finite; else a ``ValueError`` instead of a NaN step (which would
        turn every student weight into NaN and blame the learning rate one step later)."""
        parts = loss if isinstance(loss, dict) else {"loss": loss}
        values = torch.stack([v.detach().float().sum() for v in parts.values()]).tolist()  # one host sync
        bad = {k: v for k, v in zip(parts, values, strict=True) if not math.isfinite(v)}
        if bad:
            raise ValueError(
                f"{type(self).__name__} is not finite: {bad}. The inputs passed their checks, so the student produced "
                "non-finite embeddings or scores: it diverged (lower the learning rate, set max_grad_norm, train in "
                "bf16 or fp32 instead of fp16), or a custom cost / similarity_fct returned NaN or inf."
            )
        return loss

    def _teacher_config(self) -> Any:
        return self.teacher if self.teacher is not None else f"{TEACHER_ROUTE!r} route of the model"
