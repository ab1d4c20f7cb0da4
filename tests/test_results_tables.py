"""Results tables in README.md and docs/ are generated from results/*/results.json (scripts/results_tables.py): the
committed documents match their results files, the generator computes what a hand check gives, the benchmarks write
record files it renders, and no table outside a results block holds a number that looks measured."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_tables", ROOT / "scripts" / "results_tables.py")
results_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_tables)


def _benchmark(name: str):
    """A benchmark script as a module; its folder goes on sys.path, as when it runs (it imports ``_record``)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_committed_tables_match_their_results_files():
    stale = [
        p.name for p in results_tables.documents() if results_tables.update(p.read_text("utf8")) != p.read_text("utf8")
    ]
    assert not stale, f"run `python scripts/results_tables.py`: tables out of date in {stale}"
    blocks = sum(p.read_text("utf8").count("<!-- results ") for p in results_tables.documents())
    # README's demo and adapter tables, docs/demo.md's, the six of docs/research_results.md and the 12 record tables
    # of docs/benchmarks.md, demo_tuning.md, hard_negatives.md and ot_multilingual.md
    assert blocks >= 21


def test_every_record_table_is_shown_and_says_how_it_was_measured():
    """Each table of a committed record file appears in a document, and its provenance is written down."""
    shown = set()
    for document in results_tables.documents():
        for match in results_tables.BLOCK.finditer(document.read_text("utf8")):
            attrs = results_tables.parse_attributes(match["attrs"])
            shown.add((attrs["source"], attrs.get("table")))
    records = {}
    for path in sorted(ROOT.glob("results/*/results.json")):
        data = json.loads(path.read_text("utf8"))
        if "tables" in data:
            records[path.relative_to(ROOT).as_posix()] = data["tables"]
    # demo_tuning, ot_multilingual and the three benchmarks' records
    assert sum(len(tables) for tables in records.values()) >= 12
    for source, tables in records.items():
        for name, table in tables.items():
            assert (source, name) in shown, f"{source} table {name} is in no document"
            assert len(table["measured"]) > 80, f"{source} table {name}: say what ran, where and when"


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
    assert results_tables._split("Score-KD + OT, teacher candidates;OT-KD") == [
        "Score-KD + OT, teacher candidates",
        "OT-KD",
    ]
    assert results_tables._split("OT-KD, zero-shot") == ["OT-KD", "zero-shot"]


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


def _record(tmp_path: Path) -> Path:
    tables = {
        "speed": {
            "header": ["setting", "ms", "note"],
            "rows": [["a", "1.50", ""], ["**b**", "12,345", "noisy"]],
            "measured": "`python bench.py` at commit abc1234 on 2026-12-03, 2 threads, load average 0.1",
            "raw": {"a": 0.0015, "b": 12.345},
        },
        "other": {"header": ["x"], "rows": [], "measured": "by hand"},
    }
    path = tmp_path / "results" / "bench" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"tables": tables, "conditions": {"torch": "2.13.0"}}))
    return path


def test_record_table_renders_as_stored(tmp_path):
    _record(tmp_path)
    doc = "- a list item:\n\n  <!-- results source=results/bench/results.json table=speed -->\n  old\n  <!-- /results -->\n"
    out = results_tables.update(doc, tmp_path)
    assert out == (
        "- a list item:\n\n"
        "  <!-- results source=results/bench/results.json table=speed -->\n"
        "  | setting | ms | note |\n"
        "  |---|---|---|\n"
        "  | a | 1.50 | |\n"
        "  | **b** | 12,345 | noisy |\n"
        "  <!-- /results -->\n"
    )  # the marker's indentation kept (a table in a list item); an empty cell is "| |"
    assert results_tables.update(out, tmp_path) == out  # regenerating changes nothing
    flat = "<!-- results source=results/bench/results.json table=speed -->\n<!-- /results -->"
    assert results_tables.update(flat, tmp_path).split("\n")[1] == "| setting | ms | note |"


def test_record_errors(tmp_path):
    path = _record(tmp_path)
    with pytest.raises(ValueError, match=r"no table 'speeds'.*its tables: speed, other"):
        results_tables.update(
            "<!-- results source=results/bench/results.json table=speeds -->\n<!-- /results -->", tmp_path
        )
    with pytest.raises(ValueError, match=r"no table None.*its tables: speed, other"):
        results_tables.update("<!-- results source=results/bench/results.json -->\n<!-- /results -->", tmp_path)
    with pytest.raises(ValueError, match="columns do not apply"):
        doc = "<!-- results source=results/bench/results.json table=speed columns=ms -->\n<!-- /results -->"
        results_tables.update(doc, tmp_path)
    data = json.loads(path.read_text())
    data["tables"]["speed"]["measured"] = " "
    data["tables"]["other"]["rows"] = [["1", "2"]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not say how it was measured"):
        results_tables.update(
            "<!-- results source=results/bench/results.json table=speed -->\n<!-- /results -->", tmp_path
        )
    with pytest.raises(ValueError, match="a row is not 1 strings"):
        results_tables.update(
            "<!-- results source=results/bench/results.json table=other -->\n<!-- /results -->", tmp_path
        )


def _shows(path: Path, table: str, root: Path) -> str:
    """The markdown a document gets for ``table`` of the record at ``path``."""
    source = path.relative_to(root).as_posix()
    return results_tables.update(f"<!-- results source={source} table={table} -->\n<!-- /results -->", root)


def test_ot_kernel_record(tmp_path):
    bench = _benchmark("ot_kernel")
    fake = [
        {"tol": tol, "dim": 16, "B": B, "n": n, "iters": 100, "optical_st_ms": 1.0, "pot_batched_ms": ms, "pot_loop_ms": None}
        for tol, B, n, ms in ((1e-4, 32, 32, 2.04), (1e-4, 128, 64, 12.06), (2.5e-5, 32, 32, 0.9))
    ]  # fmt: skip
    header, rows = bench.speedup_table(fake)
    assert header == ["tol", "width", "B=32, n=m=32", "B=128, n=m=64"]  # docs/benchmarks.md's columns
    assert rows == [["1e-4", "16", "2.0x", "12.1x"], ["2.5e-5", "16", "0.9x", "–"]]
    path = bench.write_record(tmp_path / "r.json", bench.record_tables(fake, {"reg": 0.05}), bench.conditions(["x.py"]))
    written = json.loads(path.read_text())
    assert written["tables"]["speed-up"]["raw"]["measurements"] == fake
    assert written["conditions"]["torch"] and written["conditions"]["load_average_end"]
    assert "| 1e-4 | 16 | 2.0x | 12.1x |" in _shows(path, "speed-up", tmp_path)
    assert "| 1e-4 | 16 | 128 | 64 | 100 | 1.00 | 12.06 | (skipped) | 12.1x |" in _shows(path, "timings", tmp_path)


def test_ot_kernel_smoke_run_writes_a_record(tmp_path, monkeypatch, capsys):
    """The script end to end on two tiny problems: its --output file renders through results_tables."""
    bench = _benchmark("ot_kernel")
    out = tmp_path / "results" / "bench_ot_kernel" / "results.json"
    argv = ["ot_kernel.py", "--tols", "1e-3", "--dims", "8", "--shapes", "2x4", "4x4", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--output", str(out)])
    bench.main()
    assert "| 1e-3 | 8 |" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["conditions"]["command"].startswith("python ot_kernel.py --tols 1e-3")
    assert [len(m) for m in (record["tables"]["speed-up"]["rows"], record["tables"]["timings"]["rows"])] == [1, 2]
    shown = _shows(out, "speed-up", tmp_path).split("\n")
    assert shown[1:3] == ["| tol | width | B=2, n=m=4 | B=4, n=m=4 |", "|---|---|---|---|"]
    assert re.fullmatch(r"\| 1e-3 \| 8 \| \d+\.\dx \| \d+\.\dx \|", shown[3])


def test_step_overhead_table_gives_the_published_format():
    bench = _benchmark("step_overhead")
    seconds = {"cpu": {"OT-KD": 8.789, "MSE-KD (online)": 8.115}}
    header, rows = bench.overhead_table(seconds, {"OT-KD": 117_700_000, "MSE-KD (online)": 117_700_000})
    assert header == ["method", "trainable params", "AdamW state", "ms/step", "× MSE-KD (online)"]
    assert rows[0] == ["OT-KD", "117.7M", "898 MB", "8,789", "1.08"]
    header, _ = bench.overhead_table(
        {"cpu": seconds["cpu"], "cuda": seconds["cpu"]}, {"OT-KD": 1, "MSE-KD (online)": 1}
    )
    assert header[3:] == ["cpu ms/step", "cpu × MSE-KD (online)", "cuda ms/step", "cuda × MSE-KD (online)"]


def test_mining_table_recomputes_the_committed_run(tmp_path):
    """The script's table, from the committed run's raw numbers (plus the refresh's anchor count, which that run's
    output did not keep), is the committed table: every other cell is checked against the raw numbers."""
    bench = _benchmark("mining_overhead")
    committed = json.loads((ROOT / "results" / "bench_mining_overhead" / "results.json").read_text("utf8"))["tables"]
    raw = dict(committed["cost"]["raw"])
    refresh_anchors = 1624
    raw["minings"] = [
        {"step": 0, "seconds": raw["mining_first_s"], "anchors": raw["anchors_mined"] - refresh_anchors,
         "pool_seconds": raw["pool_encoding_s"]},
        {"step": 200, "seconds": raw["mining_refresh_s"], "anchors": refresh_anchors},
    ]  # fmt: skip
    header, rows = bench.cost_table(raw)
    assert [header, *rows] == [committed["cost"]["header"], *committed["cost"]["rows"]]
    path = bench.write_record(tmp_path / "r.json", {"cost": {"header": header, "rows": rows}}, bench.conditions(["x"]))
    assert "| **mining / training wall time** | **7.3%** (target ≤ 15%) |" in _shows(path, "cost", tmp_path)


# A table cell that looks measured: a decimal with a unit of time, size, ratio or share (6.9 s, 1.24x, 7.3%, 898.0 MB),
# a mean ± std, or a bare value with three decimals or more (0.8409, 1.136). Settings (lr 5e-5, reg 0.05, tol 1e-4,
# 10% warm-up, 118M parameters) do not match.
MEASURED = re.compile(
    r"\d\.\d+\s*(?:x|×|%|ms|s|min|h|MB|GB|MiB|GiB|KB)(?![\w])|\d\.\d+\s*±|(?<![\w.])\d*\.\d{3,}(?![\w.])"
)


def measured_cells(text: str) -> list[str]:
    """Cells of the markdown tables outside results blocks (and outside code) that hold a measured-looking number."""
    text = re.sub(r"^\s*```.*?^\s*```", "", results_tables.BLOCK.sub("", text), flags=re.S | re.M)
    cells = [
        c.strip()
        for line in text.splitlines()
        if line.lstrip().startswith("|")
        for c in line.strip().strip("|").split("|")
    ]
    return [c for c in cells if MEASURED.search(c)]


def test_measured_cells_scan():
    assert measured_cells("| a | 6.9 s |\n| b | 1.24x |\n| c | 0.8409 |\n| d | 5.29 ± 0.27 |\n| e | 7.3% |") == [
        "6.9 s", "1.24x", "0.8409", "5.29 ± 0.27", "7.3%"
    ]  # fmt: skip
    settings = (
        "| lr | 5e-5 |\n| reg | 0.05 |\n| tol | 1e-4 |\n| warm-up | 10% |\n| torch | 2.13.0 |\n| w | `weight=1.0` |"
    )
    assert measured_cells(settings) == []
    block = "<!-- results source=x table=t -->\n| a | 6.9 s |\n<!-- /results -->\n```\n| b | 0.8409 |\n```\n"
    assert measured_cells(block) == []


def test_no_measured_number_in_a_table_outside_a_results_block():
    """Every measured number in a README/docs table comes from results/: a table holding one goes into a results
    file (a record, ``table=``, for runs that only the docs kept) and between results markers."""
    found = {p.relative_to(ROOT).as_posix(): measured_cells(p.read_text("utf8")) for p in results_tables.documents()}
    found = {path: cells for path, cells in found.items() if cells}
    assert not found, (
        f"measured numbers in tables typed by hand (move them to results/, see scripts/results_tables.py): {found}"
    )
