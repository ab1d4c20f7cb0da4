"""What a benchmark writes with ``--output``: its tables as a record results file, with the conditions they were
measured under and the raw numbers behind the cells.

``scripts/results_tables.py`` renders a record's table into the docs between
``<!-- results source=<file> table=<name> -->`` and ``<!-- /results -->``, cell for cell::

    {"tables": {"<name>": {"header": [...], "rows": [[...], ...], "measured": "<command, commit, machine, load>",
                           "raw": {...}}},
     "conditions": {"command": ..., "commit": ..., "date": ..., "torch": ..., "torch_threads": ..., ...}}

The benchmarks import this module by its bare name: Python puts a script's own folder first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optical_st.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def add_output_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--output`` alone writes ``default``; ``--output PATH`` writes PATH; without it nothing is written, so a quick
    look with small settings does not replace the committed record."""
    parser.add_argument(
        "--output",
        nargs="?",
        const=default,
        default=None,
        metavar="PATH",
        help=f"write the tables, conditions and raw numbers as a record results file (bare --output: {default})",
    )


def _relative(path: str) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def commit() -> str | None:
    """The checked-out commit, ``+ uncommitted changes`` when tracked files differ from it; None outside git."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    return f"{head} + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else head


def conditions(argv: list[str] | None = None) -> dict[str, Any]:
    """The run's command, commit, date, library versions and machine; call it when the run starts (the load average
    then is the other processes' load, not the benchmark's own)."""
    import torch

    argv = sys.argv if argv is None else argv
    return {
        "command": " ".join(["python", _relative(argv[0]), *argv[1:]]),
        "commit": commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def measured(cond: dict[str, Any]) -> str:
    """One line saying what ran, on what and how busy the machine was."""
    load = "/".join(f"{x:.1f}" for x in cond["load_average_start"])
    end = cond.get("load_average_end")
    load += f" at the start, {'/'.join(f'{x:.1f}' for x in end)} at the end" if end else ""
    gpu = f", GPU {cond['gpu']}" if cond.get("gpu") else ""
    return (
        f"`{cond['command']}` at commit {cond['commit'] or 'unknown'} on {cond['date']}: torch {cond['torch']}, "
        f"{cond['torch_threads']} torch thread(s) on {cond['cpus']} CPUs ({cond['machine']}){gpu}; "
        f"load average (1/5/15 min) {load}"
    )


def write_record(path: str | Path, tables: dict[str, dict[str, Any]], cond: dict[str, Any]) -> Path:
    """Write ``tables`` (name -> header, rows, raw) with ``cond`` to ``path``; every table gets the run's ``measured``
    line. Returns the path."""
    cond = {**cond, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    line = measured(cond)
    entries = {
        name: {"header": t["header"], "rows": t["rows"], "measured": line, **({"raw": t["raw"]} if "raw" in t else {})}
        for name, t in tables.items()
    }
    path = Path(path)
    atomic_write_json(path, {"tables": entries, "conditions": cond})
    return path
