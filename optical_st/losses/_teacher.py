"""Teacher/student plumbing shared by the distillation losses (:class:`~optical_st.OTDistillationLoss`,
:class:`~optical_st.ContrastiveDistillationLoss`).

Both losses accept the same two ways of supplying the frozen English teacher:

1. ``model`` is an OPTICAL Router model (:func:`optical_st.build_optical_model`): ``query`` route = student,
   ``document`` route = frozen teacher. The teacher route is called on the *unwrapped* Router, so under DDP only the
   student pass goes through the wrapper.
2. ``model`` is the student alone and ``teacher`` a separate ``SentenceTransformer`` with an identical tokenizer
   (the English column is tokenized by the student's tokenizer).

:class:`TeacherStudentMixin` wires that once: a loss mixes it in and calls :meth:`_init_teacher` from its
``__init__``; afterwards ``self._student.run(features)`` runs the student and ``self._teacher.frozen(features)`` the
frozen teacher (:mod:`optical_st.losses._sides`), and ``self.input_checks`` checks what they read and remembers what
it checked (:mod:`optical_st.losses._input_checks`).
"""

from __future__ import annotations

from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device
from torch import Tensor, nn

from optical_st.losses._input_checks import InputChecks
from optical_st.losses._sides import Encoder, FrozenTeacher, route_tokenizer
from optical_st.losses.teacher_cache import TeacherCache
from optical_st.modeling import column_prompts, same_tokenizer
from optical_st.routes import (
    STUDENT_ROUTE,
    TEACHER_ROUTE,
    find_router,
    freeze_teacher_route,
    model_routes,
    route_modules,
)

__all__ = ["TeacherStudentMixin"]


class TeacherStudentMixin:
    """Mixin for ``nn.Module`` losses with a frozen teacher; see the module docstring for the two teacher modes.

    After :meth:`_init_teacher`:

    * ``self.teacher``: the separate teacher (a registered submodule, so ``loss.to(device)`` moves it), or ``None``
      in Router mode (the teacher is then part of ``self.model``).
    * ``self._student`` (:class:`~optical_st.losses._sides.Encoder`) and ``self._teacher``
      (:class:`~optical_st.losses._sides.FrozenTeacher`): ``run``, ``route``, ``tokenizer``, ``special_ids``.
    * ``self.input_checks``: the :class:`~optical_st.losses._input_checks.InputChecks` of this loss (its
      ``every_batch`` switch runs the first batch's checks on every batch).
    * :attr:`teacher_cache`: read and set through the teacher side, which checks the value.
    """

    model: nn.Module
    teacher: SentenceTransformer | None
    _student: Encoder
    _teacher: FrozenTeacher
    input_checks: InputChecks
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
        router = find_router(model)
        if router is not None:
            self._init_router_sides(model, router, teacher)
            # the prompts encode_query / encode_document add, which training must add too (InputChecks.check_prompts)
            prompts = column_prompts(model, {STUDENT_ROUTE: STUDENT_ROUTE, TEACHER_ROUTE: TEACHER_ROUTE})
        else:
            self._init_separate_sides(model, teacher)
            prompts = {}
        # a speed-up that changes no result: not a submodule, not in the config; the setter checks it
        self.teacher_cache = teacher_cache
        self.input_checks = InputChecks(type(self).__name__, self._student, self._teacher, prompts)

    def _init_router_sides(self, model: SentenceTransformer, router: nn.Module, teacher: Any) -> None:
        """Router mode: the ``query`` route is the student, the ``document`` route the frozen teacher."""
        if teacher is not None:
            raise ValueError(
                "`model` is an OPTICAL Router model, which already holds the teacher as its "
                f"{TEACHER_ROUTE!r} route; do not pass `teacher` as well."
            )
        missing = {STUDENT_ROUTE, TEACHER_ROUTE} - set(model_routes(model))
        if missing:
            raise ValueError(f"The Router has no {sorted(missing)} route(s); build it with build_optical_model().")
        # frozen also after reloading a saved model, whose parameters come back trainable; module by module, so the
        # teacher cache's fingerprint reads each one's weights (an adapter model's document route: its base)
        teacher_modules = freeze_teacher_route(model)
        self.teacher = None
        self._student = Encoder(self._run_student, route_tokenizer(route_modules(model, STUDENT_ROUTE)), STUDENT_ROUTE)
        # the unwrapped Router, called directly: under DDP only the student pass goes through the wrapper
        self._teacher = FrozenTeacher(router, route_tokenizer(teacher_modules), TEACHER_ROUTE, teacher_modules)

    def _init_separate_sides(self, model: SentenceTransformer, teacher: SentenceTransformer | None) -> None:
        """Separate mode: ``model`` is the student, ``teacher`` a SentenceTransformer with the same tokenizer."""
        if teacher is None:
            raise ValueError(
                f"{type(self).__name__} needs a teacher: pass `teacher=` (a SentenceTransformer), or build the model "
                "with optical_st.build_optical_model(teacher, student)."
            )
        if not same_tokenizer(model.tokenizer, teacher.tokenizer):
            raise ValueError(
                "The teacher's tokenizer differs from the student's, and the English column is tokenized by the "
                "student's. Build the model with optical_st.build_optical_model(teacher, student) and train with "
                "router_mapping=optical_st.router_mapping(train_dataset), so the teacher reads its own tokens."
            )
        self.teacher = teacher.eval().requires_grad_(False)  # a submodule: moves with loss.to(device)
        # capture tokenizers now: under DDP `self.model` is the wrapper, which has no `.tokenizer`
        self._student = Encoder(self._run_student, model.tokenizer, None)
        self._teacher = FrozenTeacher(self._run_separate_teacher, teacher.tokenizer, None, [teacher])

    @property
    def teacher_cache(self) -> TeacherCache | None:
        """The :class:`~optical_st.TeacherCache` the teacher's outputs are read from, or ``None``. Assigning it
        (``loss.teacher_cache = cache``) checks the value as the constructor does."""
        return self._teacher.cache

    @teacher_cache.setter
    def teacher_cache(self, cache: TeacherCache | None) -> None:
        self._teacher.cache = cache

    def _run_student(self, features: dict[str, Any]) -> dict[str, Tensor]:
        return self.model(features)

    def _run_separate_teacher(self, features: dict[str, Any]) -> dict[str, Tensor]:
        device = next(self.teacher.parameters()).device
        return self.teacher(batch_to_device(dict(features), device))

    def check_dataset(
        self, dataset: Any, router_mapping: dict[str, Any] | None = None, name: str = "train_dataset"
    ) -> None:
        """Check a training dataset before training: see :func:`optical_st.check_bitext`.

        Certain problems raise a ``ValueError`` (bad rows named by dataset row and column, label columns, column
        count, routes against the column order); swapped-looking columns log one warning. A dataset already checked
        (same fingerprint and mapping) is not read again.
        """
        self.input_checks.check_dataset(dataset, router_mapping, name, self._check_inputs)

    def _check_inputs(self, features: list[dict[str, Any]], labels: Tensor | None) -> None:
        """The loss's own check of a batch's columns (count, labels, routes); the losses define it."""
        raise NotImplementedError

    def _teacher_config(self) -> Any:
        return self.teacher if self.teacher is not None else f"{TEACHER_ROUTE!r} route of the model"
