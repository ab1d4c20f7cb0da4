"""Losses for sentence-transformers' trainer, one class a file; :func:`check_bitext` checks a training dataset
against the loss before training (:mod:`optical_st.losses.checks`); the OT loss's training monitor
(:class:`OTDiagnosticsCallback`, :class:`SinkhornConvergenceWarning`); :class:`TeacherCache`, the frozen teacher's
outputs shared by losses, steps and epochs."""

from optical_st.losses.checks import check_bitext
from optical_st.losses.contrastive_distillation import ContrastiveDistillationLoss
from optical_st.losses.ot_distillation import OTDistillationLoss
from optical_st.losses.ot_monitor import OTDiagnosticsCallback, SinkhornConvergenceWarning
from optical_st.losses.score_distillation import ScoreDistillationLoss
from optical_st.losses.teacher_cache import TeacherCache
from optical_st.losses.token_embeddings import TokenEmbeddings

__all__ = [
    "ContrastiveDistillationLoss",
    "OTDiagnosticsCallback",
    "OTDistillationLoss",
    "ScoreDistillationLoss",
    "SinkhornConvergenceWarning",
    "TeacherCache",
    "TokenEmbeddings",
    "check_bitext",
]
