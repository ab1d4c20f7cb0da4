"""scripts/stall_table.py: one row per variant from its study's record, the tracking with the final evaluation as the
last point, and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _study(folder: Path, final_map: float, tracked: list[tuple[int, float, float]]) -> Path:
    record = {
        "method": "Score-KD", "train_pairs": 3200, "steps": 100, "settings": {"learning_rate": 5e-5},
        "metrics": {"acc@1 LRL→En": 0.9, "acc@1 En→LRL": 0.8, "xref MAP@100": final_map, "xref nDCG@10": 0.05},
        "agreement": {"overlap@10": 0.2, "overlap@100": 0.3, "spearman": 0.8, "teacher_mass@100": 0.02},
        "tracking": [{"step": s, "eval_x_cosine_map@100": m, "eval_agreement_overlap@100": o,
                      "eval_agreement_spearman": 0.7} for s, m, o in tracked],
    }  # fmt: skip
    (folder / "records").mkdir(parents=True)
    (folder / "records" / "nya-3200-Score-KD-seed0.json").write_text(json.dumps(record))
    other = {**record, "train_pairs": 800, "metrics": {**record["metrics"], "xref MAP@100": 0.5}}
    (folder / "records" / "nya-800-Score-KD-seed0.json").write_text(json.dumps(other))  # another size: not read
    return folder


def test_the_stall_table_reads_each_variant_and_ends_its_curve_at_the_final_evaluation(tmp_path):
    base = _study(tmp_path / "base", 0.039, [(50, 0.033, 0.31), (100, 0.0389, 0.30)])
    wide = _study(tmp_path / "wide", 0.041, [(50, 0.035, 0.33)])
    zero = tmp_path / "zero" / "records"
    zero.mkdir(parents=True)
    (zero / "nya-zero-shot.json").write_text(json.dumps({
        "method": "zero-shot", "train_pairs": 0, "steps": 0, "settings": {}, "metrics": {"xref MAP@100": 0.0226},
        "agreement": {"overlap@100": 0.13, "spearman": 0.5},
    }))  # fmt: skip
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stall_table.py"), "--output", str(out), f"base={base}",
         f"wide={wide}", f"missing={tmp_path / 'none'}", f"zero-shot={tmp_path / 'zero'}@zero-shot"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert "missing: no finished Score-KD run at 3200 pairs" in run.stdout
    tables = json.loads((out / "results.json").read_text())["tables"]
    assert [row[:2] + row[4:5] for row in tables["variants"]["rows"]] == [
        ["base", "100", "0.0390"],
        ["wide", "100", "0.0410"],
        ["zero-shot", "0", "0.0226"],
    ]
    assert tables["tracking"]["rows"] == [
        ["base", "50", "0.0330", "0.310", "0.700"],
        ["base", "100", "0.0390", "0.300", "0.800"],  # the final evaluation replaces the tracked step 100
        ["wide", "50", "0.0350", "0.330", "0.700"],
        ["wide", "100", "0.0410", "0.300", "0.800"],
        ["zero-shot", "0", "0.0226", "0.130", "0.500"],  # untrained: read at any size, one point at step 0
    ]
    assert (out / "results.png").stat().st_size > 10_000
