"""Reporting a comparison: mean ± std over seeds per method (:func:`aggregate`), the markdown table, the
run conditions, a quality-vs-FLOPs plot, and ``results.md`` / ``results.json`` (:func:`write_report`); for a single
run of N methods, such as the demo, :func:`results_table` and :func:`write_results`. The plots are
:mod:`~optical_st.research.plots` (matplotlib: the ``[research]`` extra)."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from optical_st.research.config import ExperimentConfig, resolve_device
from optical_st.research.plots import plot_learning_curves, plot_quality_vs_flops, plot_results
from optical_st.sampling import LengthGroupedBatchSampler
from optical_st.utils import atomic_write_json

__all__ = [
    "DEMO_METRICS",
    "METRICS",
    "aggregate",
    "format_table",
    "method_row",
    "ratios",
    "results_table",
    "write_report",
    "write_results",
]

# the summary metrics every research report shows, in this order: translation retrieval (bible.<lang>: accuracy@1
# both directions, MRR@10), relevance (bible-xref.<lang>: xref MAP@100, nDCG@10, R@100), Hub benchmarks (MAP@100,
# mAP@20, nDCG@10)
METRICS = (
    "acc@1 LRL→En",
    "acc@1 En→LRL",
    "MRR@10",
    "xref MAP@100",
    "xref nDCG@10",
    "xref R@100",
    "MAP@100",
    "mAP@20",
    "nDCG@10",
)
# a single run's table (the demo): evaluator metric name -> column title
DEMO_METRICS = {"acc@1 LRL→En": "acc@1", "MRR@10": "MRR@10", "nDCG@10": "nDCG@10", "acc@1 En→LRL": "acc@1 En→LRL"}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per (language, training size, method), in the order they first
    appear."""

    def key(r: dict[str, Any]) -> tuple[str, int, str]:
        return r.get("language", ""), int(r.get("train_pairs", 0) or 0), r["method"]

    rows = []
    for language, pairs, name in dict.fromkeys(key(r) for r in records):
        runs = [r for r in records if key(r) == (language, pairs, name)]
        row: dict[str, Any] = {"method": name, "language": language, "train_pairs": pairs, "n": len(runs)}
        row["description"] = runs[0].get("description", "")
        for metric in METRICS:
            values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            if values:
                row[metric] = _mean_std(values)
        row["train FLOPs"] = _mean_std([float(r["flops"].get("total", 0.0)) for r in runs])
        row["FLOPs/step"] = _mean_std([float(r["flops"].get("step_flops", 0.0)) for r in runs])
        analytic = [float(r["flops"].get("total_with_analytic", r["flops"].get("total", 0.0))) for r in runs]
        row["train FLOPs incl. analytic"] = _mean_std(analytic)
        row["train s"] = _mean_std([float(r["train_seconds"]) for r in runs])
        row["steps"] = runs[0].get("steps", 0)
        rows.append(row)
    return rows


def _fmt(value: tuple[float, float], kind: str) -> str:
    mean, std = value
    if kind == "flops":
        return "0" if mean == 0 else f"{mean:.3g} ± {std:.1g}" if std else f"{mean:.3g}"
    if kind == "seconds":
        return f"{mean:.0f} ± {std:.0f}"
    return f"{mean:.4f} ± {std:.4f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown results table: quality metrics (mean ± std over seeds), training FLOPs, wall time; a ``pairs``
    column when the rows hold more than one training size (a learning curve)."""
    metrics = [m for m in METRICS if any(m in row for row in rows)]
    sizes = {row.get("train_pairs", 0) for row in rows if row.get("train_pairs")}
    curve = len(sizes) > 1
    header = ["method", *(["pairs"] if curve else []), "n", *metrics, "train FLOPs", "FLOPs/step", "train wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["method"],
            *([f"{row.get('train_pairs', 0):,}" if row.get("train_pairs") else "–"] if curve else []),
            str(row["n"]),
        ]
        cells += [_fmt(row[m], "metric") if m in row else "–" for m in metrics]
        cells += [_fmt(row["train FLOPs"], "flops"), _fmt(row["FLOPs/step"], "flops"), _fmt(row["train s"], "seconds")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _batches(config: ExperimentConfig) -> str:
    if not isinstance(config.batch_sampler, type):  # sentence-transformers' own (BatchSamplers.BATCH_SAMPLER)
        return "random batches (methods that mine hard negatives too)"
    sampler = config.batch_sampler.__name__
    grouped = issubclass(config.batch_sampler, LengthGroupedBatchSampler)
    mined = "group_by_length=True, the same grouping" if grouped else "random batches"
    return f"{sampler}; methods that mine hard negatives: DynamicHardNegativeSampler({mined})"


def _test_books(config: ExperimentConfig) -> str:
    if not any(b.startswith("bible") for b in config.benchmarks):
        return ""
    from optical_st.data.bible import DEFAULT_SPLITS

    books = list(DEFAULT_SPLITS["test"])
    return f" (Bible books {books[0]}–{books[-1]})"


def _wall_time(records: Sequence[dict[str, Any]], wall: float) -> str:
    """The runs' own training + evaluation time from their records, so a study resumed over several sessions (or a
    ``--report-only`` rewrite) still states what it cost; this command's wall time beside it when it ran anything."""
    runs = sum(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) for r in records) / 60
    command = f"; this command: {wall / 60:.1f} min" if wall >= 1.0 else ""
    return f"- Wall time: {runs:.1f} min of training and evaluation, summed over the runs' records{command}."


def _threads(records: Sequence[dict[str, Any]]) -> list[int]:
    """The torch threads the runs' records state (records written before they did: this process's)."""
    return sorted({r.get("torch_threads", torch.get_num_threads()) for r in records} or {torch.get_num_threads()})


def _threads_text(threads: Sequence[int]) -> str:
    if len(threads) == 1:
        return f"{threads[0]} torch threads"
    return f"{' or '.join(map(str, threads))} torch threads by run (`torch_threads` in each record)"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that reproduces a study: the script (relative to the working folder) and its arguments, less
    ``--report-only``: run again, it reads the finished runs from ``records/`` and runs only what is missing."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.relpath(argv[0]) if argv and os.path.isabs(argv[0]) else (argv[0] if argv else "")
    return shlex.join(["python", script, *[a for a in argv[1:] if a != "--report-only"]])


def _conditions(
    config: ExperimentConfig, records: Sequence[dict[str, Any]], wall: float, command: str | None = None
) -> str:
    command = command or command_line()
    loads = [x for r in records for x in r.get("load_average", [])]
    device = resolve_device(config)
    hardware = torch.cuda.get_device_name(0) if device == "cuda" else f"{os.cpu_count()} CPU cores"
    threads = _threads(records)
    # the run's own threads count towards the load average; only a load well above them means shared cores
    shared = "other processes shared the cores" if max(loads, default=0) > max(threads) + 0.5 else "the runs alone"
    eval_seconds = [r.get("eval_seconds", 0.0) for r in records]
    recorded = config.to_dict()  # model folders as portable names, as results.json records them
    return "\n".join(
        [
            f"- Command: `{command}` (re-run, it reads the finished runs from `records/` and runs what is missing).",
            f"- Hardware: {hardware} ({platform.machine()}), torch {torch.__version__}, "
            f"{_threads_text(threads)}; load average during the runs {min(loads, default=0):.1f}–"
            f"{max(loads, default=0):.1f} ({shared}).",
            f"- Teacher: `{recorded['teacher']}` (frozen; reads the English side); student: "
            + (
                f"`{recorded['student']}`."
                if config.student
                else "a trainable copy of the teacher (reads the LRL side)."
            ),
            f"- Languages: {', '.join(_language_name(code) for code in config.languages)}.",
            f"- Training data: {config.train_data}, {_sizes(config)} pairs per language, "
            f"{config.epochs:g} epoch(s), batch {config.batch_size} ({_batches(config)}), lr "
            f"{config.learning_rate:g}, max_seq_length {config.max_seq_length}; seeds {list(config.seeds)}.",
            f"- Precision: **{config.to_dict()['precision']}** for every training run"
            + (" (chosen by the machine: pass --bf16 / --no-bf16 to fix it)." if config.bf16 is None else "."),
            f"- Benchmarks: {', '.join(config.benchmarks)}; translation task on {config.eval_pairs or 'all'} sampled "
            f"test verses{_test_books(config)} in both directions; relevance task (cross-references made by people, the "
            f"query's own verse excluded) against the {config.xref_corpus} English corpus; eval max_seq_length "
            f"{config.eval_max_seq_length}.",
            "- acc@1 LRL→En / MRR@10: a verse's translation among the English test verses (student queries, teacher "
            "documents); acc@1 En→LRL: the reverse. xref MAP@100 / nDCG@10 / R@100: the cross-referenced English "
            "verses for a query verse in the low-resource language; the *English queries (ceiling)* row is the teacher "
            "reading the English version of the same queries.",
            f"- Training FLOPs: measured with torch FlopCounterMode (matmul-family and attention ops, forward + "
            f"backward) on one step in {config.flops_every}, extrapolated to all steps, plus one-off work (teacher "
            "precompute for MSE-KD, hard-negative mining) counted exactly. Elementwise ops are not counted "
            "(see optical_st/evaluation/flops.py); `results.json` also holds an analytic estimate of Sinkhorn's "
            "elementwise work.",
            f"- Evaluation: {sum(eval_seconds) / 60:.1f} min in all; the frozen teacher's English corpora come from the "
            "on-disk embedding cache after their first encoding (optical_st.evaluation.EmbeddingCache).",
            "- Train wall s: "
            + (
                "the runs share the frozen teacher's outputs on the training texts (optical_st.TeacherCache): the "
                "first trained run of the command computes them, the others read them, so its time is not comparable "
                "with theirs (FLOPs are: every run's measured steps run the teacher)."
                if config.teacher_cache
                else "every run computes the frozen teacher's outputs itself (no teacher cache)."
            ),
            _wall_time(records, wall),
        ]
    )


def _sizes(config: ExperimentConfig) -> str:
    return " / ".join(f"{p:,}" if p else "all" for p in config.train_pairs)


def _language_name(code: str) -> str:
    from optical_st.data import LANGUAGES

    return f"{LANGUAGES[code].name} ({code})" if code in LANGUAGES else code


def write_report(
    records: Sequence[dict[str, Any]],
    config: ExperimentConfig,
    *,
    title: str,
    question: str,
    wall_seconds: float,
    plot_name: str = "quality_vs_flops.png",
    plot_metrics: Sequence[str] = ("xref MAP@100", "acc@1 LRL→En", "MAP@100"),
) -> str:
    """Write ``results.md`` (question, a table per language, conditions), ``results.json`` (config, every run,
    aggregates) and a quality-vs-FLOPs plot per language into ``config.output_dir``; return the tables."""
    out = Path(config.output_dir)
    command = command_line()  # one line for results.md and results.json
    rows = aggregate(records)
    languages = list(dict.fromkeys(row["language"] for row in rows))
    sections, tables = [], []
    for language in languages:
        lang_rows = [row for row in rows if row["language"] == language]
        name = plot_name if len(languages) == 1 else plot_name.replace(".png", f"_{language}.png")
        plot_title = f"{title}: {_language_name(language)}"
        table = format_table(lang_rows)
        tables.append(f"{_language_name(language)}\n\n{table}" if language else table)
        heading = f"## {_language_name(language)}\n\n" if language else ""
        if len({row["train_pairs"] for row in lang_rows if row["train_pairs"]}) > 1:  # a learning curve
            curves = {"pairs": name.replace(".png", "_pairs.png").replace("flops_pairs", "pairs"), "flops": name}
            for x, file in curves.items():
                plot_learning_curves(lang_rows, out / file, plot_metrics, x=x, title=plot_title)
            plots = f"![quality vs training pairs]({curves['pairs']})\n\n![quality vs training FLOPs]({name})"
        else:
            plot_quality_vs_flops(lang_rows, out / name, metrics=plot_metrics, title=plot_title)
            plots = f"![quality vs training FLOPs]({name})"
        sections.append(f"{heading}{table}\n\n{plots}")
    descriptions = dict.fromkeys((r["method"], r["description"]) for r in rows)
    text = "\n\n".join(
        [
            f"# {title}",
            question,
            *sections,
            "## Conditions\n\n" + _conditions(config, records, wall_seconds, command),
            "## Methods\n\n" + "\n".join(f"- **{method}**: {description}" for method, description in descriptions),
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    json_rows = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in rows
    ]  # (mean, std) pairs as lists
    atomic_write_json(
        out / "results.json",
        {
            "command": command,
            "config": config.to_dict(),
            "aggregate": json_rows,
            "runs": list(records),
            "wall_seconds": wall_seconds,
        },
    )
    partial = out / "runs.partial.json"
    if partial.exists():
        partial.unlink()
    return "\n\n".join(tables)


# --------------------------------------------------------------------------------------------------
# one run of N methods (the demo): a row per method
# --------------------------------------------------------------------------------------------------
def method_row(
    method: str, metrics: dict[str, float], *, train_pairs: int = 0, epochs: float = 0, wall_time_s: float = 0.0
) -> dict[str, Any]:
    """One row of :func:`results_table`: the method's name, its metrics (as :func:`timed_evaluation` names them) and
    what it cost."""
    return {"method": method, **metrics, "train_pairs": train_pairs, "epochs": epochs, "wall_time_s": wall_time_s}


def ratios(row: dict[str, Any], baseline: dict[str, Any], metrics: Sequence[str]) -> dict[str, float]:
    """``row[m] / baseline[m]`` per metric (how many times the baseline's score)."""
    return {m: row[m] / max(baseline[m], 1e-12) for m in metrics}


def results_table(rows: Sequence[dict[str, Any]], metrics: dict[str, str] = DEMO_METRICS) -> str:
    """The markdown table of :func:`method_row` rows, one line per method."""
    header = ["method", *metrics.values(), "train pairs", "epochs", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], *(f"{row[m]:.4f}" for m in metrics)]
        cells += [f"{row['train_pairs']:,}", f"{row['epochs']:g}", f"{row['wall_time_s'] / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(
    out: Path,
    rows: Sequence[dict[str, Any]],
    *,
    summary: str = "",
    details: dict[str, Any] | None = None,
    log_history: Sequence[dict[str, Any]] = (),
    title: str = "",
    loss_title: str = "training loss",
) -> str:
    """Write ``results.md`` (table and summary), ``results.json`` (the rows and ``details``) and ``results.png``
    (:func:`plot_results`) into ``out``; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(rows)
    (out / "results.md").write_text(f"{table}\n\n{summary}\n" if summary else f"{table}\n", encoding="utf-8")
    atomic_write_json(out / "results.json", {"results": list(rows), **(details or {})})
    plot_results(
        rows, out / "results.png", metrics=DEMO_METRICS, log_history=log_history, title=title, loss_title=loss_title
    )
    return table
