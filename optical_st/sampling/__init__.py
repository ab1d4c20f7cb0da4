"""Negative mining for training: :class:`DynamicHardNegativeSampler` (hard negatives re-mined with the model being
trained, static or random negatives with the same interface), the pure nearest-neighbour miner behind it, the
callback that refreshes, logs and checkpoints the negatives table, and a length-grouped batch sampler."""

from __future__ import annotations

from optical_st.sampling.callback import CHECKPOINT_FILE, HardNegativeMiningCallback, document_route_frozen
from optical_st.sampling.config import HardNegativeConfig
from optical_st.sampling.length import LengthGroupedBatchSampler
from optical_st.sampling.mining import MinedNegatives, default_range_max, mine_negatives, random_negatives, search_topk
from optical_st.sampling.sampler import DynamicHardNegativeSampler, compose_hard_batches
from optical_st.sampling.table import HardNegativeState, NegativesTransform, NegativeTable

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
    "compose_hard_batches",
    "default_range_max",
    "document_route_frozen",
    "mine_negatives",
    "random_negatives",
    "search_topk",
]
