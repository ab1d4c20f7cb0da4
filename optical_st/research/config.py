"""The settings of a research run (:class:`ExperimentConfig`) and the device and precision they resolve to."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from optical_st.data import default_teacher
from optical_st.utils import fast_bf16_available

__all__ = ["ExperimentConfig", "resolve_bf16", "resolve_device"]


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


def resolve_device(config: ExperimentConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def resolve_bf16(config: ExperimentConfig, device: str) -> bool:
    return fast_bf16_available(device) if config.bf16 is None else config.bf16
