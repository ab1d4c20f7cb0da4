"""The command line shared by the research-question scripts (``examples/rq*.py``): the :class:`ExperimentConfig`
flags, and :func:`run_and_report` to run the chosen methods and write the report."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import fields
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from optical_st.research.config import ExperimentConfig
from optical_st.research.methods import Method
from optical_st.research.report import write_report
from optical_st.research.runner import read_records, run_experiment

__all__ = ["add_cli_arguments", "config_from_args", "run_and_report"]


def add_cli_arguments(parser: argparse.ArgumentParser, defaults: ExperimentConfig) -> None:
    """A flag for every :class:`ExperimentConfig` field (``--output-dir`` for ``output_dir``, ...), derived from the
    dataclass: its type, its help and choices (the field's metadata); each defaults to ``defaults``."""
    hints = get_type_hints(ExperimentConfig)
    for f in fields(ExperimentConfig):
        meta, value, hint = f.metadata, getattr(defaults, f.name), hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta.get("help")}
        choices = meta.get("choices")
        if isinstance(choices, dict):  # names on the command line, values in the config
            kwargs["choices"] = sorted(choices)
            kwargs["default"] = next((k for k, v in choices.items() if v == value), None)
        elif _base(hint) is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=value)
        elif get_origin(hint) is tuple:
            item = _base(get_args(hint)[0])
            kwargs.update(nargs="+", type=item, default=[_to_cli(v, meta) for v in value])
        else:
            kwargs.update(type=_base(hint), default=_to_cli(value, meta), choices=choices)
        parser.add_argument(flag, **kwargs)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report of the runs finished so far in --output-dir (records/) and run nothing",
    )


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed :func:`add_cli_arguments` flags."""
    values: dict[str, Any] = {}
    for f in fields(ExperimentConfig):
        if not hasattr(args, f.name):
            continue
        value, meta = getattr(args, f.name), f.metadata
        if isinstance(meta.get("choices"), dict):
            value = meta["choices"][value]
        elif isinstance(value, list):
            value = tuple(_from_cli(v, meta) for v in value)
        else:
            value = _from_cli(value, meta)
        values[f.name] = value
    return ExperimentConfig(**values)


def _base(hint: Any) -> Any:
    """``int`` of ``int | None``; the type itself otherwise."""
    inner = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, UnionType) else [hint]
    return inner[0] if len(inner) == 1 else str


def _to_cli(value: Any, meta: Any) -> Any:
    return 0 if value is None and meta.get("zero_is_none") else value


def _from_cli(value: Any, meta: Any) -> Any:
    return None if meta.get("zero_is_none") and value == 0 else value


def run_and_report(
    methods: Sequence[Method], config: ExperimentConfig, *, title: str, question: str, report_only: bool = False
) -> str:
    """:func:`run_experiment` then :func:`write_report`, timing the whole; prints and returns the table.
    ``report_only``: the report of the runs finished so far (:func:`read_records`), running nothing."""
    start = time.perf_counter()
    records = read_records(methods, config) if report_only else run_experiment(methods, config)
    wall = 0.0 if report_only else time.perf_counter() - start  # a rewrite of the report ran no experiment
    table = write_report(records, config, title=title, question=question, wall_seconds=wall)
    print(f"{table}\n\nWritten to {config.output_dir}/results.md, results.json, quality_vs_flops.png")
    return table
