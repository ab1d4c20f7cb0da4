"""Losses for sentence-transformers' trainer, one class a file."""

from optical_st.losses.contrastive_distillation import ContrastiveDistillationLoss
from optical_st.losses.ot_distillation import OTDistillationLoss

__all__ = ["ContrastiveDistillationLoss", "OTDistillationLoss"]
