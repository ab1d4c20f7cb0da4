"""The two routes of an OPTICAL model and how to find them: the leaf every other layer may import.

An OPTICAL model is a sentence-transformers model whose first module is a ``Router``: the ``query`` route is the
student (it reads the low-resource language), the ``document`` route the frozen English teacher.
"""

from __future__ import annotations

from typing import Any

from sentence_transformers.base.modules import Router
from torch import Tensor, nn

__all__ = ["STUDENT_ROUTE", "TEACHER_ROUTE", "find_router", "module_state", "route_modules"]

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


def module_state(module: nn.Module) -> tuple[str, Any, dict[str, Tensor]]:
    """What decides a route module's output: ``(type name, config, tensors)``, parameters kept as parameters.

    A module that runs another module's weights reports those instead of its own (it has none): the document route of
    an adapter model (``optical_st.adapters.AdapterOff``) reports the plain base ``Transformer`` without the adapter,
    so freezing, the teacher's output cache and the document embedding cache treat it as the base model it is.
    """
    frozen = getattr(module, "frozen_state", None)
    if callable(frozen):
        return frozen()
    getter = getattr(module, "get_config_dict", None)
    try:
        config = getter() if getter else None
    except Exception:  # a config we cannot read; the weights still say what the module computes
        config = None
    return type(module).__qualname__, config, module.state_dict(keep_vars=True)
