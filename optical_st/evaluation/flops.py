"""Training FLOPs, measured with ``torch.utils.flop_counter.FlopCounterMode``.

What is counted
    ``FlopCounterMode`` counts the matmul family (``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions and
    scaled-dot-product attention, forward and backward, with exact shape formulas (2 FLOPs per multiply-add).
    Its registry has no entry for the CPU attention kernel (``_scaled_dot_product_flash_attention_for_cpu`` and its
    backward), which BERT-style encoders hit on CPU; :data:`EXTRA_FLOP_FORMULAS` adds them with torch's own SDPA
    formulas, so CPU and GPU counts agree (tested against the eager attention path).

What is not counted
    Elementwise and reduction ops: embeddings, layer norms, GELU, softmax, dropout, pooling, normalisation, the
    optimizer update, and in the OT loss the ``exp``/``logsumexp`` work of Sinkhorn (only its matrix-vector scaling
    iterations are ``bmm`` and counted). For encoders these ops are a few percent of the matmuls; for Sinkhorn they are
    most of the work, so :func:`sinkhorn_elementwise_flops` gives an **analytic estimate** of it, reported separately
    (``ot_elementwise_analytic``), never mixed into the measured numbers.

Phases
    :class:`PhaseFlopCounter` splits the count into ``student_forward``, ``teacher_forward`` (forward passes of the
    registered modules), ``backward`` (all of autograd's backward: the student and the loss), ``loss`` (forward ops
    outside the encoders: OT cost matrix and Sinkhorn matvecs, or the contrastive similarity matrix) and forced phases
    such as ``mining`` (hard-negative re-encoding, see :meth:`FlopsCallback.counting`).

:class:`FlopsCallback` measures training steps under the counter (every ``every_n_steps``-th step, default 10: the
counter slows the steps it measures down: docs/research.md) and extrapolates to the whole run; mining and other one-off
costs are summed exactly over every call.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from transformers import TrainerCallback

from optical_st.phases import observe_phases
from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE, find_router
from optical_st.transport import SinkhornLog

__all__ = [
    "EXTRA_FLOP_FORMULAS",
    "FlopReport",
    "FlopsCallback",
    "PhaseFlopCounter",
    "count_flops",
    "encoder_phases",
    "sinkhorn_elementwise_flops",
]


def _cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(
    grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's own SDPA formulas for the CPU kernels its registry lacks (shape-based: FlopCounterMode wraps them)
_aten = torch.ops.aten
EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {}
if hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu"):
    EXTRA_FLOP_FORMULAS[_aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
    EXTRA_FLOP_FORMULAS[_aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flop


def _in_backward() -> bool:
    # -1 outside autograd's engine; inside backward it is the id of the running graph task
    return torch._C._current_graph_task_id() != -1


class PhaseFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` that also attributes every counted op to a phase.

    Args:
        phases: phase name -> modules whose *forward* ops belong to it (e.g. ``{"student_forward": [...],
            "teacher_forward": [...]}``). Ops in autograd's backward go to ``"backward"``, other forward ops to
            ``"loss"``.
        custom_mapping: extra op -> FLOP formula entries (added to :data:`EXTRA_FLOP_FORMULAS`).

    After the context exits, :attr:`phase_flops` holds ``{phase: flops}`` and ``get_total_flops()`` the total.

    Example::

        >>> with PhaseFlopCounter({"student_forward": [student]}) as counter:  # doctest: +SKIP
        ...     loss(features).backward()
        >>> counter.phase_flops  # doctest: +SKIP
        {'student_forward': ..., 'backward': ..., 'loss': ...}
    """

    def __init__(
        self,
        phases: dict[str, Iterable[nn.Module]] | None = None,
        *,
        custom_mapping: dict[Any, Callable[..., int]] | None = None,
    ) -> None:
        super().__init__(display=False, custom_mapping={**EXTRA_FLOP_FORMULAS, **(custom_mapping or {})})
        self.phases = {name: list(modules) for name, modules in (phases or {}).items()}
        self.phase_flops: dict[str, int] = defaultdict(int)
        self._module_stack: list[str] = []
        self._forced: list[str] = []
        self._handles: list[Any] = []

    @contextlib.contextmanager
    def force_phase(self, name: str) -> Iterator[None]:
        """Attribute everything inside the block to ``name`` (e.g. ``"mining"``), whatever modules run."""
        self._forced.append(name)
        try:
            yield
        finally:
            self._forced.pop()

    def __enter__(self) -> PhaseFlopCounter:
        self.phase_flops = defaultdict(int)
        for name, modules in self.phases.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(functools.partial(self._push, name)))
                self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        super().__enter__()
        return self

    def __exit__(self, *args: Any) -> Any:
        try:
            return super().__exit__(*args)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._module_stack.clear()

    def _push(self, name: str, module: nn.Module, args: Any) -> None:
        self._module_stack.append(name)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._module_stack:
            self._module_stack.pop()

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet in self.flop_registry:
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            if self._forced:
                phase = self._forced[-1]
            elif _in_backward():
                phase = "backward"
            else:
                phase = self._module_stack[-1] if self._module_stack else "loss"
            self.phase_flops[phase] += flops
            for parent in set(self.mod_tracker.parents):
                self.flop_counts[parent][func_packet] += flops
        return out


def count_flops(
    fn: Callable[..., Any], *args: Any, phases: dict[str, Iterable[nn.Module]] | None = None, **kwargs: Any
) -> tuple[Any, dict[str, int]]:
    """Run ``fn(*args, **kwargs)`` under a :class:`PhaseFlopCounter`; return ``(result, {phase: flops})``."""
    with PhaseFlopCounter(phases) as counter:
        result = fn(*args, **kwargs)
    return result, dict(counter.phase_flops)


def encoder_phases(model: nn.Module, loss: nn.Module | None = None) -> dict[str, list[nn.Module]]:
    """``{"student_forward": [...], "teacher_forward": [...]}`` for an OPTICAL Router model (its two routes) or for a
    plain student with the separate teacher a loss holds (``loss.teacher``)."""
    router = find_router(model)
    if router is not None:
        phases = {"student_forward": list(router.sub_modules[STUDENT_ROUTE])}
        if TEACHER_ROUTE in router.sub_modules:
            phases["teacher_forward"] = list(router.sub_modules[TEACHER_ROUTE])
        return phases
    phases = {"student_forward": [model]}
    teacher = getattr(loss, "teacher", None)
    if isinstance(teacher, nn.Module):
        phases["teacher_forward"] = [teacher]
    return phases


def sinkhorn_elementwise_flops(
    batch: int, n: int, m: int, *, absorptions: int = 0, log_domain_blocks: int = 0, check_every: int = 10
) -> int:
    """Analytic estimate (not a measurement) of the elementwise work of :func:`optical_st.transport.sinkhorn_log` plus the
    OT loss on a ``(batch, n, m)`` cost, i.e. what ``FlopCounterMode`` does not see.

    Per cost entry: the cosine cost ``1 - S T^T`` (1), the log-kernel ``-C / reg`` (1), the padding mask (1), the first
    log-domain iteration (two log-sum-exps of add, max, subtract, exp, sum: 10), every build of the absorbed kernel
    ``exp(K + f + g)`` and its transposed copy (5; once, plus once per absorption and per log-domain fallback), each
    fallback's ``check_every`` log-domain iterations (10 each), the final plan (3) and the loss ``sum(P * C)`` (2).
    The scaling iterations themselves are batched row-vector x matrix products (``bmm``), measured by the counter.
    Follows the implementation in ``optical_st/transport/sinkhorn.py``; update it with the solver.
    """
    kernels = 1 + absorptions + log_domain_blocks
    per_entry = 1 + 1 + 1 + 10 + 5 * kernels + log_domain_blocks * check_every * 10 + 3 + 2
    return batch * n * m * per_entry


@dataclass
class FlopReport:
    """FLOPs of one training run.

    Attributes:
        per_step: mean measured FLOPs per optimizer step, by phase.
        measured_steps / total_steps: how many steps were measured, out of how many.
        one_off: FLOPs summed exactly over the run outside the step extrapolation (``mining``, ``precompute``, ...).
        analytic_per_step: analytic estimates per step, not measured (``ot_elementwise_analytic``).
    """

    per_step: dict[str, float] = field(default_factory=dict)
    measured_steps: int = 0
    total_steps: int = 0
    one_off: dict[str, int] = field(default_factory=dict)
    analytic_per_step: dict[str, float] = field(default_factory=dict)

    @property
    def step_flops(self) -> float:
        return float(sum(self.per_step.values()))

    def phase_totals(self) -> dict[str, float]:
        """Measured whole-run FLOPs by phase: step phases x steps, plus the one-off phases."""
        totals: dict[str, float] = defaultdict(float)
        for phase, flops in self.per_step.items():
            totals[phase] += flops * self.total_steps
        for phase, flops in self.one_off.items():
            totals[phase] += flops
        return dict(totals)

    @property
    def total(self) -> float:
        """Measured whole-run FLOPs: mean step FLOPs x steps + one-off costs (analytic estimates excluded)."""
        return self.step_flops * self.total_steps + float(sum(self.one_off.values()))

    @property
    def total_with_analytic(self) -> float:
        return self.total + float(sum(self.analytic_per_step.values())) * self.total_steps

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_step": dict(self.per_step),
            "step_flops": self.step_flops,
            "measured_steps": self.measured_steps,
            "total_steps": self.total_steps,
            "one_off": dict(self.one_off),
            "analytic_per_step": dict(self.analytic_per_step),
            "total": self.total,
            "total_with_analytic": self.total_with_analytic,
        }


class FlopsCallback(TrainerCallback):
    """Measure training FLOPs per phase during ``SentenceTransformerTrainer.train()``.

    Every ``every_n_steps``-th optimizer step (and the first) runs under a :class:`PhaseFlopCounter`: student forward,
    teacher forward, loss (OT cost + Sinkhorn matvecs / similarity matrix) and backward, summed over the step's
    gradient-accumulation micro-batches. :attr:`report` extrapolates the mean measured step to every step of the run.
    Work outside the steps (re-mining hard negatives, precomputing teacher embeddings) is added exactly with
    :meth:`counting` (work the code marks with :func:`optical_st.phases.work_phase`) or :meth:`add_one_off`. A loss's
    :class:`~optical_st.TeacherCache` is bypassed on measured steps, so the teacher's forward counts as the method's
    cost even when later steps read it from the cache.

    Args:
        model: the model being trained (an OPTICAL Router model or a plain student).
        loss: the training loss (used to find a separate teacher, and for the analytic Sinkhorn estimate its
            ``last_solver_log``: the :class:`~optical_st.transport.SinkhornLog` of its last step, which
            :class:`~optical_st.OTDistillationLoss` keeps).
        every_n_steps: measure one step in ``every_n_steps`` (1 = every step: exact, but every step is slowed down).

    Example::

        >>> flops = FlopsCallback(model, loss, every_n_steps=10)  # doctest: +SKIP
        >>> trainer = SentenceTransformerTrainer(..., loss=loss, callbacks=[flops])  # doctest: +SKIP
        >>> with flops.counting(optical_st.phases.MINING):  # and the sampler's re-mining  # doctest: +SKIP
        ...     trainer.train()
        >>> flops.report.total, flops.report.per_step  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, loss: nn.Module | None = None, *, every_n_steps: int = 10) -> None:
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1.")
        self.loss = loss
        self.every_n_steps = every_n_steps
        self.phases = encoder_phases(model, loss)
        self._counter: PhaseFlopCounter | None = None
        self._bypass = contextlib.ExitStack()
        self._sums: dict[str, int] = defaultdict(int)
        self._analytic: dict[str, float] = defaultdict(float)
        self._measured = 0
        self._total_steps = 0
        self._one_off: dict[str, int] = defaultdict(int)

    # -- one-off work -------------------------------------------------------------------------------
    def add_one_off(self, phase: str, flops: int) -> None:
        """Add FLOPs measured elsewhere (e.g. with :func:`count_flops`) to the run's one-off costs."""
        self._one_off[phase] += int(flops)

    @contextlib.contextmanager
    def counting(self, *phases: str) -> Iterator[None]:
        """Inside the block, count the work the code marks as one of ``phases`` (``with work_phase(name):``, see
        :mod:`optical_st.phases`; e.g. :data:`~optical_st.phases.MINING`, a hard-negative sampler's re-mining) exactly,
        as one-off FLOPs of that phase. Wrap ``trainer.train()`` in it.

        Inside a measured step the marked work is attributed to its phase and kept out of the step extrapolation;
        outside one it runs under its own counter.
        """
        with observe_phases(functools.partial(self._count_phase, frozenset(phases))):
            yield

    @contextlib.contextmanager
    def _count_phase(self, counted: frozenset[str], phase: str) -> Iterator[None]:
        if phase not in counted:
            yield
        elif self._counter is not None:
            with self._counter.force_phase(phase):
                yield
        else:
            with PhaseFlopCounter() as counter, counter.force_phase(phase):
                yield
            self._one_off[phase] += counter.phase_flops[phase]

    # -- trainer hooks ------------------------------------------------------------------------------
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.every_n_steps == 0 and self._counter is None:
            self._counter = PhaseFlopCounter(self.phases)
            self._counter.__enter__()
            cache = getattr(self.loss, "teacher_cache", None)
            if cache is not None:  # count the teacher's forward as the method's own cost, cached or not
                self._bypass.enter_context(cache.bypassed())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._total_steps = state.global_step
        if self._counter is None:
            return
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        self._bypass.close()
        for phase, flops in counter.phase_flops.items():
            if phase in self.phases or phase in ("backward", "loss"):
                self._sums[phase] += flops
            else:  # forced phases (mining, ...) are one-off costs, summed exactly
                self._one_off[phase] += flops
        self._measured += 1
        log = getattr(self.loss, "last_solver_log", None)
        if isinstance(log, SinkhornLog):  # a Sinkhorn solve this step (the exact solver keeps no log)
            batch, n = log.f.shape
            self._analytic["ot_elementwise_analytic"] += sinkhorn_elementwise_flops(
                batch, n, log.g.shape[-1], absorptions=log.absorptions, log_domain_blocks=log.log_domain_blocks
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._counter is not None:  # training stopped inside a measured step
            self._counter.__exit__(None, None, None)
            self._counter = None
            self._bypass.close()
        self._total_steps = state.global_step
        # the model card shows the measured FLOPs instead of its token-count estimate
        card = getattr(kwargs.get("model"), "model_card_data", None)
        if card is not None and hasattr(card, "measured_flops"):
            world_size = max(int(getattr(args, "world_size", 1) or 1), 1)  # each process counts its own work
            card.measured_flops = {phase: flops * world_size for phase, flops in self.report.phase_totals().items()}

    # -- resuming a run ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What was counted so far (JSON-able): saved beside a checkpoint so a resumed run's FLOPs are the whole run's."""
        return {
            "sums": dict(self._sums),
            "analytic": dict(self._analytic),
            "measured": self._measured,
            "total_steps": self._total_steps,
            "one_off": dict(self._one_off),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue counting from :meth:`state_dict` (replaces everything counted so far, one-off costs included)."""
        self._sums = defaultdict(int, {k: int(v) for k, v in state["sums"].items()})
        self._analytic = defaultdict(float, {k: float(v) for k, v in state["analytic"].items()})
        self._measured = int(state["measured"])
        self._total_steps = int(state["total_steps"])
        self._one_off = defaultdict(int, {k: int(v) for k, v in state["one_off"].items()})

    @property
    def report(self) -> FlopReport:
        measured = max(self._measured, 1)
        return FlopReport(
            per_step={phase: flops / measured for phase, flops in self._sums.items()},
            measured_steps=self._measured,
            total_steps=self._total_steps,
            one_off=dict(self._one_off),
            analytic_per_step={key: value / measured for key, value in self._analytic.items()},
        )
