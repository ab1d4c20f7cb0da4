"""Where relevance stalls: one record (results/<name>/results.json, rendered by scripts/results_tables.py) from
research studies that varied one setting of a method each, with the ranking agreement every run records
(``agreement``: overlap@k, Spearman and teacher mass of the student's ranking against the teacher's English-query
ranking, optical_st.evaluation.RankingAgreementEvaluator) and the tracking of runs made with ``--track-every``.

    python scripts/stall_table.py --output results/stall_nya --method Score-KD --pairs 3200 \\
        base=results/curve_nya_score candidates63=results/stall_nya/candidates63 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _record import conditions, measured  # noqa: E402  (the benchmarks' record conditions)

from optical_st.research.plots import plot_tracking  # noqa: E402
from optical_st.utils import atomic_write_json  # noqa: E402

COLUMNS = ("acc@1 LRL→En", "acc@1 En→LRL", "xref MAP@100", "xref nDCG@10")
AGREEMENT = ("overlap@10", "overlap@100", "spearman", "teacher_mass@100")


def _run(study: Path, method: str, pairs: int) -> dict[str, Any] | None:
    """The study's run of ``method`` at ``pairs`` (a method without training, e.g. zero-shot: at any size)."""
    for path in sorted((study / "records").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["method"] == method and (record.get("train_pairs") == pairs or not record.get("steps")):
            return record
    return None


def _cell(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _tracked(record: dict[str, Any]) -> list[dict[str, float]]:
    """The record's tracking logs with short names; the final evaluation as the last point."""
    logs = [
        {
            "step": log["step"],
            "xref MAP@100": next((v for k, v in log.items() if k.endswith("map@100")), None),
            "overlap@100": log.get("eval_agreement_overlap@100"),
            "spearman": log.get("eval_agreement_spearman"),
        }
        for log in record.get("tracking", [])
    ]
    return [log for log in logs if log["step"] != record["steps"]] + [_final(record)]


def _final(record: dict[str, Any]) -> dict[str, float]:
    agreement = record.get("agreement", {})
    return {"step": record["steps"], "xref MAP@100": record["metrics"].get("xref MAP@100"),
            "overlap@100": agreement.get("overlap@100"), "spearman": agreement.get("spearman")}  # fmt: skip


def _tracking(name: str, logs: list[dict[str, float]]) -> list[list[str]]:
    return [
        [name, str(log["step"]), _cell(log["xref MAP@100"]), _cell(log["overlap@100"], 3), _cell(log["spearman"], 3)]
        for log in logs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="name=study folder (or name=folder@method), one per variant")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--method", default="Score-KD")
    parser.add_argument("--pairs", type=int, default=3200)
    args = parser.parse_args()
    header = ["variant", "steps", *COLUMNS, *AGREEMENT]
    rows, tracking, raw, curves = [], [], {}, {}
    for spec in args.studies:
        name, _, folder = spec.partition("=")
        folder, _, method = folder.partition("@")  # name=folder@method: another method, e.g. zero-shot
        record = _run(ROOT / folder, method or args.method, args.pairs)
        if record is None:
            print(f"{name}: no finished {method or args.method} run at {args.pairs} pairs in {folder}; left out")
            continue
        agreement = record.get("agreement", {})
        rows.append(
            [name, str(record["steps"])]
            + [_cell(record["metrics"].get(c)) for c in COLUMNS]
            + [_cell(agreement.get(a), 3) for a in AGREEMENT]
        )
        curves[name] = _tracked(record)
        tracking += _tracking(name, curves[name])
        raw[name] = {
            "study": folder,
            "metrics": record["metrics"],
            "agreement": agreement,
            "settings": record["settings"],
        }
    cond = conditions()
    description = (
        f"{args.method} at {args.pairs} Chichewa pairs, seed 0, fp32, one setting changed per row (the study folders "
        "in raw); agreement: the student's ranking of the whole English Bible for the bible-xref queries in Chichewa "
        "against the teacher's ranking for the same queries in English (overlap of the top k, Spearman over all "
        "verses, the teacher's softmax mass at T 0.03 on the student's top 100). Tracking at the training "
        "max_seq_length (96), the final rows and the last point of each curve at the evaluation one (128). Tabulated by "
        + measured(cond)
    )
    tables = {
        "variants": {"header": header, "rows": rows, "measured": description, "raw": raw},
        "tracking": {
            "header": ["variant", "step", "xref MAP@100", "overlap@100", "spearman"],
            "rows": tracking,
            "measured": description,
        },
    }
    atomic_write_json(args.output / "results.json", {"tables": tables, "conditions": cond})
    plot_tracking(curves, args.output / "results.png", ["xref MAP@100", "overlap@100"],
                  title=f"{args.method}, {args.pairs} Chichewa pairs: relevance and agreement with the teacher")  # fmt: skip
    print(json.dumps(tables["variants"]["rows"], indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
