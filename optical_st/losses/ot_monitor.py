"""Watching the transport plans while training: running diagnostics, a rate-limited warning when Sinkhorn stops
before it converges, and a trainer callback that writes the diagnostics into the training logs.

A plan that has not converged is not a transport plan (its marginals are off), and the loss would train on it without
a word; POT warns in that case, and so does :class:`OTMonitor`, at the 1st, 10th, 100th, ... batch whose error is
well above ``tol`` (:data:`WARN_FACTOR` times), with the error, what it means by its size and the fix; an error just
above ``tol`` is counted (``not_converged``) without a warning. :class:`OTDiagnosticsCallback` adds the means since
the last log line (``ot_sinkhorn_iters``, ``ot_marginal_error``, ``ot_entropy_ratio``, ``ot_argmax_mass``,
``ot_cost_std``) to the trainer's logs, and ``ot_rows_without_content`` when some rows had no token to transport.

Nothing here reads the device in a training step: the plan statistics are computed only while a callback reads them
(:attr:`OTMonitor.enabled`) and summed as tensors, read back once per log line; the rows without content are counted
on the device too. The convergence warning reads the marginal error only of a batch that did not converge.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor
from transformers import TrainerCallback

__all__ = ["OTDiagnosticsCallback", "OTMonitor", "SinkhornConvergenceWarning"]


# a marginal error up to this many times tol is a plan a few iterations short of tol: counted, not warned about
WARN_FACTOR = 10.0
# from this marginal error on (a share of the unit mass of a plan) the warning says the plans are far from transport
# plans
FAR_ERROR = 1e-2


class SinkhornConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iter`` with a marginal error above ``WARN_FACTOR`` times ``tol``."""


class OTMonitor:
    """Running sums of per-batch plan diagnostics, the rows without content, and the non-convergence warning.

    Attributes:
        enabled: record the plan statistics (:meth:`record`); :class:`OTDiagnosticsCallback` switches it on. Off, the
            loss skips computing them (a float64 pass over every plan).
        batches: batches seen.
        not_converged: batches whose Sinkhorn stopped at ``max_iter`` above ``tol``.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.batches = 0
        self.not_converged = 0  # stopped above tol
        self.far_from_tol = 0  # stopped above WARN_FACTOR * tol: the batches the warning is about
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0
        self._without_content: Tensor | int = 0  # on the device: read back only when asked
        self._without_content_reported = 0

    def observe(self, rows_without_content: Tensor | int) -> None:
        """Count a batch and its rows that had no token to transport (a tensor: summed on the device)."""
        self.batches += 1
        self._without_content = self._without_content + rows_without_content

    @property
    def rows_without_content(self) -> int:
        """Rows seen so far that no transport weight could go to (one host read)."""
        return int(self._without_content)

    def record(self, stats: Mapping[str, Tensor | float]) -> None:
        """Add one batch's statistics (0-d tensors or numbers) to the sums, without reading tensors back."""
        for key, value in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1

    def check_convergence(
        self, *, converged: bool, n_iter: int, error: float, reg: float, max_iter: int, tol: float
    ) -> None:
        """Count a batch whose Sinkhorn stopped at ``max_iter`` with its marginal error above ``tol``, and warn (at
        the 1st, 10th, 100th, ... such batch) only when the error matters: above :data:`WARN_FACTOR` times ``tol``.
        An error just above ``tol`` is a plan a few iterations short of it, whose loss differs by rounding."""
        if converged:
            return
        self.not_converged += 1
        if not error > WARN_FACTOR * tol:  # also NaN: the cost checks name that
            return
        self.far_from_tol += 1
        if not math.log10(self.far_from_tol).is_integer():  # the 1st, 10th, 100th, ... time
            return
        # the plans carry a total mass of 1: the error reads as a share of it
        if error >= FAR_ERROR:
            verdict = (
                f"These plans are far from transport plans (their row sums are off by {error:.2g} of a total mass "
                "of 1) and the loss trains on them."
            )
        else:
            verdict = (
                f"These plans are close to transport plans (row sums off by {error:.2g} of a total mass of 1), so "
                "the loss is nearly that of converged plans, but not quite."
            )
        warnings.warn(
            f"Sinkhorn did not converge in {self.far_from_tol} of {self.batches} batches so far by more than "
            f"{WARN_FACTOR:g} times tol (latest: marginal error {error:.2g} > tol={tol:g} after {n_iter} iterations, "
            f"reg={reg:g}). {verdict} In the loss's OTConfig, raise max_iter (e.g. to {2 * max_iter}), raise reg, or "
            "keep cost_scale='max' so that reg is relative to the costs.",
            SinkhornConvergenceWarning,
            stacklevel=5,  # the line that called the loss: its forward or compute_loss_from_embeddings
        )

    def pop_means(self) -> dict[str, float]:
        """Means since the last call, then reset (the callback calls this at every log line)."""
        means = {key: float(value) / self._count for key, value in self._sums.items()} if self._count else {}
        self._sums, self._count = {}, 0
        return means

    def pop_rows_without_content(self) -> int:
        """Rows without content since the last call (the callback calls this at every log line)."""
        total = self.rows_without_content
        since, self._without_content_reported = total - self._without_content_reported, total
        return since


class OTDiagnosticsCallback(TrainerCallback):
    """Adds the OT loss's plan diagnostics to every training log line (and to ``trainer.state.log_history``).

    Args:
        loss: an :class:`~optical_st.OTDistillationLoss` (or any object with a ``monitor`` :class:`OTMonitor`).
        prefix: key prefix in the logs.

    Example::

        trainer = SentenceTransformerTrainer(..., loss=loss, callbacks=[OTDiagnosticsCallback(loss)])
    """

    def __init__(self, loss: Any, prefix: str = "ot_") -> None:
        self.monitor: OTMonitor = loss.monitor
        self.monitor.enabled = True  # the loss computes the plan statistics from now on
        self.prefix = prefix

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs:  # training log lines only, not evaluation ones
            return
        means = {f"{self.prefix}{key}": round(value, 6) for key, value in self.monitor.pop_means().items()}
        without_content = self.monitor.pop_rows_without_content()
        if without_content:  # rows the OT term gave no weight: a stream's empty texts, or texts a prompt swallowed
            means[f"{self.prefix}rows_without_content"] = without_content
        logs.update(means)
        # the trainer appended this line to log_history just before calling us; keep the history complete
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(means)
