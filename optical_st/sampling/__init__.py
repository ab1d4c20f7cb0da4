"""Batch samplers for training with sentence-transformers' trainer."""

from optical_st.sampling.length import LengthGroupedBatchSampler

__all__ = ["LengthGroupedBatchSampler"]
