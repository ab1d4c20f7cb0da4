"""Training in a research run: the study's bitext (:func:`load_train_pairs`, :func:`with_english_pairs`), one method
trained with one seed (:func:`train_one`), with its FLOPs and wall time measured and, with ``save_steps``, resumable
from its last checkpoint."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from torch import nn
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from optical_st.alignment import fit_student_map
from optical_st.averaging import WeightAveragingCallback
from optical_st.evaluation.flops import FlopsCallback, PhaseFlopCounter
from optical_st.losses import OTDiagnosticsCallback, OTDistillationLoss, TeacherCache
from optical_st.modeling import build_optical_model, column_prompts
from optical_st.research.config import ExperimentConfig, resolve_bf16, resolve_device
from optical_st.research.evaluate import set_max_seq_length
from optical_st.research.methods import Method, TrainSetup
from optical_st.sampling import DynamicHardNegativeSampler
from optical_st.trainer import OpticalTrainer
from optical_st.utils import atomic_write_json, checkpoint_folder

__all__ = ["fit_map", "load_train_pairs", "train_one", "with_english_pairs"]

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


class _ResumeState(TrainerCallback):
    """Saves what the trainer's checkpoint lacks and a resumed run needs (the FLOPs counted so far, the training
    seconds spent so far) beside each checkpoint, and reads it back on resume."""

    FILE = "optical_run_state.json"

    def __init__(self, flops: FlopsCallback, start: float, spent: float = 0.0) -> None:
        self.flops, self.start, self.spent = flops, start, spent

    def seconds(self) -> float:
        return self.spent + time.perf_counter() - self.start

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = checkpoint_folder(args.output_dir, state.global_step)
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
    ``tracker``: an evaluator run every ``config.track_every`` steps
    (:func:`optical_st.research.evaluate.relevance_tracker`); its logs go to the record's ``tracking``.
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
    set_max_seq_length(model, config.max_seq_length)
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
    averaging = None
    if config.average_weights_from is not None:
        averaging = WeightAveragingCallback(model, start=config.average_weights_from)
        callbacks.append(averaging)
    trainer = OpticalTrainer(  # checks the dataset against the loss before anything runs
        model=model, args=args, train_dataset=plan.train_dataset, loss=plan.loss, callbacks=callbacks, evaluator=tracker
    )
    if plan.batch_sampler is not None:
        DynamicHardNegativeSampler.attach(trainer)
    with flops.counting(*plan.counted_phases):  # e.g. a sampler's re-mining, which it runs as a work phase
        trainer.train(resume_from_checkpoint=checkpoint)
    record.update(_training_record(trainer, flops, resume, checkpoint))
    if averaging is not None:  # the evaluated model is this average; the tracked values are the last weights'
        record["weight_average"] = {"start": averaging.start, "steps": averaging.count}
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
