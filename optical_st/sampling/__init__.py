"""Negative mining for training: :class:`DynamicHardNegativeSampler` (hard negatives re-mined with the model being
trained, static or random negatives with the same interface), the pure nearest-neighbour miner behind it, the
callback that wires it into the trainer and refreshes, logs and checkpoints the negatives table, and batch
composition (length-grouped batches, batches of mutually hard anchors); score-distillation data (candidates from an
English pool and the teacher's query embeddings)."""

from __future__ import annotations

from optical_st.modeling import document_route_frozen  # kept in this namespace: the sampler caches by it
from optical_st.sampling.batches import LengthGroupedBatchSampler, compose_hard_batches
from optical_st.sampling.callback import HardNegativeMiningCallback
from optical_st.sampling.config import HardNegativeConfig
from optical_st.sampling.mining import (
    MinedNegatives,
    default_range_max,
    fill_missing,
    mine_negatives,
    random_negatives,
    search_topk,
)
from optical_st.sampling.sampler import DynamicHardNegativeSampler
from optical_st.sampling.score_targets import TeacherCandidates, frozen_teacher_encoder, teacher_candidates
from optical_st.sampling.table import CHECKPOINT_FILE, HardNegativeState, NegativesTransform, NegativeTable

__all__ = [
    "CHECKPOINT_FILE",
    "DynamicHardNegativeSampler",
    "HardNegativeConfig",
    "HardNegativeMiningCallback",
    "HardNegativeState",
    "LengthGroupedBatchSampler",
    "MinedNegatives",
    "NegativeTable",
    "NegativesTransform",
    "TeacherCandidates",
    "compose_hard_batches",
    "default_range_max",
    "document_route_frozen",
    "fill_missing",
    "frozen_teacher_encoder",
    "mine_negatives",
    "random_negatives",
    "search_topk",
    "teacher_candidates",
]
