"""DynamicHardNegativeSampler: a sentence-transformers batch sampler whose rows carry hard negatives that are
re-mined with the model being trained."""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

from optical_st.sampling.config import HardNegativeConfig
from optical_st.sampling.table import HardNegativeState, NegativesTransform

__all__ = ["DynamicHardNegativeSampler", "compose_hard_batches"]

logger = logging.getLogger(__name__)

_LABEL_COLUMNS = ("label", "labels", "score", "scores", "dataset_name")


class _ConfiguredSampler:
    """What :meth:`DynamicHardNegativeSampler.configure` returns: a picklable factory with the trainer's
    ``batch_sampler(dataset, batch_size=, drop_last=, valid_label_columns=, generator=, seed=)`` signature."""

    def __init__(self, sampler_cls: type[DynamicHardNegativeSampler], config: HardNegativeConfig) -> None:
        self.sampler_cls = sampler_cls
        self.config = config

    def __call__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> DynamicHardNegativeSampler:
        return self.sampler_cls(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
            config=self.config,
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.non_default().items())
        return f"{self.sampler_cls.__name__}.configure({args})"


def _find_trainer() -> tuple[Any | None, str | None]:
    """The transformers ``Trainer`` whose ``get_batch_sampler`` is instantiating us (found on the call stack), and
    the kind of dataloader it is building (``"train"``/``"eval"``/``"test"``, when sentence-transformers says so).

    The trainer passes only the dataset to a batch sampler, but mining needs the model, the callbacks and the data
    collator. Looking a few frames up for the ``Trainer`` method that is calling us keeps the user's code to one
    line; it is checked (the frame's ``self`` must be a ``Trainer``) and anything else raises a clear error.
    """
    from transformers import Trainer

    trainer, kind = None, None
    frame = sys._getframe(1)
    for _ in range(16):
        if frame is None or (trainer is not None and kind is not None):
            break
        if kind is None and isinstance(frame.f_locals.get("dataset_kind"), str):
            kind = frame.f_locals["dataset_kind"]  # ST's _build_dataloader, just above get_batch_sampler
        candidate = frame.f_locals.get("self")
        if trainer is None and isinstance(candidate, Trainer):
            trainer = candidate
        frame = frame.f_back
    return trainer, kind


def compose_hard_batches(
    row_anchor: np.ndarray,
    row_positive: np.ndarray,
    anchor_negatives: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
) -> list[np.ndarray]:
    """Group rows so that anchors that are hard negatives of each other share a batch.

    Row ``y`` is a neighbour of row ``x`` when ``y``'s positive is one of ``x``'s mined negatives: with both in one
    batch, ``y``'s positive is a hard in-batch negative for ``x``. Batches grow breadth-first from a random seed row
    through these neighbours (hardest first), then from the next seed, and never hold two rows with the same
    positive text while another choice exists (that would be a false in-batch negative). Every row is used once;
    all batches but the last are full; the full batches are shuffled. Deterministic given ``generator``.

    Args:
        row_anchor: ``(N,)`` anchor id of each row.
        row_positive: ``(N,)`` candidate-pool id of each row's positive.
        anchor_negatives: ``(num_anchors, k)`` pool ids of each anchor's negatives, hardest first.
        batch_size: rows per batch.
        generator: seeded CPU generator (seed + epoch).

    Returns:
        A list of ``ceil(N / batch_size)`` arrays of row ids.
    """
    n = len(row_anchor)
    perm = torch.randperm(n, generator=generator).numpy()
    perm_rank = np.empty(n, dtype=np.int64)
    perm_rank[perm] = np.arange(n)
    # rows grouped by positive id, each group in seed order
    by_positive = np.lexsort((perm_rank, row_positive))
    sorted_pos = row_positive[by_positive]
    n_pool = int(max(row_positive.max(), anchor_negatives.max() if anchor_negatives.size else 0)) + 1
    starts = np.searchsorted(sorted_pos, np.arange(n_pool + 1))

    placed = np.zeros(n, dtype=bool)
    n_placed = 0
    batches: list[np.ndarray] = []
    current: list[int] = []
    current_pos: set[int] = set()
    frontier: deque[int] = deque()
    seed_ptr = 0

    def add(row: int) -> bool:
        """Place ``row`` in the current batch; True when that filled the batch."""
        nonlocal n_placed
        placed[row] = True
        n_placed += 1
        current.append(row)
        current_pos.add(int(row_positive[row]))
        frontier.append(row)
        if len(current) < batch_size:
            return False
        batches.append(np.asarray(current, dtype=np.int64))
        current.clear()
        current_pos.clear()
        frontier.clear()
        return True

    while n_placed < n:
        if frontier:
            x = frontier.popleft()
            for pool_id in anchor_negatives[row_anchor[x]].tolist():
                if pool_id in current_pos:
                    continue
                group = by_positive[starts[pool_id] : starts[pool_id + 1]]
                free = group[~placed[group]]
                if len(free) and add(int(free[0])):
                    break
            continue
        while placed[perm[seed_ptr]]:
            seed_ptr += 1
        seed = int(perm[seed_ptr])
        if int(row_positive[seed]) in current_pos:  # look a little further for a row without a clash
            for candidate in perm[seed_ptr + 1 : seed_ptr + 1 + 4 * batch_size].tolist():
                if not placed[candidate] and int(row_positive[candidate]) not in current_pos:
                    seed = candidate
                    break
        add(seed)
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    full = [b for b in batches if len(b) == batch_size]
    tail = [b for b in batches if len(b) != batch_size]
    shuffle = torch.randperm(len(full), generator=generator).tolist()
    return [full[i] for i in shuffle] + tail


class DynamicHardNegativeSampler(DefaultBatchSampler):
    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        config: HardNegativeConfig | None = None,
        trainer: Any | None = None,
        **kwargs: Any,
    ) -> None:
        """
        A batch sampler that gives every training row ``num_negatives`` hard negatives, re-mined with the model
        *while it trains*, as extra columns ``negative_1 .. negative_k`` that the loss receives.

        Pass it to ``SentenceTransformerTrainingArguments(batch_sampler=...)``, configured in one line with
        :meth:`configure`. The trainer instantiates it with the training dataset; the sampler then

        1. indexes the dataset: unique anchors, the candidate pool (unique positives, plus ``corpus``), each
           anchor's positives (every row with that anchor text counts), and attaches a lazy ``set_transform`` that
           appends the negative columns to each fetched row (the dataset length never changes and the DataLoader is
           never rebuilt);
        2. registers a :class:`~optical_st.sampling.HardNegativeMiningCallback` on the trainer, which mines before
           the first step and then every ``refresh_steps`` optimizer steps: it encodes anchors with
           ``model.encode_query`` (with an OPTICAL model: the current student) and the pool with
           ``model.encode_document`` (the teacher; cached while that route is frozen), and applies the
           false-negative filters of sentence-transformers' ``mine_hard_negatives``;
        3. yields shuffled batches of row indices (or, with ``hard_batches``, batches of mutually hard anchors).

        A refresh mines exactly the anchors that the next ``refresh_steps`` steps will read (their order is known),
        so every row's negatives come from a model at most ``refresh_steps`` steps old, and one refresh costs about
        one forward pass per row it serves, whatever ``refresh_steps`` is. Rows whose negatives have not been mined
        yet get random ones (logged as ``random_filled``).

        The three settings of a "no / static / dynamic negatives" comparison share this class:

        - dynamic: ``refresh_steps=200`` (default);
        - static: ``refresh_steps=None``: every anchor is mined once, with the initial model, before training
          (what ``mine_hard_negatives`` would give, without changing the dataset);
        - random: ``strategy="random"``: uniformly random negatives (never a positive), re-drawn every
          ``refresh_steps`` (or drawn once with ``refresh_steps=None``); no encoding at all.

        Under DDP every rank encodes a shard of the texts, rank 0 searches, and the table is broadcast, so all ranks
        read the same negatives; accelerate then gives each rank every world-size-th batch as usual. The table and
        the refresh counter are saved in each checkpoint (``hard_negatives.pt``), so ``resume_from_checkpoint``
        continues with exactly the negatives of an uninterrupted run.

        Each refresh logs ``hard_negatives/mining_seconds``, ``/anchors_mined``, ``/negative_score`` (mean score of
        the mined negatives), ``/positive_score``, ``/filtered`` (candidates dropped as likely false negatives),
        ``/random_filled`` and ``/changed`` (share of re-mined anchors whose negatives changed).

        Args:
            dataset: the training ``datasets.Dataset`` (given by the trainer).
            batch_size, drop_last, valid_label_columns, generator, seed: given by the trainer.
            config: a :class:`~optical_st.sampling.HardNegativeConfig`; or pass its fields as keyword arguments:

                - ``num_negatives`` (1): negative columns per row.
                - ``refresh_steps`` (200): optimizer steps between refreshes; ``None`` = static.
                - ``strategy`` (``"hard"``): ``"hard"`` mines with the model, ``"random"`` draws uniformly.
                - ``range_min`` / ``range_max``, ``absolute_margin``, ``relative_margin``, ``max_score``,
                  ``min_score``, ``sampling_strategy`` (``"top"``/``"random"``): exactly as in
                  :func:`sentence_transformers.util.mine_hard_negatives`.
                - ``hard_batches`` (False): also compose batches from mutually hard anchors, so in-batch negatives
                  are hard too (needs every anchor mined before training, so the first mining covers all anchors).
                - ``anchor_column`` / ``positive_column``: default: the columns that ``router_mapping`` routes to
                  ``"query"`` / ``"document"``, else those the loss declares in ``retrieval_columns`` (OPTICAL
                  losses: the LRL column is the anchor, the English one the positive), else the first / second.
                - ``corpus``: extra candidate texts besides the positives.
                - ``negative_column_prefix`` (``"negative"``): the columns are ``{prefix}_1 .. {prefix}_k``.
                - ``mining_batch_size`` (64), ``use_faiss`` (None = when installed), ``cache_documents`` (None =
                  cache pool embeddings when ``encode_document`` has no trainable parameter),
                  ``show_progress_bar`` (False).
            trainer: the trainer, when it cannot be found on the call stack (custom training loops).

        References:
            - Xiong et al. Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval
              (ANCE). ICLR 2021. https://arxiv.org/abs/2007.00808 (periodically refreshed negatives).
            - Moreira et al. NV-Retriever: Improving text embedding models with effective hard-negative mining.
              2024. https://arxiv.org/abs/2407.15831 (margin filters against false negatives).

        Requirements:
            1. A single ``datasets.Dataset`` of (anchor, positive) text pairs (an OPTICAL dataset
               ``(english, lrl)`` works as is: the English side is the positive, the LRL side the anchor).
            2. ``dataloader_num_workers=0`` when refreshing (workers would keep a stale copy of the table).
            3. A loss that accepts extra negative columns: ST's ``MultipleNegativesRankingLoss`` (and its
               relatives), or :class:`~optical_st.OTDistillationLoss` with ``contrastive_weight > 0``.

        Relations:
            - :func:`sentence_transformers.util.mine_hard_negatives` mines once, offline, and returns a new dataset;
              this sampler applies the same filters online, keeps the dataset, and refreshes.
            - ``BatchSamplers.NO_DUPLICATES`` avoids duplicate texts in a batch; ``hard_batches`` additionally makes
              in-batch negatives hard.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
                from optical_st import DynamicHardNegativeSampler, OTDistillationLoss, build_optical_model, router_mapping

                model = build_optical_model("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "english": ["In the beginning God created the heavens and the earth.", "God is love.",
                                "The light was good.", "Day and night."],
                    "chichewa": ["Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.", "Mulungu ndi chikondi.",
                                 "Kuwala kunali kwabwino.", "Usana ndi usiku."],
                })
                args = SentenceTransformerTrainingArguments(
                    output_dir="out",
                    per_device_train_batch_size=2,
                    router_mapping=router_mapping(train_dataset),
                    batch_sampler=DynamicHardNegativeSampler.configure(num_negatives=1, refresh_steps=2),
                )
                loss = OTDistillationLoss(model, contrastive_weight=0.1)  # the negatives feed its InfoNCE term
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        if config is None:
            config = HardNegativeConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"Pass either `config` or keyword settings, not both (got {sorted(kwargs)}).")
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        self.dataset = dataset
        self.config = config
        self.state: HardNegativeState | None = None
        self.callback = None
        found, kind = _find_trainer()
        self.trainer = trainer if trainer is not None else found
        if self.trainer is None:
            raise ValueError(
                "DynamicHardNegativeSampler is instantiated by the sentence-transformers trainer: pass "
                "`batch_sampler=DynamicHardNegativeSampler.configure(...)` to SentenceTransformerTrainingArguments "
                "(or give `trainer=` in a custom training loop)."
            )
        # the trainer also builds eval/test dataloaders with `batch_sampler`: those get a plain shuffled order
        self.passive = dataset is not self.trainer.train_dataset or kind not in (None, "train")
        if not self.passive:
            self._setup_training()

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def configure(cls, **kwargs: Any) -> _ConfiguredSampler:
        """The one-line form: ``batch_sampler=DynamicHardNegativeSampler.configure(refresh_steps=200, ...)``.

        Takes the keyword settings listed in the class docstring, validates them now (before any training starts),
        and returns a picklable factory that the trainer calls like a sampler class.
        """
        return _ConfiguredSampler(cls, HardNegativeConfig(**kwargs))

    def _setup_training(self) -> None:
        from datasets import Dataset, DatasetDict

        from optical_st.sampling.callback import HardNegativeMiningCallback

        trainer, config, dataset = self.trainer, self.config, self.dataset
        if isinstance(trainer.train_dataset, DatasetDict) or not isinstance(dataset, Dataset):
            raise ValueError(
                "DynamicHardNegativeSampler needs a single datasets.Dataset as train_dataset (not a DatasetDict "
                "or an IterableDataset); concatenate the splits first."
            )
        if config.refresh_steps is not None and trainer.args.dataloader_num_workers > 0:
            raise ValueError(
                "DynamicHardNegativeSampler refreshes its negatives in the main process, which DataLoader workers "
                "would never see: set dataloader_num_workers=0 (or refresh_steps=None for static negatives)."
            )
        for callback in list(trainer.callback_handler.callbacks):
            if isinstance(callback, HardNegativeMiningCallback):  # from an earlier train() call
                callback.detach()  # also puts the dataset's own format back
                trainer.callback_handler.remove_callback(callback)
        fmt = dataset.format
        if fmt["type"] not in (None, "python", "custom"):
            raise ValueError(
                f"The training dataset is formatted as {fmt['type']!r}; DynamicHardNegativeSampler needs Python "
                "rows. Call `train_dataset.reset_format()` first."
            )
        anchor_column, positive_column = self._resolve_columns(dataset.column_names)
        clash = [c for c in config.negative_columns if c in dataset.column_names]
        if clash:
            raise ValueError(
                f"The training dataset already has column(s) {clash}, which the sampler would add. Remove them "
                "or set negative_column_prefix=..."
            )
        plain = dataset.with_format(None)
        self.state = HardNegativeState(
            config, list(plain[anchor_column]), list(plain[positive_column]), anchor_column, positive_column
        )
        inner = fmt["format_kwargs"].get("transform") if fmt["type"] == "custom" else None
        while isinstance(inner, NegativesTransform):  # left over by a run that crashed before on_train_end
            inner = inner.inner
            fmt = {**fmt, "type": "custom" if inner else None, "format_kwargs": {"transform": inner} if inner else {}}
        self._original_format = fmt
        dataset.set_transform(
            NegativesTransform(self.state, inner), columns=fmt["columns"], output_all_columns=fmt["output_all_columns"]
        )
        self._extend_collator(positive_column)
        self.callback = HardNegativeMiningCallback(self, trainer)
        trainer.add_callback(self.callback)
        logger.info(
            "DynamicHardNegativeSampler: %d rows, %d unique anchors (%r), pool of %d candidates (%r + corpus), "
            "columns %s",
            self.state.num_rows,
            self.state.num_anchors,
            anchor_column,
            len(self.state.pool),
            positive_column,
            config.negative_columns,
        )

    def _resolve_columns(self, columns: list[str]) -> tuple[str, str]:
        config = self.config
        text_columns = [c for c in columns if c not in _LABEL_COLUMNS and c not in (self.valid_label_columns or [])]
        mapping = getattr(self.trainer.data_collator, "router_mapping", None) or {}
        flat = mapping if mapping and not isinstance(next(iter(mapping.values())), dict) else {}
        by_task = {task: [c for c in text_columns if flat.get(c) == task] for task in ("query", "document")}
        # a loss may declare which of its text columns are the query and the document, e.g. OTDistillationLoss
        # reads (english, lrl, *negatives): the LRL side is the anchor, the English side the positive
        declared = getattr(self.trainer.loss, "retrieval_columns", None)
        if declared is not None and not by_task["query"] and len(text_columns) > max(declared):
            by_task = {"query": [text_columns[declared[0]]], "document": [text_columns[declared[1]]]}
        anchor = config.anchor_column or (
            by_task["query"][0] if by_task["query"] else (text_columns[0] if text_columns else None)
        )
        positive = config.positive_column
        if positive is None:
            rest = [c for c in (by_task["document"] or text_columns) if c != anchor]
            positive = rest[0] if rest else None
        for name, value in (("anchor_column", anchor), ("positive_column", positive)):
            if value is None or value not in columns:
                raise ValueError(
                    f"{name}={value!r} is not a column of the training dataset {columns}; set it with "
                    f"DynamicHardNegativeSampler.configure({name}=...)."
                )
        if anchor == positive:
            raise ValueError(f"anchor_column and positive_column are both {anchor!r}.")
        return anchor, positive

    def _extend_collator(self, positive_column: str) -> None:
        """Negatives are read like positives: same route of a Router model, same prompt."""
        collator = self.trainer.data_collator
        mapping = getattr(collator, "router_mapping", None)
        if mapping and not isinstance(next(iter(mapping.values())), dict) and positive_column in mapping:
            extra = {c: mapping[positive_column] for c in self.config.negative_columns if c not in mapping}
            collator.router_mapping = {**mapping, **extra}
        prompts = getattr(collator, "prompts", None)
        if isinstance(prompts, dict) and prompts and isinstance(prompts.get(positive_column), str):
            extra = {c: prompts[positive_column] for c in self.config.negative_columns if c not in prompts}
            collator.prompts = {**prompts, **extra}

    def restore_dataset_format(self) -> None:
        """Remove the negatives transform from the training dataset (called when training ends)."""
        if self.passive or self.state is None:
            return
        fmt = self._original_format
        if fmt["type"] == "custom":
            self.dataset.set_transform(
                fmt["format_kwargs"]["transform"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"]
            )
        else:
            self.dataset.set_format(
                type=fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"]
            )

    # ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) + int(epoch))

    def batches_for_epoch(self, epoch: int) -> list[np.ndarray]:
        """The (deterministic) batches of row ids of ``epoch``: a function of (seed, epoch) and, with
        ``hard_batches``, of the table active when the epoch's order was first needed (kept in the state and in
        checkpoints)."""
        if self.passive or not self.config.hard_batches:
            perm = torch.randperm(len(self.dataset), generator=self._generator(epoch)).numpy()
            return [perm[i : i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
        state = self.state
        if epoch not in state.orders:
            table = state.table_at(epoch * len(self))
            if table is None:
                raise RuntimeError("hard_batches needs the negatives table before the epoch starts.")
            state.orders[epoch] = compose_hard_batches(
                state.row_anchor, state.row_positive, table.negatives, self.batch_size, self._generator(epoch)
            )
            for old in [e for e in state.orders if e < epoch - 1]:
                del state.orders[old]
        return state.orders[epoch]

    def rows_at_positions(self, start: int, stop: int) -> np.ndarray:
        """Unique row ids of the batches at sampler positions ``[start, stop)`` (possibly spanning epochs)."""
        length = len(self)
        start = max(start, 0)
        if stop - start >= length:
            return np.arange(len(self.dataset))
        rows = []
        for epoch in range(start // length, (stop - 1) // length + 1):
            batches = self.batches_for_epoch(epoch)
            lo, hi = max(start - epoch * length, 0), min(stop - epoch * length, length)
            rows.extend(batches[lo:hi])
        return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        length = len(self)
        batches = self.batches_for_epoch(epoch)
        for i, batch in enumerate(batches[:length]):
            if self.state is not None:
                # read by the dataset transform when the DataLoader fetches this batch, right after we yield it
                self.state.cursor = epoch * length + i
            yield batch.tolist()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.non_default().items())
        return f"{type(self).__name__}({args})"
