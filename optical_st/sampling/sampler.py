"""DynamicHardNegativeSampler: a sentence-transformers batch sampler whose rows carry hard negatives that are
re-mined with the model being trained. The sampler decides the order of the rows; the
:class:`~optical_st.sampling.HardNegativeMiningCallback` it is attached with indexes the dataset, mines, serves and
checkpoints the negatives."""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

from optical_st.sampling.batches import compose_hard_batches, length_grouped_batches, text_lengths
from optical_st.sampling.callback import HardNegativeMiningCallback
from optical_st.sampling.config import HardNegativeConfig
from optical_st.sampling.table import HardNegativeState

__all__ = ["DynamicHardNegativeSampler"]

_SETUP = (
    "Set it up in two lines: `batch_sampler=DynamicHardNegativeSampler.configure(...)` in "
    "SentenceTransformerTrainingArguments, then `DynamicHardNegativeSampler.attach(trainer)` before trainer.train() "
    "(or give `trainer=` when you build the sampler yourself, e.g. in an override of the trainer's get_batch_sampler)."
)


class _ConfiguredSampler:
    """What :meth:`DynamicHardNegativeSampler.configure` returns: a picklable factory with the trainer's
    ``batch_sampler(dataset, batch_size=, drop_last=, valid_label_columns=, generator=, seed=)`` signature, bound to
    a trainer by :meth:`DynamicHardNegativeSampler.attach`."""

    def __init__(self, sampler_cls: type[DynamicHardNegativeSampler], config: HardNegativeConfig) -> None:
        self.sampler_cls = sampler_cls
        self.config = config
        self._trainer: weakref.ref | None = None

    def __call__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> DynamicHardNegativeSampler:
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None:
            raise ValueError(f"DynamicHardNegativeSampler was not attached to the trainer. {_SETUP}")
        return self.sampler_cls(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
            config=self.config,
            trainer=trainer,
        )

    # the trainer saves its arguments (this factory included) into every checkpoint: the trainer stays out
    def __getstate__(self) -> dict[str, Any]:
        return {"sampler_cls": self.sampler_cls, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _trainer=None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.non_default().items())
        return f"{self.sampler_cls.__name__}.configure({args})"


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

        Two lines set it up: pass :meth:`configure`'s factory to ``SentenceTransformerTrainingArguments(batch_sampler=
        ...)``, and once the trainer exists give it to :meth:`attach` (mining needs the trainer's model, loss,
        collator and logger, which sentence-transformers does not pass to a batch sampler). The trainer then
        instantiates the sampler with the training dataset, and

        1. the :class:`~optical_st.sampling.HardNegativeMiningCallback` that :meth:`attach` registered indexes the
           dataset when training begins: unique anchors, the candidate pool (unique positives, plus ``corpus``), each
           anchor's positives (every row with that anchor text counts); it attaches a lazy ``set_transform`` that
           appends the negative columns to each fetched row (the dataset length never changes and the DataLoader is
           never rebuilt);
        2. the callback mines before the first step and then every ``refresh_steps`` optimizer steps: it encodes
           anchors with ``model.encode_query`` (with an OPTICAL model: the current student) and the pool with
           ``model.encode_document`` (the teacher; cached while that route is frozen), and applies the
           false-negative filters of sentence-transformers' ``mine_hard_negatives``;
        3. the sampler yields shuffled batches of row indices (with ``group_by_length``, rows of similar length
           together; with ``hard_batches``, batches of mutually hard anchors).

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
        continues with exactly the negatives of an uninterrupted run (the checkpoint is looked up in
        ``args.resume_from_checkpoint``, then in ``output_dir``).

        Each refresh logs ``hard_negatives/mining_seconds``, ``/anchors_mined``, ``/negative_score`` (mean score of
        the mined negatives), ``/positive_score``, ``/filtered`` (candidates dropped as likely false negatives),
        ``/random_filled`` and ``/changed`` (share of re-mined anchors whose negatives changed).

        Args:
            dataset: the training ``datasets.Dataset`` (given by the trainer).
            batch_size, drop_last, valid_label_columns, generator, seed: given by the trainer.
            config: a :class:`~optical_st.sampling.HardNegativeConfig` (its docstring lists every setting); or pass
                its fields as keyword arguments (``num_negatives=1``, ``refresh_steps=200``, ``strategy="hard"``, the
                filters of :func:`sentence_transformers.util.mine_hard_negatives`, ``hard_batches``,
                ``group_by_length``, ...).
            trainer: the trainer that trains with this sampler, given explicitly when you build the sampler yourself
                (e.g. in an override of the trainer's ``get_batch_sampler``); :meth:`attach` passes it otherwise.

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
                DynamicHardNegativeSampler.attach(trainer)  # mines with trainer.model; logs through trainer.log
                trainer.train()
        """
        if config is None:
            config = HardNegativeConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"Pass either `config` or keyword settings, not both (got {sorted(kwargs)}).")
        if trainer is None:
            raise ValueError(f"DynamicHardNegativeSampler needs the trainer it samples for. {_SETUP}")
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
        # set by the callback on the sampler of the training dataloader; eval/test samplers keep None (plain order)
        self.state: HardNegativeState | None = None
        # measured now, before the callback's dataset transform appends the negative columns
        self.lengths = (
            text_lengths(dataset, label_columns=valid_label_columns or []) if config.group_by_length else None
        )
        self._grouped: tuple[int, list[np.ndarray]] = (-1, [])
        HardNegativeMiningCallback.register(trainer)

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def configure(cls, **kwargs: Any) -> _ConfiguredSampler:
        """The ``batch_sampler`` argument: ``DynamicHardNegativeSampler.configure(refresh_steps=200, ...)``.

        Takes the keyword settings listed in the class docstring, validates them now (before any training starts),
        and returns a picklable factory that the trainer calls like a sampler class once :meth:`attach` has bound
        it to the trainer.
        """
        return _ConfiguredSampler(cls, HardNegativeConfig(**kwargs))

    @classmethod
    def attach(cls, trainer: Any) -> HardNegativeMiningCallback:
        """Bind the sampler configured in ``trainer.args.batch_sampler`` to ``trainer`` and register the callback that
        mines with ``trainer.model`` (one per trainer; calling it again is harmless). Call it before ``train()``.

        Args:
            trainer: a ``SentenceTransformerTrainer`` whose arguments have
                ``batch_sampler=DynamicHardNegativeSampler.configure(...)`` (or the class itself, for the defaults).

        Returns:
            The :class:`~optical_st.sampling.HardNegativeMiningCallback` (its ``history`` holds one dict of statistics
            per refresh).
        """
        factory = trainer.args.batch_sampler
        if isinstance(factory, type) and issubclass(factory, DynamicHardNegativeSampler):
            factory = trainer.args.batch_sampler = factory.configure()  # the class itself: default settings
        if not isinstance(factory, _ConfiguredSampler):
            raise ValueError(f"The trainer's batch_sampler is {factory!r}, not a DynamicHardNegativeSampler. {_SETUP}")
        HardNegativeMiningCallback.check_dataset_kind(trainer.train_dataset)
        from datasets import Dataset

        if isinstance(trainer.train_dataset, Dataset):
            # The negatives transform goes on the trainer's own view of the rows (same Arrow table, no copy of the
            # data), never on the user's Dataset object: a run that stops for any reason leaves nothing on it.
            users = trainer.train_dataset
            trainer.train_dataset = copy.deepcopy(users)
            if trainer.eval_dataset is users:  # evaluated on the training rows: with their negatives, as before
                trainer.eval_dataset = trainer.train_dataset
        factory._trainer = weakref.ref(trainer)
        return HardNegativeMiningCallback.register(trainer)

    def bind(self, state: HardNegativeState) -> None:
        """Make this the training sampler of ``state`` (called by the callback when training begins)."""
        self.state = state

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) + int(epoch))

    def batches_for_epoch(self, epoch: int) -> list[np.ndarray]:
        """The (deterministic) batches of row ids of ``epoch``: a function of (seed, epoch) and, with
        ``hard_batches``, of the table active when the epoch's order was first needed (kept in the state and in
        checkpoints)."""
        if self.lengths is not None:
            if self._grouped[0] != epoch:  # asked for at every fetch and refresh: keep the current epoch's
                batches = length_grouped_batches(
                    self.lengths, self.batch_size, self._generator(epoch), drop_last=self.drop_last
                )
                self._grouped = (epoch, [np.asarray(batch, dtype=np.int64) for batch in batches])
            return self._grouped[1]
        if self.state is None or not self.config.hard_batches:  # not the training sampler: plain shuffle
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

    def first_unfetched_position(self, world: int = 1) -> int:
        """First sampler position that no rank can have fetched yet: the start of the next round of ``world``
        batches after the last one handed out (accelerate gives one batch of each round to every rank)."""
        cursor, length = self.state.cursor, len(self)
        if cursor < 0:
            return 0
        epoch, index = divmod(cursor, length)
        nxt = (index // world + 1) * world
        return epoch * length + nxt if nxt < length else (epoch + 1) * length

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
