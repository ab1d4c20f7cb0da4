"""The methods a research run compares: a :class:`Method` turns a fresh OPTICAL model and the bitext into a
:class:`TrainSetup` (loss, training columns, optional batch sampler). Built-ins: :func:`zero_shot`,
:func:`ot_distillation`, :func:`contrastive_distillation`, :func:`mse_distillation`, :func:`score_distillation`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MSELoss
from torch import nn

from optical_st.evaluation.flops import PhaseFlopCounter
from optical_st.losses import ContrastiveDistillationLoss, OTDistillationLoss, ScoreDistillationLoss
from optical_st.modeling import router_mapping
from optical_st.phases import MINING
from optical_st.research.config import ExperimentConfig
from optical_st.research.pool import english_pool, teacher_encoder
from optical_st.sampling import DynamicHardNegativeSampler, LengthGroupedBatchSampler, TeacherCandidates

__all__ = [
    "ENGLISH_CEILING",
    "Method",
    "TrainSetup",
    "contrastive_distillation",
    "english_ceiling",
    "mse_distillation",
    "ot_distillation",
    "score_distillation",
    "zero_shot",
]


@dataclass
class TrainSetup:
    """What a method trains with. ``counted_phases``: the work phases (:mod:`optical_st.phases`) during training whose
    FLOPs are one-off costs, counted exactly (e.g. ``MINING``, a sampler's re-mining); ``one_off_flops``: FLOPs spent
    before training (e.g. teacher label precomputation)."""

    loss: nn.Module
    train_dataset: Dataset
    router_mapping: dict[str, str]
    batch_sampler: Any = None
    counted_phases: list[str] = field(default_factory=list)
    one_off_flops: dict[str, int] = field(default_factory=dict)


@dataclass
class Method:
    """A named way of training the student; ``setup=None`` means no training (the zero-shot teacher)."""

    name: str
    setup: Callable[[SentenceTransformer, Dataset, ExperimentConfig], TrainSetup] | None
    description: str = ""
    model: str | None = None  # without training: the model to evaluate (None: the config's teacher)


ENGLISH_CEILING = "English queries (ceiling)"


def zero_shot(name: str = "zero-shot", model: str | None = None) -> Method:
    """A model used directly for LRL queries and English documents, no training: the teacher, or ``model``."""
    description = "encodes both the LRL queries and the English documents; no training"
    return Method(name, None, f"{'the teacher' if model is None else model} {description}", model=model)


def english_ceiling() -> Method:
    """A reference row, not a method: the teacher reading the *English* version of the relevance queries. It is what
    OPTICAL aims at: the teacher's query-document matching, reached from the low-resource language with only bitext."""
    return Method(ENGLISH_CEILING, None, "the teacher encodes the English queries and documents; no training")


def _pairs(train: Dataset, negatives: bool = False) -> tuple[Dataset, dict[str, str]]:
    """``(english, lrl)``, plus the ``negative_*`` columns (English, teacher route) when the loss takes them and the
    data has them (:func:`~optical_st.recipe.mine_static_negatives`)."""
    extra = [c for c in train.column_names if c.startswith("negative")] if negatives else []
    data = train.select_columns(["english", "lrl", *extra])
    return data, router_mapping(data)  # english and negatives -> teacher route, lrl -> student route


def ot_distillation(name: str = "OT-KD", sampler: dict[str, Any] | None = None, **loss_kwargs: Any) -> Method:
    """:class:`~optical_st.OTDistillationLoss` (``loss_kwargs`` go to it). ``sampler``: keyword settings for
    ``DynamicHardNegativeSampler.configure`` (hard negatives for the loss's ``contrastive_weight`` term)."""

    def setup(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> TrainSetup:
        # mined negatives in the data feed the InfoNCE term; the sampler brings its own
        data, mapping = _pairs(train, negatives=sampler is None and loss_kwargs.get("contrastive_weight", 0) > 0)
        plan = TrainSetup(OTDistillationLoss(model, **loss_kwargs), data, mapping)
        if sampler is not None:
            _attach_sampler(plan, sampler, config)
        return plan

    return Method(name, setup, f"OTDistillationLoss({_kwargs_text(loss_kwargs)})" + _sampler_text(sampler))


def contrastive_distillation(name: str = "Contrastive-KD", **loss_kwargs: Any) -> Method:
    """:class:`~optical_st.ContrastiveDistillationLoss` (in-batch InfoNCE against the frozen teacher)."""

    def setup(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> TrainSetup:
        data, mapping = _pairs(train, negatives=True)
        return TrainSetup(ContrastiveDistillationLoss(model, **loss_kwargs), data, mapping)

    return Method(name, setup, f"ContrastiveDistillationLoss({_kwargs_text(loss_kwargs)})")


def mse_distillation(name: str = "MSE-KD") -> Method:
    """sentence-transformers' ``MSELoss`` (Reimers & Gurevych, 2020): the student's LRL embedding regresses the
    teacher's embedding of the English translation, precomputed once before training (counted as one-off FLOPs and in
    the wall time)."""

    def setup(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> TrainSetup:
        english = list(train["english"])
        with PhaseFlopCounter() as counter:
            labels = model.encode_document(english, batch_size=config.eval_batch_size, convert_to_tensor=True)
        data = Dataset.from_dict({"lrl": list(train["lrl"]), "label": labels.cpu().float().tolist()})
        return TrainSetup(
            MSELoss(model), data, {"lrl": "query"}, one_off_flops={"teacher_precompute": counter.get_total_flops()}
        )

    return Method(name, setup, "sentence_transformers MSELoss on precomputed teacher embeddings of the English side")


def score_distillation(
    name: str = "Score-KD",
    temperature: float = 0.03,
    num_candidates: int = 15,
    with_ot: bool = False,
    pool: str = "train-books",
    sampler: dict[str, Any] | None = None,
    **loss_kwargs: Any,
) -> Method:
    """Score distillation (:class:`~optical_st.ScoreDistillationLoss`): the teacher's query embedding of each English
    side scores the pair's English verse and its ``num_candidates`` nearest English texts of ``pool``
    (:func:`optical_st.research.pool.english_pool`); the student's LRL embedding must give the same softmax. With
    ``with_ot``, OPTICAL's OT term too: ``OTDistillationLoss(score_weight=1.0)`` (``loss_kwargs`` go to the loss).
    The pool's and the queries' teacher embeddings are computed once (cached on disk; counted as one-off FLOPs).

    ``sampler``: instead of the teacher's candidates, ``DynamicHardNegativeSampler.configure`` settings: the pool's
    texts nearest to the *student's* LRL embedding, mined before training (``refresh_steps=None``) or re-mined during
    it, scored by the teacher in the loss (soft labels)."""

    def setup(model: SentenceTransformer, train: Dataset, config: ExperimentConfig) -> TrainSetup:
        encode, flops = teacher_encoder(model, config)
        table = TeacherCandidates.build(model, english_pool(config, train, pool), encode=encode)
        if sampler is None:
            data = table.attach(train, model, num_candidates=num_candidates, encode=encode)
        else:  # the sampler adds candidate columns; the label is the teacher's query embedding alone
            labels = table.query_embeddings([str(t) for t in train["english"]], model, encode=encode)
            data = train.select_columns(["english", "lrl"]).add_column("label", labels.tolist())
        candidates = table if sampler is None else None
        if with_ot:
            kwargs = {"score_weight": 1.0, **loss_kwargs}
            loss: nn.Module = OTDistillationLoss(model, temperature=temperature, candidates=candidates, **kwargs)
        else:
            loss = ScoreDistillationLoss(model, temperature=temperature, candidates=candidates, **loss_kwargs)
        plan = TrainSetup(loss, data, router_mapping(data.remove_columns("label")))
        if sampler is not None:
            _attach_sampler(plan, {"num_negatives": num_candidates, "corpus": list(table.texts), **sampler}, config)
        plan.one_off_flops["teacher_precompute"] = flops()
        return plan

    settings = {"temperature": temperature, "num_candidates": num_candidates, "pool": pool, **loss_kwargs}
    loss_name = "OTDistillationLoss(score_weight=1.0, ...)" if with_ot else "ScoreDistillationLoss"
    source = "student-mined candidates" + _sampler_text(sampler) if sampler is not None else "teacher candidates"
    return Method(name, setup, f"{loss_name}, {source} ({_kwargs_text(settings)})")


def _attach_sampler(plan: TrainSetup, settings: dict[str, Any], config: ExperimentConfig) -> None:
    # the mined arms batch like the other methods: grouped by length when the command's batches are
    grouped = isinstance(config.batch_sampler, type) and issubclass(config.batch_sampler, LengthGroupedBatchSampler)
    plan.batch_sampler = DynamicHardNegativeSampler.configure(**{"group_by_length": grouped, **settings})
    # every (re-)mining: encoding anchors and candidates with the current model, and the search
    plan.counted_phases.append(MINING)


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _sampler_text(sampler: dict[str, Any] | None) -> str:
    return f" + DynamicHardNegativeSampler({_kwargs_text(sampler)})" if sampler is not None else ""
