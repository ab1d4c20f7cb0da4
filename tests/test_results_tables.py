"""Results tables in README.md and docs/ are generated from results/*/results.json (scripts/results_tables.py): the
committed documents match their results files, and the generator computes what a hand check gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_tables", ROOT / "scripts" / "results_tables.py")
results_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_tables)


def test_committed_tables_match_their_results_files():
    stale = [
        p.name for p in results_tables.documents() if results_tables.update(p.read_text("utf8")) != p.read_text("utf8")
    ]
    assert not stale, f"run `python scripts/results_tables.py`: tables out of date in {stale}"
    blocks = sum(p.read_text("utf8").count("<!-- results ") for p in results_tables.documents())
    assert blocks >= 6  # README's demo and adapter tables, the RQ tables in docs/research_results.md, the demo doc


def _research(tmp_path: Path) -> Path:
    runs = {"zero-shot": [0.5], "OT-KD": [0.6, 0.8]}
    aggregate = []
    for method, values in runs.items():
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        aggregate.append({"method": method, "language": "nya", "train_pairs": 800 if method != "zero-shot" else 0,
                          "n": len(values), "xref MAP@100": [mean, std], "train FLOPs": [1.234e12 * (method != "zero-shot"), 0],
                          "train s": [0.0, 0.0], "steps": 25 if method != "zero-shot" else 0})  # fmt: skip
    path = tmp_path / "results" / "study" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"aggregate": aggregate}))
    return path


def test_research_table_by_hand(tmp_path):
    _research(tmp_path)
    doc = "text\n<!-- results source=results/study/results.json columns=n,xref MAP@100,train FLOPs -->\nold\n<!-- /results -->\n"
    out = results_tables.update(doc, tmp_path)
    # OT-KD over two seeds: mean 0.7, sample std 0.1414; zero-shot untrained: no n, FLOPs 0
    assert "| OT-KD | 2 | 0.7000 ± 0.1414 | 1.23e+12 |" in out
    assert "| zero-shot | – | 0.5000 | 0 |" in out
    assert "old" not in out and out.startswith("text\n<!-- results ") and out.endswith("<!-- /results -->\n")
    assert results_tables.update(out, tmp_path) == out  # regenerating changes nothing


def test_methods_filter_order_and_errors(tmp_path):
    _research(tmp_path)
    doc = "<!-- results source=results/study/results.json methods=OT-KD,zero-shot columns=xref MAP@100 -->\n<!-- /results -->"
    out = results_tables.update(doc, tmp_path)
    assert out.index("| OT-KD |") < out.index("| zero-shot |")
    with pytest.raises(ValueError, match="no rows for methods"):
        results_tables.update(doc.replace("OT-KD", "MSE-KD"), tmp_path)
    with pytest.raises(ValueError, match="source="):
        results_tables.update("<!-- results columns=n -->\n<!-- /results -->", tmp_path)


def test_adapter_table_ratios(tmp_path):
    data = {
        "size": {"full": {"weight_bytes": 1_000_000_000}, "lora": {"weight_bytes": 5_000_000}},
        "memory": {"full": {"peak_rss_bytes": 4.0e9}, "lora": {"peak_rss_bytes": 3.0e9}},
        "time": {"full": {"median_step_seconds": 10.0}, "lora": {"median_step_seconds": 9.0}},
        "quality": {"full": {"metrics": {"xref MAP@100": 0.03}}, "lora": {"metrics": {"xref MAP@100": 0.031}}},
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    out = results_tables.update("<!-- results source=a.json columns=xref MAP@100 -->\n<!-- /results -->", tmp_path)
    assert "| lora | 5.0 MB | 0.50% | 0.75 | 0.90 | 0.0310 |" in out
    assert "| full | 1,000.0 MB | 100.00% | 1.00 | 1.00 | 0.0300 |" in out
