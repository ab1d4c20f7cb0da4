"""The two routes of an OPTICAL model, how to find them and which dataset columns take them: the leaf every other
layer may import.

An OPTICAL model is a sentence-transformers model whose first module is a ``Router``: the ``query`` route is the
student (it reads the low-resource language), the ``document`` route the frozen English teacher. A trainer's
``router_mapping`` sends each text column of the training dataset to one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sentence_transformers.base.modules import Router
from torch import Tensor, nn

__all__ = [
    "LABEL_COLUMNS",
    "STUDENT_ROUTE",
    "TEACHER_ROUTE",
    "column_routes",
    "encoding_modules",
    "find_router",
    "freeze_teacher_route",
    "model_routes",
    "module_state",
    "route_modules",
    "route_tokenizer",
    "task_route",
    "text_columns",
]

STUDENT_ROUTE = "query"
TEACHER_ROUTE = "document"
# the columns sentence-transformers' collator does not tokenize (labels) or drops (dataset_name)
LABEL_COLUMNS = ("label", "labels", "score", "scores", "dataset_name")


def text_columns(column_names: Iterable[str], label_columns: Sequence[str] = ()) -> list[str]:
    """The columns the trainer tokenizes and passes to the loss, in order: all but :data:`LABEL_COLUMNS` (and the
    trainer's own ``label_columns``)."""
    return [c for c in column_names if c not in LABEL_COLUMNS and c not in label_columns]


def column_routes(router_mapping: Mapping[str, Any] | None, dataset_name: str | None = None) -> dict[str, str]:
    """``{column: route}`` of one training dataset from a trainer's ``router_mapping``, which is flat
    (``{column: route}``) or per dataset (``{dataset_name: {column: route}}``).

    A per-dataset mapping gives ``dataset_name``'s entry, and nothing without a ``dataset_name`` (a single ``Dataset``
    has none): what sentence-transformers' collator routes.
    """
    mapping = dict(router_mapping or {})
    if mapping and isinstance(next(iter(mapping.values())), dict):
        return dict(mapping.get(dataset_name) or {}) if dataset_name is not None else {}
    return mapping


def find_router(model: nn.Module) -> Router | None:
    """The ``Router`` inside a sentence-transformers model, if any."""
    for module in model.children():
        if isinstance(module, Router):
            return module
    return None


def model_routes(model: nn.Module) -> dict[str, list[nn.Module]]:
    """``{route: its modules}`` of the ``Router`` inside ``model``, in the Router's order; ``{}`` for a model without
    a Router (a plain student, a student-only export)."""
    router = find_router(model)
    if router is None:
        return {}
    return {route: list(modules) for route, modules in router.sub_modules.items()}


def task_route(model: nn.Module, task: str) -> str | None:
    """The route the Router of ``model`` sends ``task``'s texts to (``"document"`` for ``encode_document``): its
    ``route_mappings`` entry for the task (``{(task, modality): route}``), else its default route; ``None`` without a
    Router."""
    router = find_router(model)
    if router is None:
        return None
    return next((r for (t, _), r in router.route_mappings.items() if t == task), router.default_route)


def route_modules(model: nn.Module, route: str) -> list[nn.Module]:
    """The modules of one route (``"query"`` or ``"document"``) of an OPTICAL model."""
    routes = model_routes(model)
    if route not in routes:
        raise ValueError(f"The model has no {route!r} route; build it with optical_st.build_optical_model().")
    return routes[route]


def route_tokenizer(modules: Iterable[nn.Module]) -> Any:
    """The tokenizer of a route (e.g. ``route_modules(model, "query")``): that of its first module that has one."""
    for module in modules:
        if getattr(module, "tokenizer", None) is not None:
            return module.tokenizer
    return None


def encoding_modules(model: nn.Module, route: str | None) -> list[nn.Module]:
    """The modules that ``encode_query`` (route ``"query"``) or ``encode_document`` (``"document"``) runs: the route's
    (the Router's default route when the model has no such route) and the modules after the Router; every module of
    a model without a Router (or with ``route=None``)."""
    router = find_router(model)
    if router is None or route is None:
        return list(model.children())
    sub = router.sub_modules[route] if route in router.sub_modules else router.sub_modules[router.default_route]
    after = [m for m in model.children() if m is not router]  # modules after the Router apply to every route
    return [*sub, *after]


def freeze_teacher_route(model: nn.Module, frozen: bool = True) -> list[nn.Module]:
    """Set ``requires_grad = not frozen`` on every parameter of the teacher (``document``) route of an OPTICAL model
    and return its modules. Needed after every load: sentence-transformers has no hook to freeze a module on load,
    so a saved model comes back with a trainable teacher route."""
    modules = route_modules(model, TEACHER_ROUTE)
    for module in modules:
        module.requires_grad_(not frozen)
    return modules


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
