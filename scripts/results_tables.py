"""Results tables in README.md and docs/*.md, generated from the committed ``results/*/results.json``.

No number in a results table is typed by hand: each table sits between two markers naming where it comes from, and
this script rewrites what is between them::

    <!-- results source=results/rq2_nya_3seeds/results.json columns=acc@1 LRL→En,xref MAP@100,train FLOPs -->
    | method | n | acc@1 LRL→En | xref MAP@100 | train FLOPs |
    ...
    <!-- /results -->

A marker may be indented (a table inside a list item): the table and the closing marker get the same indentation.

Attributes (``key=value``, separated by spaces; a value runs to the next ``key=``, so it may hold spaces):

- ``source``: a results file, relative to the repository: a research report (``aggregate`` rows: mean ± std over
  seeds), a demo / ``optical-st train`` result (``results`` rows), the adapter benchmark (``size`` / ``quality``) or
  a record (``tables``, below). Research reports may be several, comma-separated: their rows are pooled (a row
  already given by an earlier file, same language, size and method, is not repeated), e.g. RQ1's arms beside RQ2's
  runs of the same losses.
- ``table``: the name of a record's table (records only, and required there).
- ``columns``: comma-separated metric names as the file names them; also ``n``, ``pairs``, ``steps``,
  ``train FLOPs``, ``train s`` (research) and ``train pairs`` (demo). Default: every quality metric in the file.
- ``methods``: comma-separated method (or adapter setting) names, in this order (``;``-separated when a name holds a
  comma); default: all, in the file's order.
- ``languages``: comma-separated language codes (research files); a ``language`` column is added when several.
- ``pairs``: comma-separated training sizes (a learning curve's rows); ``0`` = the untrained rows.

A record holds tables already formatted, each with how it was measured: what the benchmarks write with
``--output`` (``benchmarks/_record.py``), and the historical runs whose output was not kept, transcribed with their
provenance. It renders a table as stored, cell for cell; ``columns``, ``methods``, ``languages`` and ``pairs`` do not
apply::

    {"tables": {"<name>": {"header": ["cell", ...], "rows": [["cell", ...], ...],
                           "measured": "what ran, where and when: command, commit, machine and its load",
                           "raw": {...the numbers behind the cells (optional)...}}},
     "conditions": {...the run's settings and machine (optional)...}}

Usage::

    python scripts/results_tables.py            # rewrite every table in README.md and docs/*.md
    python scripts/results_tables.py --check    # exit 1 when a table differs from its results file (tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optical_st.research.report import METRICS as RESEARCH_QUALITY

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/*.md")
BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)(?P<open><!-- results (?P<attrs>.*?) -->)\n(?P<body>.*?)^[ \t]*<!-- /results -->", re.S | re.M
)
ATTRIBUTE = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|$)", re.S)
LANGUAGES = {"nya": "Chichewa", "swh": "Swahili", "tgl": "Tagalog"}


def _split(value: str | None) -> list[str] | None:
    separator = ";" if value and ";" in value else ","  # names with a comma in them: a ;-separated list
    return [part.strip() for part in value.split(separator) if part.strip()] if value else None


def parse_attributes(text: str) -> dict[str, str]:
    attrs = {key: value.strip() for key, value in ATTRIBUTE.findall(text.strip())}
    if "source" not in attrs:
        raise ValueError(f"A results table marker needs source=...: <!-- results {text} -->")
    return attrs


def _row(cells: Iterable[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)])


def _metric(value: Any) -> str:
    """A quality metric: ``mean ± std`` over seeds when there are several, else the value, 4 decimals."""
    if isinstance(value, list):
        mean, std = value
        return f"{mean:.4f} ± {std:.4f}" if std else f"{mean:.4f}"
    return f"{value:.4f}"


def _flops(value: Any) -> str:
    mean = value[0] if isinstance(value, list) else value
    return "0" if not mean else f"{mean:.3g}"


def _key(row: dict[str, Any]) -> tuple[str, int, str]:
    return row.get("language", ""), int(row.get("train_pairs") or 0), row["method"]


def research_table(data: dict[str, Any], attrs: dict[str, str]) -> str:
    first: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in data["aggregate"]:
        first.setdefault(_key(row), row)
    rows = list(first.values())
    languages, methods, pairs = _split(attrs.get("languages")), _split(attrs.get("methods")), _split(attrs.get("pairs"))
    if languages:
        rows = [r for r in rows if r.get("language") in languages]
    if pairs:
        rows = [r for r in rows if str(r.get("train_pairs", 0) or 0) in pairs]
    if methods:
        missing = [m for m in methods if not any(r["method"] == m for r in rows)]
        if missing:
            raise ValueError(f"{attrs['source']}: no rows for methods {missing}")
        rows = sorted((r for r in rows if r["method"] in methods), key=lambda r: methods.index(r["method"]))
    columns = _split(attrs.get("columns")) or [m for m in RESEARCH_QUALITY if any(m in r for r in rows)]
    several = len({r.get("language") for r in rows}) > 1
    header = [*(["language"] if several else []), "method", *columns]
    body = []
    for r in rows:
        cells = [LANGUAGES.get(r.get("language", ""), r.get("language", ""))] if several else []
        cells.append(r["method"])
        for column in columns:
            if column == "n":
                cells.append(str(r["n"]) if r.get("train_pairs") or r.get("steps") else "–")
            elif column == "pairs":
                cells.append(f"{r['train_pairs']:,}" if r.get("train_pairs") else "–")
            elif column == "steps":
                cells.append(f"{r['steps']:,}" if r.get("steps") else "–")
            elif column in ("train FLOPs", "FLOPs/step"):
                cells.append(_flops(r[column]))
            elif column == "train s":
                cells.append(f"{r[column][0]:.0f}" if r[column][0] else "–")
            else:
                cells.append(_metric(r[column]) if column in r else "–")
        body.append(cells)
    return _table(header, body)


def demo_table(data: dict[str, Any], attrs: dict[str, str]) -> str:
    rows = data["results"]
    methods = _split(attrs.get("methods"))
    if methods:
        rows = [r for m in methods for r in rows if r["method"] == m]
    columns = _split(attrs.get("columns")) or ["acc@1 LRL→En", "MRR@10", "nDCG@10", "acc@1 En→LRL"]
    body = []
    for r in rows:
        cells = [r["method"]]
        for column in columns:
            cells.append(f"{r[column]:,}" if column == "train_pairs" else _metric(r[column]))
        body.append(cells)
    return _table(["method", *[c.replace("train_pairs", "train pairs") for c in columns]], body)


def adapter_table(data: dict[str, Any], attrs: dict[str, str]) -> str:
    """Per setting: saved weights and their share of full fine-tuning's, peak training memory and median step time
    relative to full fine-tuning, and the quality columns."""
    settings = _split(attrs.get("methods")) or list(data["quality"])
    columns = _split(attrs.get("columns")) or ["acc@1 LRL→En", "acc@1 En→LRL", "xref MAP@100"]
    size, memory, time = data.get("size", {}), data.get("memory", {}), data.get("time", {})

    def ratio(part: dict[str, Any], setting: str, key: str) -> str:
        if setting not in part or "full" not in part:
            return "–"
        return f"{part[setting][key] / part['full'][key]:.2f}"

    body = []
    for setting in settings:
        weights = f"{size[setting]['weight_bytes'] / 1e6:,.1f} MB" if setting in size else "–"
        share = f"{size[setting]['weight_bytes'] / size['full']['weight_bytes']:.2%}" if setting in size else "–"
        cells = [setting, weights, share, ratio(memory, setting, "peak_rss_bytes")]
        cells.append(ratio(time, setting, "median_step_seconds"))
        metrics = data["quality"].get(setting, {}).get("metrics", {})
        cells += [_metric(metrics[c]) if c in metrics else "–" for c in columns]
        body.append(cells)
    header = ["setting", "saved weights", "of full", "peak memory ×", "step time ×", *columns]
    return _table(header, body)


def record_table(data: dict[str, Any], attrs: dict[str, str]) -> str:
    """A record's table as stored; it must say how it was measured."""
    tables, name, source = data["tables"], attrs.get("table"), attrs["source"]
    if name not in tables:
        raise ValueError(f"{source}: no table {name!r} (table=...); its tables: {', '.join(tables)}")
    ignored = [key for key in ("columns", "methods", "languages", "pairs") if key in attrs]
    if ignored:
        raise ValueError(f"{source}: a record's table renders as stored; {', '.join(ignored)} do not apply")
    entry = tables[name]
    if not str(entry.get("measured") or "").strip():
        raise ValueError(f"{source}: table {name!r} does not say how it was measured ('measured')")
    header, rows = entry["header"], entry["rows"]
    for row in rows:
        if len(row) != len(header) or not all(isinstance(cell, str) for cell in row):
            raise ValueError(f"{source}: table {name!r}: a row is not {len(header)} strings: {row}")
    return _table(header, rows)


def render(attrs: dict[str, str], root: Path = ROOT) -> str:
    files = [json.loads((root / source).read_text(encoding="utf-8")) for source in _split(attrs["source"]) or []]
    if len(files) > 1:
        if not all("aggregate" in f for f in files):
            raise ValueError(f"{attrs['source']}: only research reports can be pooled")
        files = [{"aggregate": [row for f in files for row in f["aggregate"]]}]
    data = files[0]
    if "tables" in data:
        return record_table(data, attrs)
    if "aggregate" in data:
        return research_table(data, attrs)
    if "quality" in data and "size" in data:
        return adapter_table(data, attrs)
    if "results" in data:
        return demo_table(data, attrs)
    raise ValueError(f"{attrs['source']}: not a research, demo, adapter or record results file")


def update(text: str, root: Path = ROOT) -> str:
    """``text`` with every marked table regenerated from its results file."""

    def replace(match: re.Match[str]) -> str:
        indent = match["indent"]
        table = "\n".join(indent + line for line in render(parse_attributes(match["attrs"]), root).split("\n"))
        return f"{indent}{match['open']}\n{table}\n{indent}<!-- /results -->"

    return BLOCK.sub(replace, text)


def documents(root: Path = ROOT) -> list[Path]:
    return [path for pattern in DOCUMENTS for path in sorted(root.glob(pattern))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a table differs from its results file")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text(encoding="utf-8")
        new = update(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "differ from their results files" if args.check else "regenerated"
    for path in stale:
        print(f"{path}: tables {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
