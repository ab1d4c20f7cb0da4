"""Running a comparison: load the bitext and the benchmark, train every method with every seed (measuring training
FLOPs and wall time, :mod:`~optical_st.research.training`), evaluate each model on the same benchmark
(:mod:`~optical_st.research.evaluate`), and return one JSON-able record per run, written as it finishes so an
interrupted study resumes."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from optical_st.evaluation.benchmarks import RetrievalBenchmark
from optical_st.evaluation.cache import EmbeddingCache
from optical_st.losses import TeacherCache
from optical_st.research.config import ExperimentConfig
from optical_st.research.evaluate import agreement_evaluator, evaluate_model, load_benchmarks, relevance_tracker
from optical_st.research.methods import ENGLISH_CEILING, Method, english_ceiling
from optical_st.research.training import load_train_pairs, train_one, with_english_pairs
from optical_st.utils import atomic_write_json, portable_path

__all__ = ["read_records", "run_experiment", "run_id", "run_one"]

logger = logging.getLogger(__name__)


def run_one(
    method: Method,
    config: ExperimentConfig,
    seed: int,
    train: Dataset,
    benches: dict[str, RetrievalBenchmark],
    cache: EmbeddingCache | None = None,
    teacher_cache: TeacherCache | None = None,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train (unless zero-shot) and evaluate one method with one seed; returns a JSON-able record."""
    load_before = os.getloadavg()[0]
    cache = cache if cache is not None else EmbeddingCache(config.cache_dir)
    tracker = relevance_tracker(benches, config, cache) if config.track_every else None
    model, record = train_one(method, config, seed, train, teacher_cache, run_dir, tracker)
    # the English ceiling reads the English version of the queries; every other method the low-resource one
    ceiling = method.name == ENGLISH_CEILING
    wanted = {k: b for k, b in benches.items() if k.endswith(":english") == ceiling}
    record.update(evaluate_model(model, wanted, config, cache))
    agreement = None if ceiling else agreement_evaluator(benches, config, cache)
    if agreement is not None:  # how far the student's ranking is from the teacher's English-query ranking
        record["agreement"] = {k.split("_", 1)[1]: v for k, v in agreement(model).items()}
    record["load_average"] = [load_before, os.getloadavg()[0]]
    record["torch_threads"] = torch.get_num_threads()  # of the process that finished the run (see resumed_from_step)
    return record


def run_id(language: str, pairs: int | None, method: Method, seed: int) -> str:
    """A run's name in a study: its record file and checkpoint folder (methods without training have no size)."""
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", method.name).strip("_")
    if method.setup is None:
        return f"{language}-{slug}"
    return f"{language}-{pairs or 'all'}-{slug}-seed{seed}"


def _reusable(record: dict[str, Any], settings: dict[str, Any], method: Method, path: Path) -> dict[str, Any]:
    """A finished record, checked against the current settings: a study never mixes runs of different settings."""
    saved = dict(record.get("settings", {}))
    for key in ("teacher", "student"):  # records written before paths were recorded portably
        if isinstance(saved.get(key), str):
            saved[key] = portable_path(saved[key])
    for f in fields(ExperimentConfig):  # settings added since the record was written: it ran with their defaults
        if f.name in settings and f.name not in saved:
            saved[f.name] = f.default
    changed = sorted(k for k in set(settings) | set(saved) if settings.get(k) != saved.get(k))
    if record.get("description") != method.description:
        changed.append(f"method ({record.get('description')!r} -> {method.description!r})")
    if changed:
        raise ValueError(
            f"{path} was run with other settings ({', '.join(changed)}). Use another --output-dir for these "
            "settings, or delete that record to run it again."
        )
    return record


def read_records(methods: Sequence[Method], config: ExperimentConfig) -> list[dict[str, Any]]:
    """The finished records of a study (``<output_dir>/records/``) that belong to ``methods`` and ``config``, checked
    against its settings, without running anything: a report of a study still running or interrupted."""
    records = []
    for path in sorted((Path(config.output_dir) / "records").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        method = next((m for m in methods if m.name == record["method"]), None)
        if method is None and record["method"] == ENGLISH_CEILING:
            method = english_ceiling()
        if method is not None and record.get("language") in config.languages:
            records.append(_reusable(record, config.run_settings(), method, path))
    order = [m.name for m in methods] + [ENGLISH_CEILING]  # as run_experiment orders them
    untrained = {m.name for m in methods if m.setup is None} | {ENGLISH_CEILING}
    return sorted(
        records,
        key=lambda r: (
            config.languages.index(r["language"]),
            r["method"] not in untrained,
            r.get("train_pairs") or 0,
            order.index(r["method"]),
            r["seed"],
        ),
    )


def run_experiment(methods: Sequence[Method], config: ExperimentConfig) -> list[dict[str, Any]]:
    """Every language x every training size x every method x every seed (methods without training, such as the
    zero-shot teacher, once per language: they have no randomness and no data); returns the run records.

    The study survives interruption: each finished run's record is written (atomically) to
    ``<output_dir>/records/<run>.json`` as it finishes, and running again with the same settings and output folder
    reads those records instead of redoing the runs, and resumes an unfinished run from its last checkpoint
    (``config.save_steps``). Records of other settings are refused, not mixed in."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    settings = config.run_settings()
    read_records(methods, config)  # records of other settings stop the study before it runs anything
    cache = EmbeddingCache(config.cache_dir)
    # one teacher for every run: its outputs on the English training texts are computed by the first trained run and
    # read by the others (the first run's wall time includes them; FLOPs are each method's own)
    teacher_cache = TeacherCache() if config.teacher_cache else None
    records: list[dict[str, Any]] = []
    for language in config.languages:
        benches: dict[str, RetrievalBenchmark] | None = None
        runs = list(methods)
        if config.english_ceiling and any(spec.startswith("bible-xref") for spec in config.benchmarks):
            runs.append(english_ceiling())
        untrained = [m for m in runs if m.setup is None]
        trained = [m for m in runs if m.setup is not None]
        jobs = [(None, m, config.seeds[0]) for m in untrained]
        jobs += [(pairs, m, seed) for pairs in config.train_pairs for m in trained for seed in config.seeds]
        train_sets: dict[int | None, Dataset] = {}
        for pairs, method, seed in jobs:
            name = run_id(language, pairs, method, seed)
            path = out / "records" / f"{name}.json"
            if path.exists():
                records.append(_reusable(json.loads(path.read_text(encoding="utf-8")), settings, method, path))
                logger.info("%s: done before, read from %s", name, path)
                continue
            if benches is None:
                benches = load_benchmarks(config, language)
            if pairs not in train_sets:
                train_sets[pairs] = load_train_pairs(config, language, pairs=pairs)
                logger.info("%s: %d training pairs", language, len(train_sets[pairs]))
            bitext = train_sets[pairs]
            train = with_english_pairs(bitext) if config.english_pairs else bitext
            logger.info("Running %s", name)
            record = run_one(method, config, seed, train, benches, cache, teacher_cache, run_dir=out / "runs" / name)
            record.update(
                language=language,
                train_pairs=len(bitext) if method.setup is not None else 0,
                run_id=name,
                settings=settings,
            )
            atomic_write_json(path, record)
            records.append(record)
            shutil.rmtree(out / "runs" / name, ignore_errors=True)  # its checkpoints: the record is what stays
    logger.info("Embedding cache: %d hits, %d misses (%s)", cache.hits, cache.misses, cache.folder)
    return records
