"""Losses for sentence-transformers' trainer, one class a file, and the OT loss's training monitor."""

from optical_st.losses.contrastive_distillation import ContrastiveDistillationLoss
from optical_st.losses.ot_distillation import OTDistillationLoss
from optical_st.losses.ot_monitor import OTDiagnosticsCallback, SinkhornConvergenceWarning

__all__ = ["ContrastiveDistillationLoss", "OTDiagnosticsCallback", "OTDistillationLoss", "SinkhornConvergenceWarning"]
