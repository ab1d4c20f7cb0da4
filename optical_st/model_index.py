"""Evaluation results for the Hub's ``model-index`` card metadata: lists of ``huggingface_hub.EvalResult`` without
non-finite scores, merged by what they measure. Used by the model card (:mod:`optical_st.model_card`) and by the
helpers that write results into a saved card (:mod:`optical_st.hub`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from huggingface_hub import EvalResult
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from transformers.modelcard import make_markdown_table

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_TASKS_FALLBACK",
    "eval_results_table",
    "finite_eval_results",
    "hub_task_type",
    "hub_task_types",
    "merge_eval_results",
    "merged_model_index",
]

# used only when the `evaluate` library (a dependency) cannot be imported
HUB_TASKS_FALLBACK = frozenset({"text-retrieval", "sentence-similarity", "feature-extraction", "translation", "other"})


def merge_eval_results(existing: Iterable[EvalResult], new: Iterable[EvalResult]) -> list[EvalResult]:
    """``existing`` with ``new`` added; a new result replaces one that differs from it only by value. Results with a
    NaN or infinite value are dropped with a warning (YAML would store ``.nan``, which the Hub shows as a score)."""
    merged = finite_eval_results(existing)
    for result in finite_eval_results(new):
        merged = [old for old in merged if not old.is_equal_except_value(result)]
        merged.append(result)
    return merged


def finite_eval_results(results: Iterable[EvalResult]) -> list[EvalResult]:
    """``results`` without those whose value is a NaN or infinite number (each dropped one is logged)."""
    kept = []
    for result in results:
        value = result.metric_value
        if isinstance(value, (int, float)) and not math.isfinite(value):
            logger.warning(
                f"Dropping evaluation result {result.metric_type!r} on {result.dataset_name!r} = {value}: a "
                "non-finite score is no result (did the evaluator see an empty split?)."
            )
            continue
        kept.append(result)
    return kept


def merged_model_index(model_index: Any, eval_results: list[EvalResult], model_name: str) -> Any:
    """``model_index`` (as sentence-transformers' card writes it from the evaluators) with ``eval_results`` merged in
    and non-finite scores dropped; ``None`` when nothing is left."""
    existing = model_index_to_eval_results(model_index)[1] if model_index else []
    finite = finite_eval_results(existing)
    if not eval_results and len(finite) == len(existing):
        return model_index
    merged = merge_eval_results(finite, eval_results)
    return eval_results_to_model_index(model_name, merged) if merged else None


def _hub_tasks() -> frozenset[str]:
    try:
        from evaluate.config import HF_HUB_ALLOWED_TASKS  # lazy: importing evaluate takes a while
    except ImportError:
        return HUB_TASKS_FALLBACK
    return frozenset(HF_HUB_ALLOWED_TASKS)


def hub_task_type(task_type: str | None) -> str:
    """A task id the Hub lists results under (``evaluate.config.HF_HUB_ALLOWED_TASKS``): ``task_type`` itself when it
    is one, else ``"text-retrieval"`` for a retrieval task and ``"sentence-similarity"`` (sentence-transformers'
    pipeline) for the rest. sentence-transformers names a result's task after its evaluator class
    (``cross-lingual-retrieval``, ``information-retrieval``, ``bitext-retrieval``), which the Hub does not know."""
    if task_type and task_type in _hub_tasks():
        return task_type
    return "text-retrieval" if task_type and "retrieval" in task_type else "sentence-similarity"


def hub_task_types(model_index: Any) -> Any:
    """``model_index`` with every result's ``task.type`` a Hub task id (:func:`hub_task_type`); the readable
    ``task.name`` (the evaluator's) is kept."""
    for entry in model_index or []:
        for result in entry.get("results", []) if isinstance(entry, dict) else []:
            task = result.get("task") if isinstance(result, dict) else None
            if isinstance(task, dict):
                original = task.get("type")
                task["type"] = hub_task_type(original)
                if original and original != task["type"] and not task.get("name"):
                    task["name"] = original.replace("-", " ").title()
    return model_index


def eval_results_table(eval_results: list[EvalResult]) -> str:
    """A markdown table of the results for the card's body ("" when there are none)."""
    if not eval_results:
        return ""
    rows = [
        {
            "Task": result.task_name or result.task_type,
            "Dataset": result.dataset_name,
            "Split": result.dataset_split or "-",
            "Metric": result.metric_name or result.metric_type,
            "Value": round(result.metric_value, 4) if isinstance(result.metric_value, float) else result.metric_value,
        }
        for result in eval_results
    ]
    return make_markdown_table(rows).replace("-:|", "--|")
