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

from collections.abc import Callable, Iterable
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device
from torch import Tensor, nn

from optical_st import ot
from optical_st.modeling import same_tokenizer
from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE, find_router

__all__ = ["TeacherStudentMixin"]


class _Encoder:
    """One side of the distillation (student or teacher): how to run it and which token ids are special."""

    def __init__(self, run: Callable[[dict[str, Any]], dict[str, Tensor]], tokenizer: Any, route: str | None) -> None:
        self.run = run
        self.route = route
        # [UNK] stays: in LRL text it stands for real (unknown) words that must be aligned too
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.special_ids = sorted(special - {getattr(tokenizer, "unk_token_id", None)})


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

    def _init_teacher(self, model: SentenceTransformer, teacher: SentenceTransformer | None) -> None:
        name = type(self).__name__
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
            # a plain list, not a submodule: the teacher is already part of `model`
            self._teacher_modules = [teacher_route]
            # the unwrapped Router, called directly: under DDP only the student pass goes through the wrapper
            self._router = [router]
            self._student = _Encoder(
                self._run_student, _route_tokenizer(router.sub_modules[STUDENT_ROUTE]), STUDENT_ROUTE
            )
            self._teacher = _Encoder(self._run_router_teacher, _route_tokenizer(teacher_route), TEACHER_ROUTE)
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
        """The teacher side in eval mode without a graph (the teacher is never trained)."""
        self._set_teacher_eval()
        with torch.no_grad():
            return self._teacher.run(features)

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

    def _teacher_config(self) -> Any:
        return self.teacher if self.teacher is not None else f"{TEACHER_ROUTE!r} route of the model"
