"""OPTICAL's recommended training recipe, defined once: :data:`RECOMMENDED`.

Every entry point trains with it: the ``optical-st train`` command (:mod:`optical_st.cli`), the README quickstart,
``examples/train_chichewa.py``, ``examples/demo.py`` (whose default student produced the results in docs/demo.md)
and the hard-negative docs. A test fails when one of them drifts from it (``tests/test_train_command.py``).

What the recipe is, in the terms the project uses everywhere:

* **the paper's loss**: OPTICAL's token-level optimal-transport distillation alone, with the paper's raw cosine cost
  (``OTDistillationLoss(model, ot_config=OTConfig(center=False, cost_scale=None))``);
* **OT alone**: the same loss with centred, rescaled costs (``OTDistillationLoss(model)``, its defaults), which is
  what makes the OT term help a multilingual student (docs/ot_multilingual.md);
* **the recommended recipe** (this module): OT alone plus an InfoNCE term on the pooled embeddings
  (``contrastive_weight=1``) at the teacher's own training temperature (multilingual-e5 was trained at 0.01; a softer
  one pulls the student out of the teacher's space), against the batch's English texts and one English hard
  negative per pair mined once with the starting model; the student's word embeddings frozen; batches of similar
  length; 96 tokens in training; batch 32, learning rate 5e-5, 10% warm-up, one epoch; the model's
  ``query``/``passage`` prompts in training as at search time.

Change a setting with :func:`dataclasses.replace`, e.g. ``replace(RECOMMENDED, temperature=0.05)`` for a teacher
trained at 0.05.

The other recipe, :data:`OT_SCORE` (``optical-st train --recipe ot-score``): the OT term plus score distillation, the
frozen teacher's softmax over each pair's nearest English texts of a pool (the bitext's English and any English you
add) instead of InfoNCE's hard labels. It carries the teacher's ranking over better (docs/research_results.md, "Score
distillation": higher relevance at every size measured) but loses a little translation accuracy at the demo's size,
which is why it is not the default. Its data needs the pool::

    candidates = OT_SCORE.teacher_candidates(model, list(train["english"]) + more_english)
    train = OT_SCORE.prepare_dataset(train, model, english_column="english", lrl_column="swahili", candidates=candidates)
    loss = OT_SCORE.loss(model, candidates=candidates)

Example::

    from optical_st import OpticalTrainer
    from optical_st.recipe import RECOMMENDED

    model = RECOMMENDED.build_model("intfloat/multilingual-e5-small")
    train = RECOMMENDED.mine_hard_negatives(train, model, english_column="english", lrl_column="swahili")
    args = RECOMMENDED.training_args("out", model, train)
    OpticalTrainer(model=model, args=args, train_dataset=train, loss=RECOMMENDED.loss(model)).train()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.util import mine_hard_negatives

from optical_st import compat
from optical_st.losses import OTDistillationLoss
from optical_st.modeling import build_optical_model, column_prompts, router_mapping
from optical_st.sampling import LengthGroupedBatchSampler, TeacherCandidates

__all__ = [
    "OT_INFONCE",
    "OT_SCORE",
    "RECIPES",
    "RECOMMENDED",
    "OpticalTrainingArguments",
    "Recipe",
    "mine_static_negatives",
]

logger = logging.getLogger(__name__)

_NEEDS_CANDIDATES = (
    "This recipe distils the teacher's scores: pass candidates=recipe.teacher_candidates(model, english)."
)


@compat.parse_as_dict("max_length")  # from a JSON string on the command line, as transformers parses its dict fields
@dataclass
class OpticalTrainingArguments(SentenceTransformerTrainingArguments):
    """``SentenceTransformerTrainingArguments`` plus ``max_length``, as sentence-transformers'
    ``MultiVectorEncoderTrainingArguments`` has it: the trainer's collator then truncates training texts, while
    evaluators, inference and the saved model keep the lengths configured on the model (the teacher keeps reading
    long documents at search time).

    Args:
        max_length: tokens per training text (prompt included): an ``int`` for every column, or a mapping of
            routes (``"query"``, ``"document"``) to lengths. ``None``: the model's own.
    """

    max_length: Union[int, dict[str, int], None] = field(  # noqa: UP007 (transformers' argument parser needs Union)
        default=None,
        metadata={"help": "Maximum tokens per training text: an int, or a mapping of routes to lengths."},
    )


@dataclass(frozen=True)
class Recipe:
    """How to train an OPTICAL student: the loss, the data preparation and the trainer settings.

    Args:
        contrastive_weight: weight of the InfoNCE term of :class:`~optical_st.OTDistillationLoss` (0: OT alone).
        temperature: the InfoNCE temperature; the teacher's own training temperature (multilingual-e5: 0.01).
        num_negatives: English hard negatives per pair, mined once with the starting model (0: in-batch only).
        mining_batch_size: encoding batch size of the mining.
        train_word_embeddings: ``False`` freezes the student's word-embedding matrix (most of a multilingual
            encoder's parameters; distillation needs the layers above it).
        max_seq_length: tokens per text in training, both routes (verse- and sentence-length bitext fits); the
            saved model keeps its own lengths.
        group_by_length: batches of rows of similar length (:class:`~optical_st.sampling.LengthGroupedBatchSampler`):
            less padding, faster CPU steps.
        batch_size, learning_rate, warmup_ratio, epochs: the trainer's.
        adapter: ``True`` trains the student as a LoRA adapter on the teacher's own weights
            (:func:`optical_st.adapters.default_adapter_config`; needs the ``[peft]`` extra): one copy of the base in
            memory, a saved model of a few megabytes. ``False``: full fine-tuning.
        adapter_learning_rate: the learning rate with ``adapter=True`` (an adapter starts at zero and needs larger
            steps than full fine-tuning; results/adapters/ compares them).
        score_weight: weight of the score-distillation term (the teacher's softmax over English candidates, at
            ``temperature``; :class:`~optical_st.ScoreDistillationLoss`). Above 0 the data needs candidates:
            :meth:`teacher_candidates` and :meth:`prepare_dataset`; hard negatives (``num_negatives``) are not mined.
        num_candidates: with ``score_weight``: each pair's nearest English pool texts the teacher scores.
    """

    contrastive_weight: float = 1.0
    temperature: float = 0.01
    num_negatives: int = 1
    mining_batch_size: int = 64
    train_word_embeddings: bool = False
    max_seq_length: int = 96
    group_by_length: bool = True
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    epochs: float = 1.0
    adapter: bool = False
    adapter_learning_rate: float = 1e-3
    score_weight: float = 0.0
    num_candidates: int = 15

    def __post_init__(self) -> None:
        if self.score_weight < 0 or self.contrastive_weight < 0:
            raise ValueError("score_weight and contrastive_weight cannot be negative.")
        if self.score_weight and self.num_negatives:
            raise ValueError(
                "Score distillation scores each pair's own candidates: with score_weight > 0 set num_negatives=0."
            )

    @property
    def train_learning_rate(self) -> float:
        """The learning rate training uses: :attr:`adapter_learning_rate` for an adapter student, else
        :attr:`learning_rate`."""
        return self.adapter_learning_rate if self.adapter else self.learning_rate

    @property
    def batch_sampler(self) -> Any:
        """The ``batch_sampler`` training argument."""
        return LengthGroupedBatchSampler if self.group_by_length else BatchSamplers.BATCH_SAMPLER

    def loss_kwargs(self) -> dict[str, float]:
        """The keyword arguments of :class:`~optical_st.OTDistillationLoss` beyond its defaults."""
        kwargs: dict[str, Any] = {"contrastive_weight": self.contrastive_weight, "temperature": self.temperature}
        return {**kwargs, "score_weight": self.score_weight} if self.score_weight else kwargs

    def loss(
        self, model: SentenceTransformer, candidates: TeacherCandidates | None = None, **kwargs: Any
    ) -> OTDistillationLoss:
        """The recipe's :class:`~optical_st.OTDistillationLoss` for ``model`` (``kwargs``: e.g. ``teacher_cache=``);
        with ``score_weight``, ``candidates`` is the pool :meth:`prepare_dataset` drew the candidates from."""
        if self.score_weight and candidates is None:
            raise ValueError(_NEEDS_CANDIDATES)
        extra = {"candidates": candidates} if self.score_weight else {}
        return OTDistillationLoss(model, **{**self.loss_kwargs(), **extra, **kwargs})

    def teacher_candidates(
        self, model: SentenceTransformer, english: Sequence[str], *, compute_dtype: str = "auto", verbose: bool = True
    ) -> TeacherCandidates:
        """The English pool score distillation draws candidates from, encoded once by ``model``'s frozen teacher:
        the bitext's English side plus any other English texts you have (English is free for every language; never
        evaluation texts). ``compute_dtype="auto"``: bf16 on a CPU with fast bf16 (see
        :meth:`TeacherCandidates.build`)."""
        return TeacherCandidates.build(
            model, english, batch_size=self.mining_batch_size, show_progress_bar=verbose, compute_dtype=compute_dtype
        )

    def prepare_dataset(
        self,
        dataset: Dataset,
        model: SentenceTransformer,
        *,
        english_column: str = "english",
        lrl_column: str | None = None,
        candidates: TeacherCandidates | None = None,
        verbose: bool = True,
    ) -> Dataset:
        """The training columns for this recipe: ``(english, lrl, label)`` with each pair's candidates and the
        teacher's query embedding (score distillation, from ``candidates``), else :meth:`mine_hard_negatives`."""
        if not self.score_weight:
            return self.mine_hard_negatives(
                dataset, model, english_column=english_column, lrl_column=lrl_column, verbose=verbose
            )
        if candidates is None:
            raise ValueError(_NEEDS_CANDIDATES)
        num_candidates = min(self.num_candidates, len(candidates.texts) - 1)
        if num_candidates < self.num_candidates:  # a small bitext without more English: as many as there are
            logger.warning(
                "The English pool holds %d texts: %d candidates per pair instead of %d (add English texts to the pool).",
                len(candidates.texts), num_candidates, self.num_candidates,
            )  # fmt: skip
        return candidates.attach(
            dataset,
            model,
            num_candidates=num_candidates,
            english_column=english_column,
            lrl_column=lrl_column or _other_column(dataset, english_column),
            batch_size=self.mining_batch_size,
        )

    def build_model(
        self, teacher: SentenceTransformer | str, student: SentenceTransformer | str | None = None, **kwargs: Any
    ) -> SentenceTransformer:
        """:func:`optical_st.build_optical_model` with the recipe's frozen word embeddings and, with ``adapter=True``,
        an adapter student (``kwargs`` go to it: ``model_card_data=``, ``device=``, ...)."""
        if self.adapter:
            kwargs.setdefault("adapter", True)
        return build_optical_model(teacher, student, train_word_embeddings=self.train_word_embeddings, **kwargs)

    def mine_hard_negatives(
        self,
        dataset: Dataset,
        model: SentenceTransformer,
        *,
        english_column: str = "english",
        lrl_column: str | None = None,
        verbose: bool = True,
    ) -> Dataset:
        """:func:`mine_static_negatives` with the recipe's :attr:`num_negatives` and :attr:`mining_batch_size`: the
        training columns ``(english, lrl, negative_1, ...)``, mined once with the starting ``model``."""
        return mine_static_negatives(
            dataset,
            model,
            english_column=english_column,
            lrl_column=lrl_column,
            num_negatives=self.num_negatives,
            batch_size=self.mining_batch_size,
            verbose=verbose,
        )

    def training_args(
        self, output_dir: str, model: SentenceTransformer, train_dataset: Dataset, **kwargs: Any
    ) -> OpticalTrainingArguments:
        """Training arguments with the recipe's settings for a dataset ordered ``(english, lrl, *negatives)`` (as
        :meth:`mine_hard_negatives` returns it): routes (English and negatives to the teacher, LRL to the student),
        the model's prompts on each column as ``encode_query`` / ``encode_document`` add them, length-grouped batches,
        the training length. ``kwargs`` override or add arguments (``max_steps``, ``seed``, ``report_to``,
        ``batch_sampler``, ...)."""
        mapping = router_mapping(train_dataset)
        settings: dict[str, Any] = {
            "num_train_epochs": self.epochs,
            "per_device_train_batch_size": self.batch_size,
            "learning_rate": self.train_learning_rate,
            "warmup_steps": self.warmup_ratio,  # below 1: a fraction of the steps
            "batch_sampler": self.batch_sampler,
            "router_mapping": mapping,
            "prompts": column_prompts(model, mapping),
            "max_length": self.max_seq_length,
        }
        return OpticalTrainingArguments(output_dir=output_dir, **{**settings, **kwargs})


OT_INFONCE = Recipe()
"""OT + InfoNCE at the teacher's temperature with one mined hard negative (see the module docstring)."""

OT_SCORE = Recipe(contrastive_weight=0.0, temperature=0.03, num_negatives=0, score_weight=1.0)
"""OT + score distillation: the teacher's softmax (temperature 0.03) over each pair's 15 nearest English texts of a
pool and the batch's other candidates, instead of InfoNCE's hard labels (docs/research_results.md, "Score
distillation")."""

RECIPES = {"ot-infonce": OT_INFONCE, "ot-score": OT_SCORE}
"""The recipes by the name ``optical-st train --recipe`` takes."""

RECOMMENDED = OT_INFONCE
"""The recommended recipe. The demo's default student (docs/demo.md) was trained with exactly these settings."""


def mine_static_negatives(
    dataset: Dataset,
    model: SentenceTransformer,
    *,
    english_column: str = "english",
    lrl_column: str | None = None,
    num_negatives: int = 1,
    batch_size: int = 64,
    verbose: bool = True,
    **mining_kwargs: Any,
) -> Dataset:
    """Static hard negatives, mined once: the training columns ``(english, lrl, negative_1, ...)``, columns picked by
    name. For each pair, the English texts of other pairs that ``model`` ranks closest to its LRL text
    (``encode_query``, the student) among all English texts (``encode_document``, the teacher), through
    sentence-transformers' :func:`~sentence_transformers.util.mine_hard_negatives`.

    Mine with the model training starts from, once, and give the result to every method that trains on the same data.
    The miner treats every English text paired with an LRL text as its positive (never its negative) and keeps one
    row per LRL text, so pairs whose LRL text repeats go; rows it cannot give ``num_negatives`` negatives are dropped
    too.

    Args:
        dataset: the bitext.
        model: the model training starts from.
        english_column: the English column (read by the teacher).
        lrl_column: the low-resource-language column (read by the student); default: the other text column.
        num_negatives: negatives per pair; ``0`` returns the two columns unmined.
        batch_size: encoding batch size.
        verbose: encoding progress bars and mining statistics.
        **mining_kwargs: further settings of ``mine_hard_negatives`` (``range_min``, ``relative_margin``, ...).
    """
    lrl_column = lrl_column or _other_column(dataset, english_column)
    if not num_negatives:
        return dataset.select_columns([english_column, lrl_column])
    mined = mine_hard_negatives(
        dataset.select_columns([lrl_column, english_column]),
        model,
        anchor_column_name=lrl_column,
        positive_column_name=english_column,
        num_negatives=num_negatives,
        output_format="n-tuple",
        batch_size=batch_size,
        verbose=verbose,
        **mining_kwargs,
    )
    negatives = [f"negative_{i}" for i in range(1, num_negatives + 1)]
    return mined.select_columns([english_column, lrl_column, *negatives])


def _other_column(dataset: Dataset, english_column: str) -> str:
    others = [c for c in dataset.column_names if c != english_column and not c.startswith("negative")]
    if len(others) != 1:
        raise ValueError(
            f"Name the low-resource-language column (lrl_column=...): the dataset has columns {dataset.column_names}."
        )
    return others[0]
