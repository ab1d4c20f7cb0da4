"""Running a comparison: load the bitext and the benchmark, train every method with every seed (measuring training
FLOPs and wall time), evaluate each model on the same benchmark, and return one JSON-able record per run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from transformers import set_seed

from optical_st.data import default_teacher
from optical_st.evaluation.benchmarks import RetrievalBenchmark, load_benchmark
from optical_st.evaluation.flops import FlopsCallback
from optical_st.modeling import build_optical_model
from optical_st.research.config import ExperimentConfig, resolve_bf16, resolve_device
from optical_st.research.methods import Method
from optical_st.routes import find_router
from optical_st.sampling import DynamicHardNegativeSampler

__all__ = ["last_eval_metrics", "load_train_pairs", "run_experiment", "run_one", "save_json", "timed_evaluation"]

logger = logging.getLogger(__name__)


def load_train_pairs(config: ExperimentConfig, seed: int = 0) -> Dataset:
    """The training bitext as a ``Dataset`` with columns ``english`` and ``lrl`` (empty rows dropped)."""
    if config.train_data == "bible":
        from optical_st.data import load_bible_bitext

        cap = {"train": config.train_pairs} if config.train_pairs else None
        data = load_bible_bitext({"train": range(1, 45)}, max_pairs=cap, seed=seed)["train"]
    elif config.train_data.startswith("hub:"):
        from datasets import load_dataset

        dataset_id, _, subset = config.train_data[len("hub:") :].partition(":")
        data = load_dataset(dataset_id, subset or None, split="train")
        if config.train_pairs and config.train_pairs < len(data):
            data = data.shuffle(seed=seed).select(range(config.train_pairs))
    else:
        raise ValueError(f"Unknown train_data {config.train_data!r}; use 'bible' or 'hub:<dataset id>[:<config>]'.")
    missing = {config.english_column, config.lrl_column} - set(data.column_names)
    if missing:
        raise ValueError(
            f"The training data has no column(s) {sorted(missing)}; its columns are {data.column_names}. Set "
            "english_column / lrl_column (--english-column / --lrl-column)."
        )
    data = data.select_columns([config.english_column, config.lrl_column])
    data = data.rename_columns({config.english_column: "english", config.lrl_column: "lrl"})
    return data.filter(lambda row: bool(row["english"].strip()) and bool(row["lrl"].strip()))


def _load_benchmark(config: ExperimentConfig) -> RetrievalBenchmark:
    if config.benchmark.startswith("bible"):
        return load_benchmark(config.benchmark, max_pairs=config.eval_pairs)
    return load_benchmark(config.benchmark)


def _set_max_seq_length(model: SentenceTransformer, length: int) -> None:
    router = find_router(model)
    routes = list(router.sub_modules.values()) if router is not None else [model]
    for route in routes:
        for module in route:
            if hasattr(module, "max_seq_length"):
                module.max_seq_length = length


@contextlib.contextmanager
def _tracking(flops: FlopsCallback, track: Sequence[tuple[Any, str, str]]) -> Iterator[None]:
    """Count calls of ``obj.method`` for the duration of one run, then restore the originals."""
    originals = []
    try:
        for obj, method, phase in track:
            if hasattr(obj, method):
                originals.append((obj, method, obj.__dict__.get(method)))
                flops.track(obj, method, phase)
            else:
                logger.warning("Cannot count FLOPs of %s.%s: no such attribute.", obj, method)
        yield
    finally:
        for obj, method, original in reversed(originals):
            if original is None:
                delattr(obj, method)
            else:
                setattr(obj, method, original)


def _summarize(raw: dict[str, float], bench: RetrievalBenchmark, fn: str) -> dict[str, float]:
    if bench.bitext is not None:
        forward, reverse = f"{bench.name}_lrl2en_{fn}_", f"{bench.name}_en2lrl_{fn}_"
    else:
        forward, reverse = f"{bench.name}_{fn}_", None
    keys = {
        "MAP@100": forward + "map@100",
        "mAP@20": forward + "map@20",
        "acc@1 LRL→En": forward + "accuracy@1",
        "MRR@10": forward + "mrr@10",
        "nDCG@10": forward + "ndcg@10",
        "R@100": forward + "recall@100",
    }
    if reverse:
        keys["acc@1 En→LRL"] = reverse + "accuracy@1"
    return {metric: float(raw[key]) for metric, key in keys.items() if key in raw}


def _evaluate(model: SentenceTransformer, bench: RetrievalBenchmark, config: ExperimentConfig) -> dict[str, Any]:
    _set_max_seq_length(model, config.eval_max_seq_length)
    evaluator = bench.evaluator(
        batch_size=config.eval_batch_size,
        accuracy_at_k=[1, 10],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[20, 100],
        precision_recall_at_k=[1, 100],
    )
    start = time.perf_counter()
    raw = evaluator(model)
    return {
        "metrics": _summarize(raw, bench, model.similarity_fn_name or "cosine"),
        "raw_metrics": {k: float(v) for k, v in raw.items()},
        "eval_seconds": time.perf_counter() - start,
    }


def run_one(
    method: Method, config: ExperimentConfig, seed: int, train: Dataset, bench: RetrievalBenchmark
) -> dict[str, Any]:
    """Train (unless zero-shot) and evaluate one method with one seed; returns a JSON-able record."""
    device = resolve_device(config)
    teacher_name = config.teacher or default_teacher()
    set_seed(seed)
    load_before = os.getloadavg()[0]
    record: dict[str, Any] = {"method": method.name, "seed": seed, "description": method.description}
    if method.setup is None:
        model = SentenceTransformer(teacher_name, device=device)
        record.update(train_seconds=0.0, steps=0, flops={"total": 0.0, "per_step": {}, "one_off": {}})
    else:
        model = build_optical_model(teacher_name, config.student, device=device)
        _set_max_seq_length(model, config.max_seq_length)
        start = time.perf_counter()
        plan = method.setup(model, train, config)
        run_dir = Path(config.output_dir) / "runs" / f"{method.name}-seed{seed}"
        args = SentenceTransformerTrainingArguments(
            output_dir=str(run_dir),
            num_train_epochs=config.epochs,
            max_steps=config.max_steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_ratio,
            seed=seed,
            data_seed=seed,
            report_to=[],
            save_strategy="no",
            logging_steps=10,
            use_cpu=device == "cpu",
            bf16=resolve_bf16(config, device),
            router_mapping=plan.router_mapping,
            **({"batch_sampler": plan.batch_sampler} if plan.batch_sampler is not None else {}),
        )
        flops = FlopsCallback(model, plan.loss, every_n_steps=config.flops_every)
        for phase, value in plan.one_off_flops.items():
            flops.add_one_off(phase, value)
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=plan.train_dataset, loss=plan.loss, callbacks=[flops]
        )
        if plan.batch_sampler is not None:
            DynamicHardNegativeSampler.attach(trainer)
        with _tracking(flops, plan.track):
            trainer.train()
        record.update(
            train_seconds=time.perf_counter() - start,
            steps=trainer.state.global_step,
            train_loss=[log["loss"] for log in trainer.state.log_history if "loss" in log],
            flops=flops.report.to_dict(),
        )
    record.update(_evaluate(model, bench, config))
    record["load_average"] = [load_before, os.getloadavg()[0]]
    return record


def run_experiment(methods: Sequence[Method], config: ExperimentConfig) -> list[dict[str, Any]]:
    """Every method x every seed (the zero-shot teacher once: it has no randomness); returns the run records."""
    if config.threads:
        torch.set_num_threads(config.threads)
    bench = _load_benchmark(config)
    train = load_train_pairs(config)
    logger.info("Training pairs: %d; benchmark: %r", len(train), bench)
    records = []
    for method in methods:
        for seed in config.seeds[:1] if method.setup is None else config.seeds:
            logger.info("Running %s, seed %d", method.name, seed)
            record = run_one(method, config, seed, train, bench)
            records.append(record)
            save_json(Path(config.output_dir) / "runs.partial.json", {"config": config.to_dict(), "runs": records})
    return records


def save_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


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
