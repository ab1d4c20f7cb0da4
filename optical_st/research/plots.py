"""The plots of a research report (matplotlib, the ``[research]`` extra): quality against training pairs or FLOPs
(:func:`plot_learning_curves`, :func:`plot_quality_vs_flops`), a single run's metrics with its loss curve
(:func:`plot_results`), and metrics tracked during training, one line per run (:func:`plot_tracking`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_learning_curves", "plot_quality_vs_flops", "plot_results", "plot_tracking"]


def _save_figure(fig: Any, path: Path, title: str) -> None:
    """Title, layout, write ``path`` (its folder created), and free the figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(
    rows: Sequence[dict[str, Any]], path: Path, metrics: Sequence[str], *, x: str = "pairs", title: str = ""
) -> None:
    """One panel per metric: each trained method's mean (± std over seeds) against its training pairs (``x="pairs"``)
    or training FLOPs (``x="flops"``), a line through its sizes; methods without training are dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in row for row in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in dict.fromkeys(row["method"] for row in rows):
            points = sorted(
                (row["train_pairs"] if x == "pairs" else row["train FLOPs"][0], *row[metric])
                for row in rows
                if row["method"] == method and metric in row
            )
            if not points:
                continue
            if points[0][0] == 0:  # no training: a reference level
                _reference_line(ax, points[0][1], method)
                continue
            xs, means, stds = zip(*points, strict=True)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training pairs (one epoch)" if x == "pairs" else "training FLOPs (measured, whole run)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _save_figure(fig, path, title)


_REFERENCE_STYLES = ("--", ":", "-.")


def _reference_line(ax: Any, y: float, method: str) -> None:
    """A method without training (zero-shot, the English-query ceiling) as a grey level, each in its own dash style
    so that two of them can be told apart."""
    used = sum(1 for line in ax.get_lines() if line.get_label().endswith("(no training)"))
    style = _REFERENCE_STYLES[used % len(_REFERENCE_STYLES)]
    ax.axhline(y, linestyle=style, color="grey", label=f"{method} (no training)")


def plot_quality_vs_flops(
    rows: Sequence[dict[str, Any]], path: Path, metrics: Sequence[str] = ("MAP@100", "acc@1 LRL→En"), title: str = ""
) -> None:
    """One panel per metric: mean ± std over seeds against training FLOPs (log scale when they span decades); the
    zero-shot teacher, which costs no training, is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    metrics = [m for m in metrics if any(m in row for row in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for row in rows:
            if metric not in row:
                continue
            (mean, std), flops = row[metric], row["train FLOPs"][0]
            if flops == 0:
                _reference_line(ax, mean, row["method"])
                continue
            ax.errorbar(flops, mean, yerr=std, fmt="o", capsize=4, label=row["method"])
            ax.annotate(row["method"], (flops, mean), textcoords="offset points", xytext=(6, 6), fontsize=8)
        trained = [row["train FLOPs"][0] for row in rows if row["train FLOPs"][0] > 0]
        xlabel = "training FLOPs (measured, whole run)"
        if trained and max(trained) / min(trained) > 10:  # log scale only when the costs span decades
            ax.set_xscale("log")
        elif trained:
            # the exponent goes into the label: matplotlib's offset text would sit on top of it
            exponent = math.floor(math.log10(max(trained)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos, e=exponent: f"{x / 10**e:g}"))
            xlabel = f"training FLOPs (x1e{exponent}, measured, whole run)"
        ax.margins(x=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_figure(fig, path, title)


def plot_results(
    rows: Sequence[dict[str, Any]],
    path: Path,
    *,
    metrics: dict[str, str],
    log_history: Sequence[dict[str, Any]] = (),
    title: str = "",
    loss_title: str = "training loss",
) -> None:
    """Grouped bars of every row's metrics and, from a trainer's ``log_history``, the training loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bar, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(metrics))]
        bars = ax_bar.bar(xs, [row[m] for m in metrics], width, label=row["method"])
        ax_bar.bar_label(bars, fmt="%.3f", fontsize=7)
    ax_bar.set_xticks(range(len(metrics)), list(metrics.values()))
    ax_bar.set_title(title)
    ax_bar.legend()
    steps = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    if steps:
        ax_loss.plot(*zip(*steps, strict=True), marker=".")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(loss_title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tracking(
    runs: dict[str, Sequence[dict[str, float]]], path: Path, metrics: Sequence[str], *, title: str = ""
) -> None:
    """One panel per metric: each run's values (``{"step": ..., metric: ...}`` dicts, e.g. a research record's
    ``tracking`` with short names) against its training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, logs in runs.items():
            points = sorted((log["step"], log[metric]) for log in logs if log.get(metric) is not None)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_figure(fig, path, title)
