"""Research tooling behind ``examples/rq1_dynamic_vs_static.py``, ``examples/rq2_ot_vs_contrastive.py`` and the demo's
report: train several distillation methods over seeds on the same data, evaluate them on the same benchmark,
measure training FLOPs and wall time, and write tables, JSON and plots.

* :mod:`~optical_st.research.config`: :class:`ExperimentConfig`, what a run depends on.
* :mod:`~optical_st.research.methods`: the compared methods (:func:`zero_shot`, :func:`ot_distillation`,
  :func:`contrastive_distillation`, :func:`mse_distillation`).
* :mod:`~optical_st.research.runner`: :func:`run_experiment` (every method x every seed), resumable.
* :mod:`~optical_st.research.training`: :func:`train_one` (one method, one seed) and the study's bitext.
* :mod:`~optical_st.research.evaluate`: the benchmarks, :func:`evaluate_model` and :func:`timed_evaluation`.
* :mod:`~optical_st.research.report`: tables, ``results.md`` / ``results.json``; :mod:`~optical_st.research.plots`:
  the plots (matplotlib: ``pip install optical-st[research]``).
* :mod:`~optical_st.research.cli`: the flags the RQ scripts share and :func:`run_and_report`.

Example::

    from optical_st.research import ExperimentConfig, mse_distillation, ot_distillation, run_experiment

    config = ExperimentConfig(output_dir="results/mine", train_pairs=2000, seeds=(0, 1))
    records = run_experiment([ot_distillation(), mse_distillation()], config)
"""

from optical_st.research.cli import add_cli_arguments, config_from_args, run_and_report
from optical_st.research.config import ExperimentConfig
from optical_st.research.evaluate import evaluate_model, last_eval_metrics, load_benchmarks, summarize, timed_evaluation
from optical_st.research.methods import (
    ENGLISH_CEILING,
    Method,
    TrainSetup,
    contrastive_distillation,
    english_ceiling,
    mse_distillation,
    ot_distillation,
    score_distillation,
    zero_shot,
)
from optical_st.research.plots import plot_quality_vs_flops, plot_results
from optical_st.research.report import (
    DEMO_METRICS,
    METRICS,
    aggregate,
    format_table,
    method_row,
    ratios,
    results_table,
    write_report,
    write_results,
)
from optical_st.research.runner import run_experiment, run_one
from optical_st.research.training import load_train_pairs, train_one

__all__ = [
    "DEMO_METRICS",
    "ENGLISH_CEILING",
    "METRICS",
    "ExperimentConfig",
    "Method",
    "TrainSetup",
    "add_cli_arguments",
    "aggregate",
    "config_from_args",
    "contrastive_distillation",
    "english_ceiling",
    "evaluate_model",
    "format_table",
    "last_eval_metrics",
    "load_benchmarks",
    "load_train_pairs",
    "method_row",
    "mse_distillation",
    "ot_distillation",
    "plot_quality_vs_flops",
    "plot_results",
    "ratios",
    "results_table",
    "run_and_report",
    "run_experiment",
    "run_one",
    "score_distillation",
    "summarize",
    "timed_evaluation",
    "train_one",
    "write_report",
    "write_results",
    "zero_shot",
]
