"""OPTICAL's own setting: a well-trained *English-only* retrieval model as the teacher (all-MiniLM-L6-v2, frozen,
reading English), a multilingual student (a trainable multilingual-e5-small reading the low-resource language).

The student starts outside the teacher's space (another model, another tokenizer), so the run adds what the
literature does to move it there: (English, English) rows beside the bitext (``--english-pairs``), a pooled cosine
term beside the OT and InfoNCE terms (``--sentence-weight``), a larger learning rate, and a closed-form head start
(``--student-map procrustes``: a linear map from the student's token space to the teacher's fitted on the training
English). Rows: the teacher reading the LRL queries zero-shot, the teacher reading the English queries (the ceiling
to beat), the student with the map alone (no training), and the trained students. Writes
results/english_teacher/results.md, results.json and plots; resumable like every research command.

    python examples/english_teacher.py                                 # Chichewa, 3,200 pairs, seed 0, CPU
    python examples/english_teacher.py --train-pairs 0 --device cuda   # the whole bitext
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from optical_st.data import default_teacher
from optical_st.research import (
    ExperimentConfig,
    add_cli_arguments,
    config_from_args,
    contrastive_distillation,
    ot_distillation,
    score_distillation,
    write_report,
    zero_shot,
)
from optical_st.research.config import default_multilingual_model
from optical_st.research.evaluate import evaluate_model, load_benchmarks
from optical_st.research.runner import read_records, run_experiment
from optical_st.research.training import fit_map, load_train_pairs
from optical_st.utils import atomic_write_json

QUESTION = (
    "**The paper's setting.** With an English-only retrieval model as the frozen teacher and a multilingual student, "
    "does OT distillation on bitext carry the teacher's query-document matching over to the low-resource language, "
    "above the best self-distilled student and above what the multilingual model gives for free?"
)


def map_only_record(config: ExperimentConfig, language: str, compute: bool = True) -> dict | None:
    """The student with the closed-form map and no training: how far the map alone brings it (a record like the
    runner's, written once to records/). ``compute=False`` (a ``--report-only`` rewrite): the record if it is
    there, else None."""
    from optical_st.evaluation.cache import EmbeddingCache
    from optical_st.modeling import build_optical_model

    path = Path(config.output_dir) / "records" / f"{language}-student-map-only.json"
    if path.exists():
        import json

        return json.loads(path.read_text(encoding="utf-8"))
    if not compute:
        return None
    model = build_optical_model(config.resolved_teacher(), config.student, device="cpu")
    start = time.perf_counter()
    stats, flops = fit_map(model, load_train_pairs(config, language, pairs=config.train_pairs[0]), config)
    benches = {k: b for k, b in load_benchmarks(config, language).items() if not k.endswith(":english")}
    record = {
        "method": f"student + {config.student_map} map, no training",
        "seed": 0,
        "description": "the student with the closed-form map fitted on the training English; no training",
        "language": language,
        "train_pairs": 0,
        "steps": 0,
        "train_seconds": time.perf_counter() - start,
        "student_map": stats,
        "flops": {"total": float(flops), "per_step": {}, "one_off": {"student_map": flops}},
        "run_id": path.stem,
        "settings": config.run_settings(),
    }
    record.update(evaluate_model(model, benches, config, EmbeddingCache(config.cache_dir)))
    atomic_write_json(path, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ExperimentConfig(
        output_dir="results/english_teacher",
        teacher=default_teacher(),
        student=default_multilingual_model(),
        train_pairs=(3200,),
        seeds=(0,),
        learning_rate=1e-4,
        english_pairs=True,
        student_map="procrustes",
    )
    add_cli_arguments(parser, defaults)
    parser.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (MiniLM's: 0.05)")
    parser.add_argument("--sentence-weight", type=float, default=1.0, help="pooled cosine term's weight")
    parser.add_argument(
        "--score-temperature", type=float, default=0.05, help="score distillation temperature (MiniLM's scores)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["zero-shot", "map-only", "contrastive+ot"],
        choices=["zero-shot", "map-only", "ot", "contrastive", "contrastive+ot", "score", "score+ot"],
    )
    args = parser.parse_args()
    config = config_from_args(args)
    pooled = {"temperature": args.temperature}
    available = {
        "zero-shot": zero_shot("teacher zero-shot (reads the LRL)"),
        "ot": ot_distillation("OT-KD + cosine", sentence_weight=args.sentence_weight),
        "contrastive": contrastive_distillation("Contrastive-KD", **pooled),
        "contrastive+ot": ot_distillation(
            "Contrastive-KD + OT + cosine", contrastive_weight=1.0, sentence_weight=args.sentence_weight, **pooled
        ),
        # MiniLM's own ranking of English candidates (relational targets), not its positions
        "score": score_distillation(temperature=args.score_temperature),
        "score+ot": score_distillation("Score-KD + OT", temperature=args.score_temperature, with_ot=True),
    }
    start = time.perf_counter()
    records = []
    if "map-only" in args.methods and config.student_map:  # first: cheap, and it says how far the map alone goes
        maps = (map_only_record(config, language, compute=not args.report_only) for language in config.languages)
        records += [record for record in maps if record is not None]
    methods = [available[m] for m in args.methods if m in available]
    records += read_records(methods, config) if args.report_only else run_experiment(methods, config)
    table = write_report(
        records,
        config,
        title="An English-only retrieval teacher (all-MiniLM-L6-v2) and a multilingual student",
        question=QUESTION,
        wall_seconds=0.0 if args.report_only else time.perf_counter() - start,
    )
    print(table)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    main()
