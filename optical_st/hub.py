"""Ship OPTICAL models: model cards, evaluation results in the Hub's ``model-index`` format, and Hub pushes.

* :class:`OpticalModelCardData` extends sentence-transformers' card data with what an OPTICAL card needs (teacher,
  languages, bitext, OT settings read from the loss, negatives mode, measured training FLOPs, cross-lingual retrieval
  results) and renders the template shipped in ``optical_st.model_cards``. :func:`optical_st.build_optical_model`
  attaches one, so sentence-transformers writes the card whenever the model is saved: by the trainer's checkpoints,
  ``trainer.push_to_hub()``, ``model.save_pretrained()`` or :func:`push_to_hub`.
* :func:`push_to_hub` saves the model to a local folder first and then uploads that folder, so a failed upload
  (offline, network, authentication) never loses the trained model; :func:`push_folder_to_hub` pushes a folder that
  is already saved. Both only act on the main process of a distributed run.
* :func:`eval_results_from_metrics` turns a metrics dict into ``huggingface_hub.EvalResult`` objects, and
  :func:`add_eval_results_to_card` writes them into a saved ``README.md`` as ``model-index`` metadata, which the Hub
  shows as an evaluation widget.
"""

from __future__ import annotations

import copy
import importlib.resources
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from sentence_transformers import SentenceTransformerModelCardData
from sentence_transformers.base.modules import Transformer
from torch import nn
from transformers.modelcard import make_markdown_table

from optical_st.losses.ot_distillation import OPTICAL_CITATION, OTDistillationLoss
from optical_st.modeling import STUDENT_ROUTE, TEACHER_ROUTE, find_router

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CARD_TEMPLATE",
    "HubPushError",
    "OpticalModelCardData",
    "add_eval_results_to_card",
    "eval_results_from_metrics",
    "hub_model_id",
    "merge_eval_results",
    "model_card_template_path",
    "push_folder_to_hub",
    "push_to_hub",
]

MODEL_CARD_TEMPLATE = "optical_model_card_template.md"
# the placeholder sentence-transformers writes into usage snippets when the model id is unknown
MODEL_ID_PLACEHOLDER = "sentence_transformers_model_id"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_ISO_639 = re.compile(r"^[a-z]{2,3}$")


def model_card_template_path(name: str = MODEL_CARD_TEMPLATE) -> Path:
    """Path of a model card template shipped with optical_st.

    The templates live in the top-level ``model_cards/`` folder of the source tree, which ``setup.cfg`` installs as
    the ``optical_st.model_cards`` package (``package_dir`` mapping), so they are found through
    ``importlib.resources`` in a source checkout, an editable install and a wheel alike.

    Args:
        name: file name of the template.

    Returns:
        The template's path on disk.

    Example::

        >>> from optical_st.hub import model_card_template_path
        >>> model_card_template_path().name
        'optical_model_card_template.md'
    """
    resource = importlib.resources.files("optical_st.model_cards").joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(f"No model card template {name!r} in optical_st.model_cards.")
    # huggingface_hub's ModelCard.from_template reads a filesystem path; installed packages are plain directories
    return Path(str(resource))


def _is_main_process() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def hub_model_id(model: Any) -> str | None:
    """The Hub id a model (or model name) came from, or ``None`` for local paths and unknown origins."""
    if isinstance(model, str):
        return model if _HUB_ID.match(model) and not os.path.exists(model) else None
    card = getattr(model, "model_card_data", None)
    for candidate in (getattr(card, "base_model", None), getattr(card, "model_id", None)):
        if candidate:
            return candidate
    transformers_model = getattr(model, "transformers_model", None)
    name = getattr(getattr(transformers_model, "config", None), "_name_or_path", None)
    return hub_model_id(name) if name else None


# ----------------------------------------------------------------------------------------------------------------
# training FLOPs
# ----------------------------------------------------------------------------------------------------------------
class _TokenCounter:
    """Forward pre-hook on a route's transformer that adds up the FLOPs of the tokens it processes in training.

    Uses the convention of ``transformers.Trainer.floating_point_ops`` (Kaplan et al. 2020): ``2 * N`` FLOPs per
    (padded) token for a forward pass and ``6 * N`` with the backward pass, ``N`` the route's non-embedding
    parameters. sentence-transformers models report ``total_flos == 0`` to the trainer, hence this hook. Under DDP
    rank 0 writes the card but sees only its own batches; every rank runs as many batches of the same size, so the
    count is scaled by the world size (exact up to the ranks' different padded lengths).
    """

    def __init__(self, card_data: OpticalModelCardData, route: str, modules: list[nn.Module]) -> None:
        self.card_data: OpticalModelCardData | None = card_data
        self.route = route
        self.modules = modules
        self._params: tuple[int, bool] | None = None

    def _param_count(self) -> tuple[int, bool]:
        if self._params is None:
            embeddings = {id(p) for m in self.modules for sub in m.modules() if isinstance(sub, nn.Embedding)
                          for p in sub.parameters()}  # fmt: skip
            params = {id(p): p for m in self.modules for p in m.parameters() if id(p) not in embeddings}
            self._params = (
                sum(p.numel() for p in params.values()),
                any(p.requires_grad for p in params.values()),
            )
        return self._params

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        card = self.card_data
        if card is None or card.model is None or not card.model.training or not args:
            return  # encode()/evaluation run in eval mode: only training forwards count
        input_ids = args[0].get("input_ids") if isinstance(args[0], Mapping) else None
        if input_ids is None:
            return
        n_params, trainable = self._param_count()
        tokens = int(input_ids.numel()) * _world_size()
        stats = card.training_compute.setdefault(self.route, {"tokens": 0, "parameters": n_params, "flops": 0.0})
        stats["tokens"] += tokens
        stats["flops"] += (6.0 if trainable else 2.0) * n_params * tokens
        stats["backward"] = trainable

    # a copy of the model (deepcopy, export_student, pickling for multi-process encode) must neither drag the card
    # data along nor count into it: the copy gets a disabled counter, and register_model() installs fresh ones
    def __deepcopy__(self, memo: dict) -> _TokenCounter:
        return _TokenCounter.__new__(_TokenCounter)._disabled(self.route)

    def __getstate__(self) -> dict[str, Any]:
        return {"route": self.route}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._disabled(state["route"])

    def _disabled(self, route: str) -> _TokenCounter:
        self.card_data, self.route, self.modules, self._params = None, route, [], None
        return self


def _route_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    router = find_router(model)
    if router is not None:
        return {route: list(modules) for route, modules in router.sub_modules.items()}
    return {"model": list(model.children())}


# ----------------------------------------------------------------------------------------------------------------
# card data
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class OpticalModelCardData(SentenceTransformerModelCardData):
    """Model card data for OPTICAL models: sentence-transformers' card data plus the OPTICAL fields.

    :func:`optical_st.build_optical_model` attaches one automatically (with the teacher and student ids filled in
    when they are Hub ids); pass your own to ``build_optical_model(..., model_card_data=...)`` to add languages,
    bitext, license or evaluation results. The OT settings (``reg``, iterations, cost, marginals) are read from the
    :class:`~optical_st.OTDistillationLoss` the trainer uses, and training FLOPs are measured while training, so a
    card written by the trainer needs nothing else.

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
            ``"dynamic"`` (re-mined during training), or a free description. Inferred when left ``None``.
        eval_results: evaluation results (``huggingface_hub.EvalResult``, see :func:`eval_results_from_metrics`),
            shown in the card and in its ``model-index`` metadata.
        training_flops: total training FLOPs, to override the measured value (e.g. a run spanning several sessions).
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

    # filled from the loss (set_losses) and during training
    ot_config: dict[str, Any] = field(default_factory=dict, init=False)
    training_compute: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    # per-phase totals from optical_st.evaluation.FlopsCallback (torch FlopCounterMode); preferred over the estimate
    measured_flops: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _train_router_mapping: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

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
        self.eval_results = list(self.eval_results)
        self.add_tags(["optical", "optimal-transport", "knowledge-distillation", "cross-lingual-retrieval"])
        if self.student_id and not self.base_model:
            self.base_model = self.student_id

    # -- hooks called by sentence-transformers ---------------------------------------------------------------
    def register_model(self, model: SentenceTransformer) -> None:
        super().register_model(model)
        for route, modules in _route_modules(model).items():
            for module in modules:
                if not isinstance(module, Transformer):
                    continue
                for handle_id, hook in list(module._forward_pre_hooks.items()):
                    if isinstance(hook, _TokenCounter):  # stale counter from a copied model
                        del module._forward_pre_hooks[handle_id]
                module.register_forward_pre_hook(_TokenCounter(self, route, modules))

    def set_losses(self, losses: list[nn.Module]) -> None:
        super().set_losses(losses)
        for loss in losses:
            if isinstance(loss, OTDistillationLoss):
                self.ot_config = loss.get_config_dict()
                if not isinstance(self.ot_config.get("teacher"), str):  # the separate-teacher module
                    self.ot_config["teacher"] = self.teacher_id or "separate teacher model"
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
        return super().extract_dataset_metadata(dataset, dataset_metadata, loss, dataset_type, router_mapping)

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

    def generate_usage_snippet(self) -> str:
        if self.is_asymmetric:
            return super().generate_usage_snippet()
        examples = self.usage_examples or [
            f"A query in {self.target_language_name or self.target_language or 'the low-resource language'}.",
            "An English document.",
        ]
        teacher = self.teacher_id or "the/english-teacher"
        lines = [
            "from sentence_transformers import SentenceTransformer",
            "",
            "# Download from the 🤗 Hub: the student encodes queries, the English teacher encodes documents",
            f'student = SentenceTransformer("{self.model_id or MODEL_ID_PLACEHOLDER}")',
            f'teacher = SentenceTransformer("{teacher}")',
            f"queries = [{self._format_snippet_value(examples[0])}]",
            "documents = [",
            *(f"    {self._format_snippet_value(doc)}," for doc in examples[1:]),
            "]",
            "query_embeddings = student.encode(queries)",
            "document_embeddings = teacher.encode(documents)",
            "similarities = student.similarity(query_embeddings, document_embeddings)",
            "print(similarities.shape)",
            f"# [1, {len(examples) - 1}]",
        ]
        return "```python\n" + "\n".join(lines) + "\n```"

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()  # also cached for to_yaml(), so the edits below reach the front matter
        data.pop("training_compute", None)
        data.pop("measured_flops", None)
        data.pop("_train_router_mapping", None)
        data["is_asymmetric"] = self.is_asymmetric
        data["query_route"], data["document_route"] = STUDENT_ROUTE, TEACHER_ROUTE
        data["negatives"] = self.negatives or self._infer_negatives()
        data["training_flops"], data["training_compute_table"] = self._training_flops_summary()
        data["training_flops_measured"] = bool(self.measured_flops)
        data["optical_eval_table"] = self._eval_table()
        data["ot_summary"] = self._ot_summary()
        if self.eval_results:
            model_index = data.get("model-index")
            existing = model_index_to_eval_results(model_index)[1] if model_index else []
            data["model-index"] = eval_results_to_model_index(
                self.model_name or "OPTICAL model", merge_eval_results(existing, self.eval_results)
            )
            data["metrics"] = list(
                dict.fromkeys([*(data.get("metrics") or []), *(r.metric_type for r in self.eval_results)])
            )
        bitext_ids = [corpus["id"] for corpus in self.bitext if corpus.get("id")]
        if bitext_ids:  # links the parallel data on the Hub
            data["datasets"] = list(dict.fromkeys([*(data.get("datasets") or []), *bitext_ids]))
        citations = dict(data.get("citations") or {})
        if not any("huang2023optical" in text for text in citations.values()):
            citations["OPTICAL"] = OPTICAL_CITATION
        data["citations"] = citations
        return data

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def is_asymmetric(self) -> bool:
        """True for the Router model (student queries, teacher documents); False for a student-only export."""
        return self.model is not None and find_router(self.model) is not None

    def add_eval_results(self, eval_results: Iterable[EvalResult]) -> None:
        """Add evaluation results to the card; a result for the same task, dataset, split and metric is replaced."""
        self.eval_results = merge_eval_results(self.eval_results, eval_results)

    def for_student_export(self) -> OpticalModelCardData:
        """A copy for :func:`optical_st.export_student`'s student-only model (same training record, new model)."""
        new = copy.copy(self)
        for f in fields(self):
            if f.name in ("model", "code_carbon_callback", "eval_results_dict", "template_path"):
                continue
            setattr(new, f.name, copy.deepcopy(getattr(self, f.name)))
        new.eval_results_dict = dict(self.eval_results_dict or {})
        if self.model_name == self.get_default_model_name():  # derived from the Router model: derive it anew
            new.model_name = None
        new.model, new.model_id, new.ir_model, new.widget = None, None, None, []
        new.first_save, new._cached_dict = True, None
        return new

    def get_default_model_name(self) -> str:
        lrl = self.target_language_name or self.target_language
        if self.is_asymmetric:
            name = f"OPTICAL {lrl}-English retrieval model" if lrl else "OPTICAL cross-lingual retrieval model"
        else:
            name = f"OPTICAL {lrl} query encoder" if lrl else "OPTICAL query encoder"
        return f"{name} distilled from {self.teacher_id}" if self.teacher_id else name

    def _query_document_examples(self, dataset: Dataset | DatasetDict) -> list[str] | None:
        from datasets import DatasetDict as _DatasetDict

        if isinstance(dataset, (dict, _DatasetDict)):
            dataset = next(iter(dataset.values()), None)
        mapping = self._train_router_mapping
        if isinstance(next(iter(mapping.values()), None), dict):  # per-dataset mapping
            mapping = next(iter(mapping.values()))
        columns = getattr(dataset, "column_names", None) or []
        query_cols = [c for c in columns if mapping.get(c) == STUDENT_ROUTE]
        doc_cols = [c for c in columns if mapping.get(c) == TEACHER_ROUTE]
        if not query_cols or not doc_cols or len(dataset) == 0:
            return None
        rows = dataset.select(range(min(len(dataset), 100)))
        rows = sorted(rows, key=lambda row: len(str(row[query_cols[0]])))  # short texts read best in a card
        query = rows[0][query_cols[0]]
        documents = list(dict.fromkeys(row[doc_cols[0]] for row in rows))[:3]
        if not isinstance(query, str) or not all(isinstance(doc, str) for doc in documents):
            return None
        return [query, *documents]

    def _infer_negatives(self) -> str:
        sampler = str(self.all_hyperparameters.get("batch_sampler", ""))
        if "dynamic" in sampler.lower():
            return "dynamic"
        mapping = self._train_router_mapping
        if isinstance(next(iter(mapping.values()), None), dict):
            mapping = next(iter(mapping.values()))
        if sum(route == TEACHER_ROUTE for route in mapping.values()) > 1:
            return "static"
        return "none"

    def _training_flops_summary(self) -> tuple[float | None, str]:
        if self.measured_flops:  # FlopsCallback's measurement wins over the token-count estimate
            rows = [{"Phase": phase, "FLOPs": f"{flops:.3g}"} for phase, flops in self.measured_flops.items()]
            counted = sum(self.measured_flops.values())
        elif self.training_compute:
            rows = [
                {
                    "Route": f"`{route}`"
                    + (" (student)" if route == STUDENT_ROUTE else " (teacher)" if route == TEACHER_ROUTE else ""),
                    "Tokens": f"{stats['tokens']:,}",
                    "Non-embedding parameters": f"{stats['parameters']:,}",
                    "Passes": "forward + backward (6N)" if stats.get("backward") else "forward (2N)",
                    "FLOPs": f"{stats['flops']:.3g}",
                }
                for route, stats in self.training_compute.items()
            ]
            counted = sum(stats["flops"] for stats in self.training_compute.values())
        else:
            return self.training_flops, ""
        table = make_markdown_table(rows).replace("-:|", "--|")
        return (self.training_flops if self.training_flops is not None else counted), table

    def _eval_table(self) -> str:
        if not self.eval_results:
            return ""
        rows = [
            {
                "Task": result.task_name or result.task_type,
                "Dataset": result.dataset_name,
                "Split": result.dataset_split or "-",
                "Metric": result.metric_name or result.metric_type,
                "Value": round(result.metric_value, 4)
                if isinstance(result.metric_value, float)
                else result.metric_value,
            }
            for result in self.eval_results
        ]
        return make_markdown_table(rows).replace("-:|", "--|")

    def _ot_summary(self) -> list[tuple[str, str]]:
        cfg = self.ot_config
        if not cfg:
            return []
        cost = {"cosine": "1 − cosine similarity of token embeddings", "sqeuclidean": "squared Euclidean distance"}
        solver = {
            "sinkhorn": f"entropic OT, batched log-domain Sinkhorn: ε = {cfg.get('reg')}, at most {cfg.get('max_iter')} "
            f"iterations, stopping at marginal error < {cfg.get('tol')}",
            "emd": "exact OT (network simplex, POT `ot.emd`)",
        }
        marginals = (
            "uniform over content tokens; special tokens ([CLS], [SEP], <s>, ...), prompt tokens and padding get zero "
            "mass, [UNK] keeps its mass"
            if cfg.get("exclude_special_tokens")
            else "uniform over all non-padding tokens, special tokens included"
        )
        rows = [
            ("Transport solver", solver.get(cfg.get("solver"), str(cfg.get("solver")))),
            ("Cost", cost.get(cfg.get("cost"), str(cfg.get("cost")))),
            ("Marginals", marginals),
            ("Gradient", "envelope theorem: the plan is held fixed, dL/dC = P (no backpropagation through Sinkhorn)"),
        ]
        if cfg.get("sentence_weight"):
            rows.append(("Sentence-level term", f"{cfg['sentence_weight']} × (1 − cos(student, teacher))"))
        return rows


# ----------------------------------------------------------------------------------------------------------------
# evaluation results
# ----------------------------------------------------------------------------------------------------------------
def merge_eval_results(existing: Iterable[EvalResult], new: Iterable[EvalResult]) -> list[EvalResult]:
    """``existing`` with ``new`` added; a new result replaces one that differs from it only by value."""
    merged = list(existing)
    for result in new:
        merged = [old for old in merged if not old.is_equal_except_value(result)]
        merged.append(result)
    return merged


def eval_results_from_metrics(
    metrics: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_type: str,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
    task_type: str = "text-retrieval",
    task_name: str | None = "Cross-Lingual Information Retrieval",
    strip_prefix: str | None = None,
    source_name: str | None = None,
    source_url: str | None = None,
) -> list[EvalResult]:
    """``huggingface_hub.EvalResult`` objects, one a metric, for a card's ``model-index`` metadata.

    ``task_type`` is checked against the Hub's task ids as listed by the ``evaluate`` library
    (``evaluate.config.HF_HUB_ALLOWED_TASKS``); ``evaluate``'s own metrics are Hub-hosted scripts that cannot load
    offline, so the values themselves come from your evaluator (sentence-transformers' ``InformationRetrievalEvaluator``,
    ``ir-measures``, ...). Non-numeric values are skipped.

    Args:
        metrics: metric name -> value, e.g. ``{"ndcg@10": 0.41, "mrr@10": 0.37}`` or an evaluator's output.
        dataset_name: readable dataset name, e.g. ``"CLIRMatrix en-ny"``.
        dataset_type: dataset id (a Hub dataset id when there is one), e.g. ``"ntu-spml/clirmatrix"``.
        dataset_split: split used, e.g. ``"test"``.
        dataset_config: dataset configuration, e.g. ``"en-ny"``.
        dataset_revision: dataset revision (commit hash).
        task_type: Hub task id.
        task_name: readable task name.
        strip_prefix: removed from the front of metric names, e.g. an evaluator's ``"clir_cosine_"``.
        source_name / source_url: where the numbers come from (paper, leaderboard), shown by the Hub.

    Returns:
        One ``EvalResult`` per numeric metric.

    Example::

        >>> from optical_st.hub import eval_results_from_metrics
        >>> results = eval_results_from_metrics(
        ...     {"ndcg@10": 0.41}, dataset_name="CLIR en-ny", dataset_type="my-org/clir-en-ny", dataset_split="test"
        ... )
        >>> results[0].metric_type, results[0].metric_value
        ('ndcg@10', 0.41)
    """
    try:
        from evaluate.config import HF_HUB_ALLOWED_TASKS
    except ImportError:  # evaluate is a dependency, but the check is only advisory
        HF_HUB_ALLOWED_TASKS = [task_type]
    if task_type not in HF_HUB_ALLOWED_TASKS:
        logger.warning(f"task_type {task_type!r} is not a Hub task id; the Hub will not list the result on a task.")
    results = []
    for name, value in metrics.items():
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix) :]
        try:
            value = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=dataset_split,
                dataset_config=dataset_config,
                dataset_revision=dataset_revision,
                metric_type=name,
                metric_name=name,
                metric_value=value,
                source_name=source_name,
                source_url=source_url,
            )
        )
    return results


def add_eval_results_to_card(path: str | os.PathLike, eval_results: Sequence[EvalResult]) -> ModelCard:
    """Write evaluation results into a saved model card's ``model-index`` metadata (merged with what is there).

    Works on any sentence-transformers ``README.md``, including a card reused from a model loaded from the Hub.

    Args:
        path: the model folder or its ``README.md``.
        eval_results: results to add; one for the same task, dataset, split and metric replaces the old value.

    Returns:
        The updated ``huggingface_hub.ModelCard`` (already saved).
    """
    readme = Path(path) / "README.md" if Path(path).is_dir() else Path(path)
    card = ModelCard.load(readme)
    card.data.eval_results = merge_eval_results(card.data.eval_results or [], eval_results)
    if not card.data.model_name:  # model-index needs a name: the card's title, as sentence-transformers uses
        title = next((line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")), None)
        card.data.model_name = title or readme.parent.name
    card.save(readme)
    return card


# ----------------------------------------------------------------------------------------------------------------
# pushing
# ----------------------------------------------------------------------------------------------------------------
class HubPushError(RuntimeError):
    """An upload to the Hub failed; the model is safe in ``local_dir``."""

    def __init__(self, message: str, local_dir: Path) -> None:
        super().__init__(message)
        self.local_dir = local_dir


def _check_repo_id(repo_id: str) -> None:
    if not _HUB_ID.match(repo_id):
        raise ValueError(
            f"repo_id must be 'namespace/name' (your user or organization, then the model name), got {repo_id!r}; "
            "the model card's usage snippet loads the model by this id."
        )


def push_to_hub(
    model: SentenceTransformer,
    repo_id: str,
    *,
    local_dir: str | os.PathLike,
    private: bool = False,
    create_pr: bool = False,
    token: str | bool | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    safe_serialization: bool = True,
) -> str | None:
    """Save ``model`` (weights and a freshly generated card) to ``local_dir``, then upload that folder to the Hub.

    The local save comes first, so a failed upload (no network, offline mode, bad token, no permission) leaves a
    complete model folder behind and raises :class:`HubPushError` saying where it is; push it later with
    :func:`push_folder_to_hub`. In a distributed run only the main process saves and pushes; the others return
    ``None`` at once (call it on every rank, as with ``trainer.push_to_hub``).

    Args:
        model: the model to ship: the OPTICAL Router model (``encode_query`` = student, ``encode_document`` =
            teacher) or a student-only model from :func:`optical_st.export_student`.
        repo_id: ``"namespace/name"`` on the Hub; created if needed.
        local_dir: folder for the local copy; must be empty or missing unless ``overwrite=True``.
        private: create the repository as private (an existing repository keeps its visibility).
        create_pr: open a pull request instead of committing to the branch.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the token saved by ``hf auth login``.
        eval_results: evaluation results for the card and its ``model-index`` metadata
            (see :func:`eval_results_from_metrics`).
        commit_message: commit title; a default names the model.
        revision: branch to push to (created if missing).
        overwrite: allow saving into a non-empty ``local_dir`` (files with the same names are replaced).
        safe_serialization: save weights as safetensors.

    Returns:
        The commit URL, or the pull request URL with ``create_pr=True``; ``None`` on non-main processes.

    Example::

        >>> from optical_st.hub import eval_results_from_metrics, push_to_hub
        >>> results = eval_results_from_metrics(
        ...     {"ndcg@10": 0.41}, dataset_name="CLIR en-ny", dataset_type="my-org/clir-en-ny", dataset_split="test"
        ... )
        >>> push_to_hub(model, "my-org/optical-chichewa", local_dir="runs/optical-chichewa", eval_results=results)  # doctest: +SKIP
        'https://huggingface.co/my-org/optical-chichewa/commit/...'
    """
    _check_repo_id(repo_id)
    if not _is_main_process():
        return None
    local_dir = Path(local_dir)
    if local_dir.exists() and any(local_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{local_dir} is not empty; everything in it would be uploaded. Choose an empty folder, pass "
            "overwrite=True, or push an already saved model folder with push_folder_to_hub()."
        )
    model.model_card_data.set_model_id(repo_id)
    if eval_results and isinstance(model.model_card_data, OpticalModelCardData):
        model.model_card_data.add_eval_results(eval_results)
    model.save_pretrained(str(local_dir), safe_serialization=safe_serialization)
    logger.info(f"Saved {repo_id} to {local_dir}; uploading.")
    return push_folder_to_hub(
        local_dir,
        repo_id,
        private=private,
        create_pr=create_pr,
        token=token,
        eval_results=eval_results,
        commit_message=commit_message or f"Add OPTICAL {type(model).__name__} model",
        revision=revision,
    )


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    create_pr: bool = False,
    token: str | bool | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str | None:
    """Upload a saved sentence-transformers model folder, with its card, to the Hub.

    The card's usage snippet gets the repository id, and ``eval_results`` are merged into its ``model-index``
    metadata, before the upload. On failure raises :class:`HubPushError`; the folder is left as it was (apart
    from those card edits). Only the main process of a distributed run pushes; the others return ``None``.

    Args:
        folder: a folder written by ``model.save_pretrained`` (it has ``modules.json``).
        repo_id: ``"namespace/name"`` on the Hub; created if needed.
        private, create_pr, token, eval_results, commit_message, revision: as in :func:`push_to_hub`.

    Returns:
        The commit URL, or the pull request URL with ``create_pr=True``; ``None`` on non-main processes.

    Example::

        >>> from optical_st.hub import push_folder_to_hub
        >>> push_folder_to_hub("runs/optical-chichewa", "my-org/optical-chichewa", create_pr=True)  # doctest: +SKIP
        'https://huggingface.co/my-org/optical-chichewa/discussions/1'
    """
    _check_repo_id(repo_id)
    if not _is_main_process():
        return None
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved sentence-transformers model (no modules.json).")
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf8")
        if MODEL_ID_PLACEHOLDER in text:
            readme.write_text(text.replace(MODEL_ID_PLACEHOLDER, repo_id), encoding="utf8")
        if eval_results:
            add_eval_results_to_card(readme, eval_results)
    elif eval_results:
        raise FileNotFoundError(f"{folder} has no README.md to write the evaluation results into.")

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message or "Add OPTICAL sentence-transformers model",
            commit_description=f"Uploaded with optical_st from {folder.name}." if create_pr else None,
            create_pr=create_pr,
            revision=revision,
        )
    except Exception as exc:
        raise HubPushError(
            f"Pushing to https://huggingface.co/{repo_id} failed ({type(exc).__name__}: {exc}). The model is saved "
            f"locally in {folder.resolve()}; fix the cause (network, HF_HUB_OFFLINE, token: `hf auth login` or "
            f"HF_TOKEN, write access to the namespace) and retry with "
            f"optical_st.hub.push_folder_to_hub({str(folder)!r}, {repo_id!r}).",
            local_dir=folder,
        ) from exc
    url = commit.pr_url if create_pr else commit.commit_url
    logger.info(f"Pushed {folder} to {url}")
    return url
