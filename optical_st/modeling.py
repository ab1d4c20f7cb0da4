"""Build, split and inspect the asymmetric OPTICAL model.

OPTICAL trains a *query* encoder for the low-resource language (the student) while documents stay in the
English teacher's space. :func:`build_optical_model` packages both as ONE sentence-transformers model with a
``Router``: ``encode_query`` runs the student, ``encode_document`` runs the frozen teacher. Trained with
``router_mapping`` (see :func:`router_mapping`), sentence-transformers' collator tokenizes the English column with
the teacher's own tokenizer and the LRL column with the student's, so student and teacher may use different
vocabularies. The same object is what you save and push to the Hub.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Router, Transformer
from torch import nn

from optical_st import compat
from optical_st.adapters import AdapterOff, AdapterTransformer, find_adapter_transformer, sharing_base
from optical_st.fingerprints import tokenizer_spec
from optical_st.model_card import OpticalModelCardData
from optical_st.origins import hub_model_id
from optical_st.routes import (
    STUDENT_ROUTE,
    TEACHER_ROUTE,
    find_router,
    freeze_teacher_route,
    model_routes,
    module_state,
    route_modules,
    task_route,
    text_columns,
)

__all__ = [
    "STUDENT_ROUTE",
    "TEACHER_ROUTE",
    "add_projection",
    "build_optical_model",
    "column_prompts",
    "document_route_frozen",
    "export_student",
    "find_router",
    "load_optical_model",
    "router_mapping",
    "same_tokenizer",
]


def _load(model: SentenceTransformer | str, **kwargs: Any) -> SentenceTransformer:
    return SentenceTransformer(model, **kwargs) if isinstance(model, str) else model


def _transformer_index(modules: Sequence[nn.Module]) -> int:
    for i, module in enumerate(modules):
        if isinstance(module, Transformer):
            return i
    raise ValueError("The model has no Transformer module; OPTICAL needs token embeddings from a transformer encoder.")


def _token_dim(modules: Sequence[nn.Module]) -> int:
    """Width of the token embeddings the OT loss sees: the transformer's, or a token-level projection's."""
    dim = modules[_transformer_index(modules)].get_embedding_dimension()
    for module in modules[_transformer_index(modules) + 1 :]:
        if isinstance(module, Dense) and module.module_input_name == "token_embeddings":
            dim = module.out_features
    return dim


def _token_projection(d_in: int, d_out: int) -> Dense:
    """A trainable linear map on the token embeddings (no bias, no activation), saved with the student."""
    return Dense(d_in, d_out, bias=False, activation_function=None, module_input_name="token_embeddings")


def add_projection(student: SentenceTransformer, dim: int) -> SentenceTransformer:
    """Insert a trainable linear map ``d_student -> dim`` on the token embeddings, right after the transformer.

    Pooling after it then produces ``dim``-wide sentence embeddings, so student queries live in the teacher's space
    and the projection is saved, loaded and DDP-synchronised with the student. Returns a new model; the input is
    unchanged. No-op (a copy) when the widths already match.
    """
    modules = list(copy.deepcopy(student).children())
    idx = _transformer_index(modules)
    d_in = _token_dim(modules)
    if d_in == dim:
        return SentenceTransformer(modules=modules, similarity_fn_name=student.similarity_fn_name)
    head = [_resize_pooling(m, dim) for m in modules[idx + 1 :]]
    return SentenceTransformer(
        modules=[*modules[: idx + 1], _token_projection(d_in, dim), *head],
        similarity_fn_name=student.similarity_fn_name,
    )


def _resize_pooling(module: nn.Module, dim: int) -> nn.Module:
    from sentence_transformers.sentence_transformer.modules import Pooling

    if isinstance(module, Pooling):
        config = module.get_config_dict()
        config["embedding_dimension"] = dim
        return Pooling(**config)
    return module


def build_optical_model(
    teacher: SentenceTransformer | str,
    student: SentenceTransformer | str | None = None,
    *,
    freeze_teacher: bool = True,
    train_word_embeddings: bool = True,
    adapter: bool | Any = False,
    adapter_name: str = "default",
    model_card_data: Any | None = None,
    **load_kwargs: Any,
) -> SentenceTransformer:
    """The trainable asymmetric model: ``query`` route = student, ``document`` route = frozen teacher.

    Args:
        teacher: the English retrieval model (a ``SentenceTransformer`` or a name/path to load).
        student: the encoder that will read the low-resource language: any model or name/path (a multilingual
            encoder such as ``xlm-roberta-base``, or ``None`` for a trainable copy of the teacher). Its transformer
            is kept; its head is replaced by a copy of the teacher's (pooling, normalisation), with a token-level
            projection when the hidden sizes differ, so student queries are comparable with teacher documents.
        freeze_teacher: set ``requires_grad=False`` on the teacher route (OPTICAL never updates the teacher). A
            saved model reloaded with ``SentenceTransformer(path)`` comes back with a trainable teacher route (no
            load hook in sentence-transformers); :func:`load_optical_model` freezes it again, and so do the losses.
        train_word_embeddings: ``False`` freezes the student's word-embedding matrix. For a multilingual student
            it is most of the model (multilingual-e5-small: 96M of 118M parameters), and its AdamW update (two fp32
            moments per weight) dominates a CPU step's optimizer cost and memory; distillation mostly needs the
            layers above it (measured in docs/demo_tuning.md).
        adapter: train the student as a PEFT adapter on the teacher's own weights instead of a full copy: ``True``
            for :func:`optical_st.adapters.default_adapter_config` (LoRA), or any ``peft`` config (``LoraConfig``,
            ...). The ``query`` route then runs the base with the adapter, the ``document`` route the same base
            weights with the adapter off, so the model holds one copy of the base, and saving writes the adapter and
            small configs only (the base is referred to by its Hub id). Needs ``student=None`` and ``peft``
            (``pip install 'optical-st[peft]'``); ``freeze_teacher`` and ``train_word_embeddings`` do not apply (the
            base is frozen; the config's target modules say what the adapter changes). Train it with a larger
            learning rate than a full student (LoRA: ~1e-3 instead of 5e-5). ``False``: full fine-tuning.
        adapter_name: the adapter's name on the base (several languages' adapters can share one base, see
            :func:`load_optical_model`'s ``base``).
        model_card_data: card data for the saved model's README; ``None`` attaches an
            :class:`optical_st.OpticalModelCardData` (the OPTICAL card) with the teacher and student Hub ids filled in.
        **load_kwargs: forwarded when ``teacher``/``student`` are names (``device``, ``cache_folder``, ...).

    Returns:
        A ``SentenceTransformer`` whose first module is a ``Router``. Its prompts are the student's query prompt and
        the teacher's document prompt (e.g. multilingual-e5's ``query: `` / ``passage: ``), so ``encode_query`` and
        ``encode_document`` read texts as each encoder was trained to; train with
        ``prompts=optical_st.column_prompts(model, train_dataset)`` so the loss sees the same inputs.

    Example::

        >>> from optical_st import build_optical_model
        >>> model = build_optical_model("sentence-transformers/all-MiniLM-L6-v2", "xlm-roberta-base")  # doctest: +SKIP
        >>> model.encode_query(["Mulungu ndi chikondi"]).shape  # doctest: +SKIP
        (1, 384)
    """
    teacher_arg, student_arg = teacher, student
    teacher = _load(teacher, **load_kwargs)
    if find_router(teacher) is not None:
        raise ValueError("The teacher is already a Router model; pass a plain English encoder as teacher.")
    # a teacher loaded here from a name is ours: use its modules rather than hold a second copy while building
    owned = teacher if isinstance(teacher_arg, str) else copy.deepcopy(teacher)
    teacher_modules = list(owned.children())
    t_idx = _transformer_index(teacher_modules)
    if adapter is not False and adapter is not None:
        if student is not None:
            raise ValueError(
                "An adapter student is an adapter on the teacher's own weights (student=None); a separate student "
                "model is fine-tuned fully (adapter=False)."
            )
        student_modules, teacher_modules = _adapter_routes(teacher_modules, t_idx, adapter, adapter_name)
    elif student is None:
        student_modules = copy.deepcopy(teacher_modules)
    else:
        student = _load(student, **load_kwargs)
        if find_router(student) is not None:
            student = export_student(student)
        student_modules = _student_route(student, teacher_modules)
    adapted = isinstance(student_modules[0], AdapterTransformer)
    if not adapted and not train_word_embeddings:
        embeddings = student_modules[_transformer_index(student_modules)].auto_model.get_input_embeddings()
        embeddings.requires_grad_(False)
    router = Router.for_query_document(
        query_modules=student_modules, document_modules=teacher_modules, default_route=TEACHER_ROUTE
    )
    model_card_data = _optical_card_data(model_card_data, teacher_arg, student_arg)
    if adapted and hasattr(model_card_data, "add_tags"):
        model_card_data.add_tags(["peft", "adapter"])
    model = SentenceTransformer(
        modules=[router],
        similarity_fn_name=teacher.similarity_fn_name,
        device=str(teacher.device),
        model_card_data=model_card_data,
        prompts=_route_prompts(student if student is not None else teacher, teacher),
    )
    if not adapted:  # an adapter's base is frozen by the adapter
        freeze_teacher_route(model, frozen=freeze_teacher)
    return model


def _adapter_routes(
    teacher_modules: list[nn.Module], t_idx: int, adapter: bool | Any, adapter_name: str
) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(query modules, document modules)`` of an adapter model: the teacher's transformer with the adapter on, and
    the same weights with it off (:class:`~optical_st.adapters.AdapterOff`), each followed by the teacher's head."""
    if t_idx != 0:
        raise ValueError("An adapter student needs the teacher's Transformer as its first module.")
    base = AdapterTransformer.from_transformer(
        teacher_modules[0], None if adapter is True else adapter, adapter_name=adapter_name
    )
    head = teacher_modules[1:]
    student_modules = [base, *copy.deepcopy(head)]
    teacher_modules = [AdapterOff(base), *head]
    # the adapter is all that trains: the heads (pooling, normalisation, a Dense layer) stay the base's
    for p in (p for m in student_modules[1:] + teacher_modules[1:] for p in m.parameters()):
        p.requires_grad_(False)
    return student_modules, teacher_modules


def _student_route(student: SentenceTransformer, teacher_modules: list[nn.Module]) -> list[nn.Module]:
    """The query modules for a separate student: its modules up to its transformer, a token-level projection to the
    teacher's width when they differ, then a copy of the teacher's head (pooling, normalisation)."""
    t_idx = _transformer_index(teacher_modules)
    t_dim = _token_dim(teacher_modules)
    s_modules = list(copy.deepcopy(student).children())
    s_idx = _transformer_index(s_modules)
    body = s_modules[: s_idx + 1]
    if _token_dim(body) != t_dim:
        body.append(_token_projection(_token_dim(body), t_dim))
    return body + copy.deepcopy(teacher_modules[t_idx + 1 :])


def _route_prompts(student: SentenceTransformer, teacher: SentenceTransformer) -> dict[str, str]:
    """The model's prompts: the student's query prompt and the teacher's document prompt, the empty ones left out."""
    prompts = {STUDENT_ROUTE: _prompt_for(student, STUDENT_ROUTE), TEACHER_ROUTE: _prompt_for(teacher, TEACHER_ROUTE)}
    return {route: prompt for route, prompt in prompts.items() if prompt}


# the prompt names sentence-transformers' encode_query / encode_document look up, in its order
_PROMPT_NAMES = {STUDENT_ROUTE: ("query",), TEACHER_ROUTE: ("document", "passage", "corpus")}


def _prompt_for(model: SentenceTransformer, route: str) -> str:
    """The prompt ``encode_query`` (route ``query``) or ``encode_document`` (``document``) would prepend."""
    prompts = getattr(model, "prompts", None) or {}
    return next((prompts[name] for name in _PROMPT_NAMES[route] if prompts.get(name)), "")


def column_prompts(model: SentenceTransformer, columns: Iterable[str] | dict[str, str] | Any) -> dict[str, str]:
    """``prompts`` for ``SentenceTransformerTrainingArguments``: each column gets the prompt of the route
    :func:`router_mapping` sends it to (the English and negative columns the document prompt, the LRL column the query
    prompt), so training sees the texts as ``encode_query`` / ``encode_document`` will. Empty for models without
    prompts. With ``exclude_special_tokens`` the OT loss gives the prompt tokens no transport mass.

    ``columns``: a dataset or column names (routed as :func:`router_mapping` does), or a ready ``{column: route}``
    mapping (e.g. a single LRL column routed to ``"query"``).
    """
    mapping = columns if isinstance(columns, dict) else router_mapping(columns)
    return {column: _prompt_for(model, route) for column, route in mapping.items() if _prompt_for(model, route)}


def _optical_card_data(card_data: Any | None, teacher: Any, student: Any) -> Any:
    """An ``OpticalModelCardData`` (the OPTICAL model card) unless the caller chose other card data."""
    if card_data is None:
        card_data = OpticalModelCardData()
    if isinstance(card_data, OpticalModelCardData):
        # teacher and base model ids, and for the offline multilingual-e5-small its conversion note and licence
        card_data.set_origin(teacher, student)
    return card_data


def export_student(model: SentenceTransformer, route: str = STUDENT_ROUTE) -> SentenceTransformer:
    """A plain student-only ``SentenceTransformer`` (copy of the query route) for users who do not want the
    Router, e.g. to fine-tune further on their own. Its embeddings equal ``model.encode_query``. An OPTICAL model
    card (training record, evaluation results) carries over; the student's card explains that documents are encoded
    with the teacher."""
    modules = copy.deepcopy(route_modules(model, route))
    card = model.model_card_data
    kwargs = {"model_card_data": card.for_student_export()} if isinstance(card, OpticalModelCardData) else {}
    return SentenceTransformer(
        modules=modules, similarity_fn_name=model.similarity_fn_name, device=str(model.device), **kwargs
    )


def document_route_frozen(model: nn.Module) -> bool:
    """True when no trainable parameter can change ``model.encode_document`` (e.g. the frozen teacher route of an
    OPTICAL model), so candidate-pool embeddings can be computed once and cached."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not trainable:
        return True
    router = find_router(model)
    routes = model_routes(model)
    route = task_route(model, "document")
    if router is None or route not in routes:
        return False
    # the tensors each module runs: an adapter model's document route runs the (frozen) base, not the adapter
    document = {id(t) for module in routes[route] for t in module_state(module)[2].values()}
    outside = {id(p) for p in model.parameters()} - {id(p) for p in router.parameters()}
    return not (trainable & (document | outside))


def router_mapping(
    columns: Iterable[str] | Any, *, teacher_route: str = TEACHER_ROUTE, student_route: str = STUDENT_ROUTE
) -> dict[str, str]:
    """``router_mapping`` for ``SentenceTransformerTrainingArguments`` from a dataset's columns.

    OPTICAL columns are ``(english, lrl, *english_negatives)``: the first column goes to the teacher route, the
    second to the student route, the rest (English negatives) to the teacher route. Label columns are skipped.
    Accepts a ``datasets.Dataset``, a ``DatasetDict`` (first split) or a list of names.
    """
    names = getattr(columns, "column_names", columns)
    if isinstance(names, dict):  # DatasetDict.column_names
        names = next(iter(names.values()))
    names = text_columns(names)
    if len(names) < 2:
        raise ValueError(f"Need at least two text columns (english, lrl); got {names}.")
    mapping = {names[0]: teacher_route, names[1]: student_route}
    mapping.update({name: teacher_route for name in names[2:]})
    return mapping


def _tokenizer_signature(tokenizer: Any) -> Any:
    spec = tokenizer_spec(tokenizer)
    if spec is not None:
        return {k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "model", "added_tokens")}
    return (type(tokenizer).__name__, tokenizer.get_vocab(), getattr(tokenizer, "do_lower_case", None))


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers split every text into the same ids (same vocabulary and normalisation)."""
    return a is b or _tokenizer_signature(a) == _tokenizer_signature(b)


# optical_st's own module classes, which sentence-transformers imports only with trust_remote_code=True
_MODULE_CLASSES = {f"{cls.__module__}.{cls.__name__}": cls for cls in (AdapterTransformer, AdapterOff)}


def _load_sentence_transformer(model_name_or_path: str, **kwargs: Any) -> SentenceTransformer:
    """``SentenceTransformer(path)``, resolving optical_st's adapter modules to the installed classes instead of
    asking for ``trust_remote_code``, which would also run modeling code from the repository (see
    :func:`optical_st.compat.load_with_module_classes`)."""
    return compat.load_with_module_classes(SentenceTransformer, model_name_or_path, _MODULE_CLASSES, **kwargs)


def load_optical_model(
    model_name_or_path: str, *, base: SentenceTransformer | None = None, **kwargs: Any
) -> SentenceTransformer:
    """Load a saved OPTICAL model (a folder or a Hub id) as it was trained: teacher route frozen, card data back.

    ``SentenceTransformer(path)`` loads the weights, but sentence-transformers 6 has no hook to freeze a module on
    load, and restores no card data from a local folder, so on its own it gives back

    * a ``document`` (teacher) route whose parameters are trainable again: a stock loss (e.g.
      ``MultipleNegativesRankingLoss``) would then change the teacher and with it every cached document embedding
      (the OPTICAL losses freeze it themselves);
    * no ``model_card_data.model_name`` / ``base_model``: MTEB then files the results under
      ``no_model_name/available`` and gives a second such model the first one's cached scores.

    This function does both: it freezes the teacher route and attaches an
    :class:`~optical_st.OpticalModelCardData` with the name, base model and languages saved in the card's front
    matter (and ``model_id`` when loaded from the Hub), so the dataset checks and the OPTICAL card work when
    training goes on.

    An adapter model (``build_optical_model(..., adapter=...)``) loads its base (from the Hub id it names, or the
    offline multilingual-e5-small conversion, made on first use) and attaches its adapter.

    Args:
        model_name_or_path: a folder written by ``save_pretrained`` / the trainer, or a Hub id.
        base: an adapter model already loaded (e.g. another language's): attach this model's adapter to its base
            instead of loading the base again, so both models share one copy of the base weights in memory (and,
            their teachers being that base, answer ``encode_document`` identically: one English index serves
            both). Both adapters must have been trained on the same base.
        **kwargs: forwarded to ``SentenceTransformer`` (``device``, ``cache_folder``, ``revision``, ...).

    Example::

        >>> import mteb
        >>> from optical_st import load_optical_model
        >>> model = load_optical_model("runs/demo/model")  # doctest: +SKIP
        >>> model.model_card_data.model_name  # doctest: +SKIP
        'my-org/optical-chichewa'
        >>> mteb.evaluate(model, mteb.get_tasks(tasks=["..."]))  # doctest: +SKIP
    """
    if base is None:
        model = _load_sentence_transformer(model_name_or_path, **kwargs)
    else:
        shared = find_adapter_transformer(base)
        if shared is None:
            raise ValueError("`base` must be an adapter model (build_optical_model(..., adapter=...)) to share.")
        kwargs.setdefault("device", str(base.device))
        with sharing_base(shared):
            model = _load_sentence_transformer(model_name_or_path, **kwargs)
        mine = find_adapter_transformer(model)
        if mine is None or mine.auto_model is not shared.auto_model:
            raise ValueError(f"{model_name_or_path} is not an adapter model; it cannot share a base.")
    if TEACHER_ROUTE in model_routes(model):
        freeze_teacher_route(model)
    card = OpticalModelCardData.from_card_text(compat.loaded_card_text(model))
    if hub_model_id(model_name_or_path):
        card.model_id = model_name_or_path
    old = model.model_card_data
    card.base_model = card.base_model or old.base_model
    card.base_model_revision = getattr(old, "base_model_revision", None)
    card.local_files_only = old.local_files_only
    card.register_model(model)
    model.model_card_data = card
    return model
