"""The settings of :class:`~optical_st.DynamicHardNegativeSampler`, validated once, before any training starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from optical_st.routes import column_routes, text_columns
from optical_st.utils import as_float, as_int

__all__ = ["HardNegativeConfig"]


@dataclass
class HardNegativeConfig:
    """What to mine, how often, and how the negatives reach the loss: the settings of
    :class:`~optical_st.DynamicHardNegativeSampler` (``DynamicHardNegativeSampler.configure(**fields)``), read as one
    object by its callback and by :func:`~optical_st.sampling.mine_negatives`. Checked once, here.

    Attributes:
        num_negatives: negative columns per row.
        refresh_steps: optimizer steps between refreshes; ``None``: static (every anchor mined once, with the
            initial model, before training).
        strategy: ``"hard"`` mines with the model, ``"random"`` draws uniformly (never a positive; no encoding).
        range_min / range_max, absolute_margin, relative_margin, max_score, min_score, sampling_strategy
            (``"top"`` / ``"random"``): exactly as in :func:`sentence_transformers.util.mine_hard_negatives` (the
            rank window over the candidates left after the filters, the false-negative filters, and how the
            negatives are taken from the window).
        max_positive_similarity: drop candidates whose document embedding has a higher cosine than this with the
            positive's: near-duplicates of the positive, judged by the frozen teacher on an OPTICAL model (e.g. 0.9:
            the Bible repeats verses nearly word for word).
        hard_batches: also compose batches from mutually hard anchors, so in-batch negatives are hard too (needs
            every anchor mined before training, so the first mining covers all anchors).
        group_by_length: rows of similar text length share a batch, as in
            :class:`~optical_st.sampling.LengthGroupedBatchSampler` (mined negatives still pad their own columns):
            less padding than random batches, so faster steps; in-batch negatives are then of similar length. Not
            with ``hard_batches``.
        anchor_column / positive_column: default: the columns that ``router_mapping`` routes to ``"query"`` /
            ``"document"``, else those the loss declares in ``retrieval_columns`` (OPTICAL losses: the LRL column is
            the anchor, the English one the positive), else the first / second (:meth:`resolve_columns`).
        corpus: extra candidate texts besides the positives.
        negative_column_prefix: the columns are ``{prefix}_1 .. {prefix}_k``.
        mining_batch_size: encoding batch size while mining.
        use_faiss: ``None``: faiss when installed; ``True`` / ``False`` force a search backend.
        cache_documents: ``None``: cache the pool's embeddings when ``encode_document`` has no trainable parameter.
        show_progress_bar: encoding progress bars while mining.
    """

    num_negatives: int = 1
    refresh_steps: int | None = 200
    strategy: Literal["hard", "random"] = "hard"
    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    max_positive_similarity: float | None = None
    sampling_strategy: Literal["top", "random"] = "top"
    hard_batches: bool = False
    group_by_length: bool = False
    anchor_column: str | None = None
    positive_column: str | None = None
    corpus: list[str] | None = field(default=None, repr=False)
    negative_column_prefix: str = "negative"
    mining_batch_size: int = 64
    use_faiss: bool | None = None
    cache_documents: bool | None = None
    show_progress_bar: bool = True  # mining encodes the whole pool and many anchors: show that it moves

    def __post_init__(self) -> None:
        self.num_negatives = as_int("num_negatives", self.num_negatives)
        self.mining_batch_size = as_int("mining_batch_size", self.mining_batch_size)
        if self.refresh_steps is not None:
            self.refresh_steps = as_int("refresh_steps", self.refresh_steps)
        if self.strategy not in ("hard", "random"):
            raise ValueError(f"strategy must be 'hard' (mined with the model) or 'random', got {self.strategy!r}.")
        if self.sampling_strategy not in ("top", "random"):
            raise ValueError(f"sampling_strategy must be 'top' or 'random', got {self.sampling_strategy!r}.")
        self.range_min = as_int("range_min", self.range_min, minimum=0)
        if self.range_max is not None:
            self.range_max = as_int("range_max", self.range_max, minimum=1)
        if self.range_max is not None and self.num_negatives > self.range_max - self.range_min:
            raise ValueError(
                f"Cannot take {self.num_negatives} negatives from the rank window [{self.range_min}, {self.range_max}):"
                " raise range_max or lower num_negatives/range_min."
            )
        for name in ("absolute_margin", "relative_margin", "max_score", "min_score", "max_positive_similarity"):
            value = getattr(self, name)
            if value is not None:  # finite, stored as a float (numpy scalars and 0-d tensors accepted)
                setattr(self, name, as_float(name, value))
        if self.hard_batches and self.strategy == "random":
            raise ValueError(
                "hard_batches groups anchors that are hard negatives of each other; with strategy='random' there is "
                "no such relation. Use strategy='hard' or hard_batches=False."
            )
        if self.hard_batches and self.group_by_length:
            raise ValueError(
                "hard_batches and group_by_length both decide which rows share a batch; choose one (hard_batches: "
                "in-batch negatives are hard; group_by_length: less padding, faster steps)."
            )
        if not self.negative_column_prefix or not isinstance(self.negative_column_prefix, str):
            raise ValueError("negative_column_prefix must be a non-empty string.")
        if self.corpus is not None:
            if isinstance(self.corpus, (str, bytes)):  # list("abc") would be three one-letter candidates
                raise ValueError(
                    f"corpus must be a list of strings, got a single {type(self.corpus).__name__}; wrap it: "
                    "corpus=[text]."
                )
            self.corpus = list(self.corpus)
            if not all(isinstance(text, str) for text in self.corpus):
                raise ValueError("corpus must be a list of strings.")

    @property
    def filters_scores(self) -> bool:
        """Whether a filter that widens sentence-transformers' default window is set (``range_max`` then defaults to
        ten candidates per negative: :func:`~optical_st.sampling.default_range_max`)."""
        return any(
            value is not None
            for value in (self.absolute_margin, self.relative_margin, self.max_score, self.max_positive_similarity)
        )

    @property
    def mode(self) -> Literal["static", "dynamic", "random"]:
        """``"dynamic"``: hard negatives mined again with the current model every ``refresh_steps`` during training;
        ``"static"`` (``refresh_steps=None``): mined once, before training; ``"random"``: drawn uniformly
        (``strategy="random"``), without the model. What the model card reports."""
        if self.strategy == "random":
            return "random"
        return "static" if self.refresh_steps is None else "dynamic"

    @property
    def negative_columns(self) -> list[str]:
        """``negative_1 .. negative_k``: the columns added to every training row."""
        return [f"{self.negative_column_prefix}_{i + 1}" for i in range(self.num_negatives)]

    def non_default(self) -> dict[str, Any]:
        """The fields that differ from their defaults (for reprs and logs); ``corpus`` shown by its size."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default and not (f.name == "corpus" and value is None):
                out[f.name] = f"<{len(value)} texts>" if f.name == "corpus" else value
        return out

    def resolve_columns(
        self,
        columns: Sequence[str],
        label_columns: Sequence[str] = (),
        router_mapping: dict[str, Any] | None = None,
        retrieval_columns: tuple[int, int] | None = None,
    ) -> tuple[str, str]:
        """The ``(anchor, positive)`` columns of a dataset with these settings.

        ``anchor_column`` / ``positive_column`` when set; else the columns ``router_mapping`` routes to ``"query"`` /
        ``"document"``; else the text columns at the loss's ``retrieval_columns`` positions (OPTICAL losses read
        ``(english, lrl, *negatives)`` and declare ``(1, 0)``: the LRL side is the anchor); else the first / second
        text column.
        """
        texts = text_columns(columns, label_columns)
        routes = column_routes(router_mapping)
        by_task = {task: [c for c in texts if routes.get(c) == task] for task in ("query", "document")}
        if retrieval_columns is not None and not by_task["query"] and len(texts) > max(retrieval_columns):
            by_task = {"query": [texts[retrieval_columns[0]]], "document": [texts[retrieval_columns[1]]]}
        anchor = self.anchor_column or (by_task["query"][0] if by_task["query"] else (texts[0] if texts else None))
        positive = self.positive_column
        if positive is None:
            rest = [c for c in (by_task["document"] or texts) if c != anchor]
            positive = rest[0] if rest else None
        for name, value in (("anchor_column", anchor), ("positive_column", positive)):
            if value is None or value not in columns:
                raise ValueError(
                    f"{name}={value!r} is not a column of the training dataset {list(columns)}; set it with "
                    f"DynamicHardNegativeSampler.configure({name}=...)."
                )
        if anchor == positive:
            raise ValueError(f"anchor_column and positive_column are both {anchor!r}.")
        return anchor, positive
