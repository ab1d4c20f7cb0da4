"""optical_st: OPTICAL optimal-transport distillation for cross-lingual retrieval, on sentence-transformers."""

from __future__ import annotations

__version__ = "0.1.0"

from optical_st import hub, transport
from optical_st.averaging import WeightAveragingCallback
from optical_st.hub import HubPushError
from optical_st.losses import (
    ContrastiveDistillationLoss,
    OTDistillationLoss,
    ScoreDistillationLoss,
    TeacherCache,
    check_bitext,
)
from optical_st.model_card import OpticalModelCardData
from optical_st.modeling import (
    add_projection,
    build_optical_model,
    column_prompts,
    export_student,
    load_optical_model,
    router_mapping,
)
from optical_st.sampling import DynamicHardNegativeSampler
from optical_st.trainer import OpticalTrainer
from optical_st.transport import OTConfig

__all__ = [
    "ContrastiveDistillationLoss",
    "DynamicHardNegativeSampler",
    "HubPushError",
    "OTConfig",
    "OTDistillationLoss",
    "OpticalModelCardData",
    "OpticalTrainer",
    "ScoreDistillationLoss",
    "TeacherCache",
    "WeightAveragingCallback",
    "__version__",
    "add_projection",
    "build_optical_model",
    "check_bitext",
    "column_prompts",
    "export_student",
    "hub",
    "load_optical_model",
    "router_mapping",
    "transport",
]
