"""The two routes of an OPTICAL model and how to find them: the leaf every other layer may import.

An OPTICAL model is a sentence-transformers model whose first module is a ``Router``: the ``query`` route is the
student (it reads the low-resource language), the ``document`` route the frozen English teacher.
"""

from __future__ import annotations

from sentence_transformers.base.modules import Router
from torch import nn

__all__ = ["STUDENT_ROUTE", "TEACHER_ROUTE", "find_router", "route_modules"]

STUDENT_ROUTE = "query"
TEACHER_ROUTE = "document"


def find_router(model: nn.Module) -> Router | None:
    """The ``Router`` inside a sentence-transformers model, if any."""
    for module in model.children():
        if isinstance(module, Router):
            return module
    return None


def route_modules(model: nn.Module, route: str) -> list[nn.Module]:
    """The modules of one route (``"query"`` or ``"document"``) of an OPTICAL model."""
    router = find_router(model)
    if router is None or route not in router.sub_modules:
        raise ValueError(f"The model has no {route!r} route; build it with optical_st.build_optical_model().")
    return list(router.sub_modules[route])
