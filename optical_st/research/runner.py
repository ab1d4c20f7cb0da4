"""Running a comparison: load the bitext and the benchmark, train every method with every seed (measuring training
FLOPs and wall time), evaluate each model on the same benchmark, and return one JSON-able record per run."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.util import mine_hard_negatives
from torch import nn
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from optical_st.alignment import fit_student_map
from optical_st.evaluation.agreement import RankingAgreementEvaluator
from optical_st.evaluation.benchmarks import RetrievalBenchmark, load_benchmark
from optical_st.evaluation.cache import EmbeddingCache
from optical_st.evaluation.flops import FlopsCallback, PhaseFlopCounter
from optical_st.losses import OTDiagnosticsCallback, OTDistillationLoss, TeacherCache
from optical_st.modeling import build_optical_model, column_prompts
from optical_st.research.config import ExperimentConfig, resolve_bf16, resolve_device
from optical_st.research.methods import ENGLISH_CEILING, Method, TrainSetup, english_ceiling
from optical_st.routes import find_router
from optical_st.sampling import DynamicHardNegativeSampler
from optical_st.utils import portable_path

__all__ = [
    "atomic_write_json",
    "evaluate_model",
    "last_eval_metrics",
    "load_benchmarks",
    "load_train_pairs",
    "read_records",
    "run_experiment",
    "run_id",
    "run_one",
    "save_json",
    "summarize",
    "timed_evaluation",
    "train_one",
]

logger = logging.getLogger(__name__)


_ONE_SIZE = object()


def load_train_pairs(
    config: ExperimentConfig,
    language: str = "nya",
    seed: int = 0,
    pairs: int | None = _ONE_SIZE,  # type: ignore[assignment]
) -> Dataset:
    """The training bitext as a ``Dataset`` with columns ``english`` and ``lrl`` (empty rows dropped): a seeded
    sample of ``pairs`` rows (None: all; default: the config's one training size)."""
    pairs = config.single_train_pairs if pairs is _ONE_SIZE else pairs
    lrl_column = config.lrl_column
    if config.train_data == "bible":
        from optical_st.data import bible_language, load_bible_bitext

        cap = {"train": pairs} if pairs else None
        data = load_bible_bitext({"train": range(1, 45)}, language=language, max_pairs=cap, seed=seed)["train"]
        lrl_column = lrl_column or bible_language(language).column
    elif config.train_data.startswith("hub:"):
        from datasets import load_dataset

        dataset_id, _, subset = config.train_data[len("hub:") :].partition(":")
        data = load_dataset(dataset_id, subset or None, split="train")
        if pairs and pairs < len(data):
            data = data.shuffle(seed=seed).select(range(pairs))
    else:
        raise ValueError(f"Unknown train_data {config.train_data!r}; use 'bible' or 'hub:<dataset id>[:<config>]'.")
    missing = {config.english_column, lrl_column} - set(data.column_names)
    if missing:
        raise ValueError(
            f"The training data has no column(s) {sorted(map(str, missing))}; its columns are {data.column_names}. "
            "Set english_column / lrl_column (--english-column / --lrl-column)."
        )
    data = data.select_columns([config.english_column, lrl_column])
    data = data.rename_columns({config.english_column: "english", lrl_column: "lrl"})
    return data.filter(lambda row: bool(row["english"].strip()) and bool(row["lrl"].strip()))


def add_hard_negatives(
    train: Dataset, model: SentenceTransformer, num_negatives: int = 1, batch_size: int = 64, **kwargs: Any
) -> Dataset:
    """Static hard negatives, mined once: for each row, the English texts of the other rows that ``model`` ranks
    closest to its LRL text (``encode_query``, the student) among all English texts (``encode_document``, the
    teacher), through sentence-transformers' :func:`~sentence_transformers.util.mine_hard_negatives` (the positive
    is never its own negative; ``kwargs`` go to it: ``range_min``, ``relative_margin``, ...).

    Mine with the model training starts from (its query route is then still the teacher's copy), once, and give the
    result to every method: they then share the data and the negatives, and a method whose loss takes no negatives
    uses only ``(english, lrl)``. The miner treats every English text paired with an LRL text as its positive (never
    its negative) and keeps one row per LRL text: of the demo's 1,600 Bible pairs, 7 whose Chichewa verse repeats
    go (1,593 rows). Rows it cannot give ``num_negatives`` negatives are dropped too.

    Returns:
        A ``Dataset`` with columns ``english``, ``lrl``, ``negative_1`` ... ``negative_<num_negatives>``.
    """
    mined = mine_hard_negatives(
        train.select_columns(["lrl", "english"]),
        model,
        anchor_column_name="lrl",
        positive_column_name="english",
        num_negatives=num_negatives,
        output_format="n-tuple",
        batch_size=batch_size,
        verbose=False,
        **kwargs,
    )
    negatives = [f"negative_{i}" for i in range(1, num_negatives + 1)]
    return mined.select_columns(["english", "lrl", *negatives])


def load_benchmarks(config: ExperimentConfig, language: str) -> dict[str, RetrievalBenchmark]:
    """The benchmarks of ``config.benchmarks`` for one language (``{lang}`` filled in), plus, with
    ``english_ceiling``, the relevance benchmarks with English queries (key ``"<name>:english"``)."""
    benches: dict[str, RetrievalBenchmark] = {}
    for spec in config.benchmarks:
        name = spec.format(lang=language)
        kwargs: dict[str, Any] = {}
        if name.startswith("bible."):
            kwargs["max_pairs"] = config.eval_pairs
        if name.startswith("bible-xref"):
            kwargs["corpus"] = config.xref_corpus
        benches[name] = load_benchmark(name, **kwargs)
        if name.startswith("bible-xref") and config.english_ceiling:
            benches[f"{name}:english"] = load_benchmark(name, english_queries=True, **kwargs)
    return benches


def _set_max_seq_length(model: SentenceTransformer, length: int) -> None:
    router = find_router(model)
    routes = list(router.sub_modules.values()) if router is not None else [model]
    for route in routes:
        for module in route:
            if hasattr(module, "max_seq_length"):
                module.max_seq_length = length


def summarize(raw: dict[str, float], bench: RetrievalBenchmark, fn: str) -> dict[str, float]:
    """The report's metric names from an evaluator's raw keys: translation benchmarks (bitext) give accuracy@1 in
    both directions, MRR@10 and nDCG@10; relevance benchmarks give ``xref``-prefixed MAP@100, nDCG@10, R@100, MRR@10."""
    if bench.bitext is not None:
        forward, reverse = f"{bench.name}_lrl2en_{fn}_", f"{bench.name}_en2lrl_{fn}_"
        keys = {"acc@1 LRL→En": forward + "accuracy@1", "acc@1 En→LRL": reverse + "accuracy@1"}
        keys.update({"MRR@10": forward + "mrr@10", "nDCG@10": forward + "ndcg@10"})
    else:
        prefix = "xref " if bench.name.startswith("bible-xref") else ""
        head = f"{bench.name}_{fn}_"
        keys = {f"{prefix}{m}": head + k for m, k in (("MAP@100", "map@100"), ("nDCG@10", "ndcg@10"))}
        keys.update({f"{prefix}R@100": head + "recall@100", f"{prefix}MRR@10": head + "mrr@10"})
        keys[f"{prefix}mAP@20"] = head + "map@20"
    return {metric: float(raw[key]) for metric, key in keys.items() if key in raw}


def evaluate_model(
    model: SentenceTransformer,
    benches: dict[str, RetrievalBenchmark],
    config: ExperimentConfig,
    cache: EmbeddingCache | None = None,
) -> dict[str, Any]:
    """``{"metrics": report names -> value, "raw_metrics": evaluator keys -> value, "eval_seconds": s}`` of a model on
    the benchmarks; the frozen teacher's corpus embeddings go through ``cache``."""
    cache = cache if cache is not None else EmbeddingCache(config.cache_dir)
    _set_max_seq_length(model, config.eval_max_seq_length)
    metrics: dict[str, float] = {}
    raw_all: dict[str, float] = {}
    start = time.perf_counter()
    for bench in benches.values():
        evaluator = bench.evaluator(
            batch_size=config.eval_batch_size,
            accuracy_at_k=[1, 10],
            mrr_at_k=[10],
            ndcg_at_k=[10],
            map_at_k=[20, 100],
            precision_recall_at_k=[1, 100],
            embedding_cache=cache,
            write_csv=False,
        )
        raw = evaluator(model)
        raw_all.update({k: float(v) for k, v in raw.items()})
        # the English ceiling's row shows its scores under the same names: its method name says what it is
        metrics.update(summarize(raw, bench, model.similarity_fn_name or "cosine"))
    return {"metrics": metrics, "raw_metrics": raw_all, "eval_seconds": time.perf_counter() - start}


class _ResumeState(TrainerCallback):
    """Saves what the trainer's checkpoint lacks and a resumed run needs (the FLOPs counted so far, the training
    seconds spent so far) beside each checkpoint, and reads it back on resume."""

    FILE = "optical_run_state.json"

    def __init__(self, flops: FlopsCallback, start: float, spent: float = 0.0) -> None:
        self.flops, self.start, self.spent = flops, start, spent

    def seconds(self) -> float:
        return self.spent + time.perf_counter() - self.start

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            atomic_write_json(folder / self.FILE, {"flops": self.flops.state_dict(), "train_seconds": self.seconds()})

    @classmethod
    def load(cls, checkpoint: str) -> dict[str, Any]:
        path = Path(checkpoint) / cls.FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Cannot resume from {checkpoint}: {path.name} is missing or damaged ({error}). Delete the folder "
                f"{Path(checkpoint).parent} to run this method and seed again from the start."
            ) from error


def train_one(
    method: Method,
    config: ExperimentConfig,
    seed: int,
    train: Dataset,
    teacher_cache: TeacherCache | None = None,
    run_dir: str | Path | None = None,
    tracker: Any = None,
) -> tuple[SentenceTransformer, dict[str, Any]]:
    """Train one method with one seed (or, for a method without training, load its model): ``(model, record)``, the
    record holding what training cost (steps, seconds, measured FLOPs, the training logs). ``teacher_cache`` is given
    to the method's loss when it takes one (the distillation losses): runs of the same teacher then share the frozen
    teacher's outputs; the FLOPs stay each method's own (measured steps bypass the cache).

    ``run_dir``: the trainer's output folder (default ``<output_dir>/runs/<method>-seed<seed>``). With
    ``config.save_steps`` the run checkpoints there, and a run whose folder holds a checkpoint resumes from the last
    one (weights, optimizer, scheduler, RNG, data position, a sampler's negatives table, the FLOPs and seconds so far).
    ``tracker``: an evaluator run every ``config.track_every`` steps (:func:`relevance_tracker`); its logs go to the
    record's ``tracking``.
    """
    device = resolve_device(config)
    set_seed(seed)
    record: dict[str, Any] = {"method": method.name, "seed": seed, "description": method.description}
    if method.setup is None:
        model = SentenceTransformer(method.model or config.resolved_teacher(), device=device)
        record.update(train_seconds=0.0, steps=0, flops={"total": 0.0, "per_step": {}, "one_off": {}})
        return model, record
    run_dir = Path(run_dir or Path(config.output_dir) / "runs" / f"{method.name}-seed{seed}")
    checkpoint = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    model = build_optical_model(
        config.resolved_teacher(), config.student, train_word_embeddings=config.train_word_embeddings, device=device
    )
    _set_max_seq_length(model, config.max_seq_length)
    start = time.perf_counter()
    plan = _set_up(method, model, train, config, record)
    cache_counts = _share_teacher_cache(plan.loss, teacher_cache)
    args = _training_arguments(config, model, plan, run_dir, seed, device, tracker is not None)
    flops, resume = _measurements(model, plan, config, start, checkpoint)
    if checkpoint is not None:
        logger.info("Resuming %s seed %d from %s", method.name, seed, checkpoint)
    callbacks = [flops, resume]
    if isinstance(plan.loss, OTDistillationLoss):
        callbacks.append(OTDiagnosticsCallback(plan.loss))
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=plan.train_dataset,
        loss=plan.loss,
        callbacks=callbacks,
        evaluator=tracker,
    )
    if plan.batch_sampler is not None:
        DynamicHardNegativeSampler.attach(trainer)
    with flops.counting(*plan.counted_phases):  # e.g. a sampler's re-mining, which it runs as a work phase
        trainer.train(resume_from_checkpoint=checkpoint)
    record.update(_training_record(trainer, flops, resume, checkpoint))
    if cache_counts is not None:
        hits, misses = cache_counts
        record["teacher_cache"] = {"hits": teacher_cache.hits - hits, "misses": teacher_cache.misses - misses}
    return model, record


def _set_up(
    method: Method, model: SentenceTransformer, train: Dataset, config: ExperimentConfig, record: dict[str, Any]
) -> TrainSetup:
    """The method's training setup, after the optional student map (its fit statistics go to ``record``, its FLOPs
    to the setup's one-off costs)."""
    one_off: dict[str, int] = {}
    if config.student_map:
        record["student_map"], one_off["student_map"] = fit_map(model, train, config)
    plan = method.setup(model, train, config)
    plan.one_off_flops.update(one_off)
    return plan


def _share_teacher_cache(loss: nn.Module, teacher_cache: TeacherCache | None) -> tuple[int, int] | None:
    """Give the loss the study's teacher cache when it takes one (its ``teacher_cache`` setter checks the value);
    ``(hits, misses)`` of the cache before this run, or ``None`` when the run does not use it."""
    if teacher_cache is None or not hasattr(loss, "teacher_cache"):
        return None
    loss.teacher_cache = teacher_cache
    return teacher_cache.hits, teacher_cache.misses


def _training_arguments(
    config: ExperimentConfig,
    model: SentenceTransformer,
    plan: TrainSetup,
    run_dir: Path,
    seed: int,
    device: str,
    tracking: bool = False,
) -> SentenceTransformerTrainingArguments:
    return SentenceTransformerTrainingArguments(
        eval_strategy="steps" if tracking else "no",
        eval_steps=config.track_every or None,
        output_dir=str(run_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        seed=seed,
        data_seed=seed,
        report_to=[],
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=1,
        logging_steps=config.logging_steps,
        use_cpu=device == "cpu",
        bf16=resolve_bf16(config, device),
        router_mapping=plan.router_mapping,
        prompts=column_prompts(model, plan.router_mapping),
        batch_sampler=plan.batch_sampler if plan.batch_sampler is not None else config.batch_sampler,
    )


def _measurements(
    model: SentenceTransformer, plan: TrainSetup, config: ExperimentConfig, start: float, checkpoint: str | None
) -> tuple[FlopsCallback, _ResumeState]:
    """The run's FLOPs counter (with the setup's one-off costs) and its resume state, continued from ``checkpoint``
    when the run resumes."""
    flops = FlopsCallback(model, plan.loss, every_n_steps=config.flops_every)
    for phase, value in plan.one_off_flops.items():
        flops.add_one_off(phase, value)
    resume = _ResumeState(flops, start)
    if checkpoint is not None:
        saved = _ResumeState.load(checkpoint)
        flops.load_state_dict(saved["flops"])  # replaces the one-offs just added: the saved ones include them
        resume.spent = float(saved["train_seconds"])
    return flops, resume


def _training_record(
    trainer: SentenceTransformerTrainer, flops: FlopsCallback, resume: _ResumeState, checkpoint: str | None
) -> dict[str, Any]:
    """What a finished training run cost and logged."""
    logs = [log for log in trainer.state.log_history if "loss" in log]
    return {
        "train_seconds": resume.seconds(),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch or 0.0,
        "train_loss": [log["loss"] for log in logs],
        "train_logs": logs,
        "tracking": [log for log in trainer.state.log_history if any(k.startswith("eval_") for k in log)],
        "flops": flops.report.to_dict(),
        "resumed_from_step": int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None,
    }


def fit_map(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> tuple[dict[str, float], int]:
    """``config.student_map``: the closed-form map from the student's space to the teacher's, fitted on the training
    English (its bitext rows); ``(fit statistics, FLOPs of the fit)``."""
    english = list(dict.fromkeys(train["english"]))
    with PhaseFlopCounter() as counter:
        stats = fit_student_map(
            model, english, method=config.student_map, batch_size=config.eval_batch_size, show_progress_bar=True
        )
    logger.info("Student map (%s) on %d English texts: %s", config.student_map, len(english), stats)
    return stats, counter.get_total_flops()


def with_english_pairs(train: Dataset) -> Dataset:
    """The bitext plus an ``(english, english)`` row per distinct English text: the student also reads the teacher's
    own language and learns to reproduce the teacher on it."""
    english = list(dict.fromkeys(train["english"]))
    extra = Dataset.from_dict({"english": english, "lrl": english})
    return concatenate_datasets([train.select_columns(["english", "lrl"]), extra])


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


def agreement_evaluator(
    benches: dict[str, RetrievalBenchmark], config: ExperimentConfig, cache: EmbeddingCache
) -> RankingAgreementEvaluator | None:
    """The ranking agreement on the first relevance benchmark that has English queries (``None`` without one): its
    LRL queries read by the student against the same queries in English read by the teacher."""
    for name, bench in benches.items():
        english = benches.get(f"{name}:english")
        if english is not None and not name.endswith(":english"):
            qids = [q for q in bench.queries if q in english.queries]
            return RankingAgreementEvaluator(
                [bench.queries[q] for q in qids],
                [english.queries[q] for q in qids],
                list(bench.corpus.values()),
                batch_size=config.eval_batch_size,
                embedding_cache=cache,
                name="agreement",
            )
    return None


def relevance_tracker(benches: dict[str, RetrievalBenchmark], config: ExperimentConfig, cache: EmbeddingCache) -> Any:
    """What ``track_every`` evaluates during training: the relevance benchmark's metrics and the ranking agreement."""
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    agreement = agreement_evaluator(benches, config, cache)
    if agreement is None:
        raise ValueError("track_every needs a relevance benchmark with English queries (bible-xref, english_ceiling).")
    xref = next(b for k, b in benches.items() if f"{k}:english" in benches)
    relevance = xref.evaluator(
        batch_size=config.eval_batch_size, map_at_k=[100], ndcg_at_k=[10], embedding_cache=cache, write_csv=False
    )
    return SequentialEvaluator([relevance, agreement])


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


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file: a temporary file, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def save_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_json(path, payload)


def timed_evaluation(evaluator: Any, model: SentenceTransformer) -> tuple[dict[str, float], float]:
    """``(metrics, seconds)`` of one evaluator call, metric names shortened to their last part
    (``"nya-eng-test_cosine_accuracy@1"`` -> ``"accuracy@1"``)."""
    start = time.perf_counter()
    metrics = short_metrics(evaluator(model))
    return metrics, time.perf_counter() - start


def short_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``{"nya-eng-test_cosine_accuracy@1": x, ...}`` -> ``{"accuracy@1": x, ...}``."""
    return {key.rsplit("_", 1)[-1]: value for key, value in metrics.items()}


def last_eval_metrics(
    log_history: Sequence[dict[str, Any]], name: str, metrics: Iterable[str] | None = None
) -> dict[str, float]:
    """The metrics of evaluator ``name`` at its last evaluation during training, short names (the trainer logs them
    as ``eval_<name>_<score function>_<metric>``); only ``metrics`` when given."""
    logs = [h for h in log_history if any(k.startswith(f"eval_{name}_") for k in h)]
    if not logs:
        return {}
    values = short_metrics({k: v for k, v in logs[-1].items() if k.startswith(f"eval_{name}_")})
    return {k: v for k, v in values.items() if metrics is None or k in metrics}
