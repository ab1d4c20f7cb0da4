"""The callback that wires a :class:`~optical_st.DynamicHardNegativeSampler` into training: it indexes the training
dataset and attaches the negatives transform when training begins, (re-)mines the negatives table with the model
being trained, shares it across ranks, logs each refresh and saves/restores it with checkpoints.

It holds its trainer explicitly (:meth:`HardNegativeMiningCallback.register`, called by
``DynamicHardNegativeSampler.attach(trainer)``) and finds the training sampler in the ``train_dataloader`` argument
that transformers passes to every callback event.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import TrainerCallback

from optical_st.model_card import OpticalModelCardData
from optical_st.modeling import document_route_frozen
from optical_st.phases import MINING, work_phase
from optical_st.routes import column_routes
from optical_st.sampling.config import HardNegativeConfig
from optical_st.sampling.distributed import broadcast_from_main, encode_sharded, rank_and_world
from optical_st.sampling.mining import fill_missing, mine_negatives
from optical_st.sampling.table import (
    CHECKPOINT_FILE,
    HardNegativeState,
    NegativesTransform,
    NegativeTable,
    load_checkpoint,
    save_checkpoint,
)
from optical_st.utils import checkpoint_folder

__all__ = ["HardNegativeMiningCallback"]

logger = logging.getLogger(__name__)


def _training_sampler(dataloader: Any) -> Any | None:
    """The DynamicHardNegativeSampler inside a (possibly accelerate-wrapped) training DataLoader."""
    sampler = getattr(dataloader, "batch_sampler", None)
    for _ in range(4):  # DataLoaderShard -> BatchSamplerShard / SkipBatchSampler -> ours
        if isinstance(getattr(sampler, "config", None), HardNegativeConfig):
            return sampler
        sampler = getattr(sampler, "batch_sampler", None)
    return None


class HardNegativeMiningCallback(TrainerCallback):
    """Wires a :class:`~optical_st.DynamicHardNegativeSampler` into its trainer and mines its negatives.

    Events: ``on_train_begin`` (index the dataset, then mine, or restore from the checkpoint being resumed),
    ``on_epoch_begin`` (sets the sampler's epoch, which accelerate does not forward under DDP), ``on_step_end``
    (refresh every ``refresh_steps``), ``on_save`` (writes ``hard_negatives.pt`` into the checkpoint),
    ``on_train_end`` (removes the dataset transform). ``history`` holds one dict of statistics per refresh of the
    last ``train()`` call.

    Args:
        trainer: the trainer whose model mines, whose loss may declare ``retrieval_columns`` and whose logger gets
            the statistics. Use :meth:`register` (or ``DynamicHardNegativeSampler.attach``) to add it.
    """

    def __init__(self, trainer: Any) -> None:
        self._trainer = weakref.ref(trainer)
        self.sampler: Any | None = None
        self.state: HardNegativeState | None = None
        self.history: list[dict[str, float]] = []
        self._original_format: dict[str, Any] | None = None
        self._document_cache: Tensor | None = None
        self._cache_documents: bool | None = None

    @classmethod
    def register(cls, trainer: Any) -> HardNegativeMiningCallback:
        """The trainer's callback of this class, added if it has none."""
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, cls):
                return callback
        callback = cls(trainer)
        trainer.add_callback(callback)
        return callback

    @staticmethod
    def check_dataset_kind(dataset: Any) -> None:
        """A ``ValueError`` unless ``dataset`` is a single ``datasets.Dataset``: the sampler indexes every row and
        chooses their order, which a stream cannot give (sentence-transformers builds no batch sampler for an
        ``IterableDataset``) and a ``DatasetDict`` splits across samplers."""
        from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

        if isinstance(dataset, (IterableDataset, IterableDatasetDict)):
            raise ValueError(
                "DynamicHardNegativeSampler cannot sample an IterableDataset (a stream): it indexes every row and "
                "chooses their order. Train on a datasets.Dataset (e.g. `Dataset.from_generator(...)`, or "
                "`load_dataset(..., streaming=False)`), or train the stream without the sampler (drop "
                "batch_sampler=... from the training arguments)."
            )
        if isinstance(dataset, DatasetDict) or not isinstance(dataset, Dataset):
            raise ValueError(
                "DynamicHardNegativeSampler needs a single datasets.Dataset as train_dataset (not a DatasetDict "
                f"or a {type(dataset).__name__}); concatenate the splits first."
            )

    @property
    def config(self) -> HardNegativeConfig:
        return self.sampler.config

    # ------------------------------------------------------------------------------------------------
    # wiring
    # ------------------------------------------------------------------------------------------------
    def _wire(self, sampler: Any, args: Any) -> None:
        """Index the training dataset, attach the negatives transform and route the negative columns."""
        from datasets import Dataset

        trainer, config, dataset = self._trainer(), sampler.config, sampler.dataset
        self.check_dataset_kind(trainer.train_dataset)
        if not isinstance(dataset, Dataset):
            self.check_dataset_kind(dataset)
        if config.refresh_steps is not None and args.dataloader_num_workers > 0:
            raise ValueError(
                "DynamicHardNegativeSampler refreshes its negatives in the main process, which DataLoader workers "
                "would never see: set dataloader_num_workers=0 (or refresh_steps=None for static negatives)."
            )
        self._unwire()  # an earlier train() call that did not reach on_train_end
        fmt = dataset.format
        if fmt["type"] not in (None, "python", "custom"):
            raise ValueError(
                f"The training dataset is formatted as {fmt['type']!r}; DynamicHardNegativeSampler needs Python "
                "rows. Call `train_dataset.reset_format()` first."
            )
        collator = trainer.data_collator
        check = getattr(trainer.loss, "check_dataset", None)
        if check is not None:  # bad rows, swapped columns: before mining on them (a no-op if the card already ran it)
            check(dataset, router_mapping=getattr(collator, "router_mapping", None))
        anchor_column, positive_column = config.resolve_columns(
            dataset.column_names,
            sampler.valid_label_columns or [],
            getattr(collator, "router_mapping", None),
            getattr(trainer.loss, "retrieval_columns", None),
        )
        clash = [c for c in config.negative_columns if c in dataset.column_names]
        if clash:
            raise ValueError(
                f"The training dataset already has column(s) {clash}, which the sampler would add. Remove them "
                "or set negative_column_prefix=..."
            )
        plain = dataset.with_format(None)
        state = HardNegativeState(
            config, list(plain[anchor_column]), list(plain[positive_column]), anchor_column, positive_column
        )
        inner = fmt["format_kwargs"].get("transform") if fmt["type"] == "custom" else None
        while isinstance(inner, NegativesTransform):  # left over by a run that crashed before on_train_end
            inner = inner.inner
            fmt = {**fmt, "type": "custom" if inner else None, "format_kwargs": {"transform": inner} if inner else {}}
        dataset.set_transform(
            NegativesTransform(state, inner), columns=fmt["columns"], output_all_columns=fmt["output_all_columns"]
        )
        self._route_negatives(collator, config, positive_column)
        sampler.bind(state)
        self.sampler, self.state, self._original_format = sampler, state, fmt
        self.history, self._document_cache, self._cache_documents = [], None, config.cache_documents
        logger.info(
            "DynamicHardNegativeSampler: %d rows, %d unique anchors (%r), pool of %d candidates (%r + corpus), "
            "columns %s",
            state.num_rows,
            state.num_anchors,
            anchor_column,
            len(state.pool),
            positive_column,
            config.negative_columns,
        )

    @staticmethod
    def _route_negatives(collator: Any, config: HardNegativeConfig, positive_column: str) -> None:
        """Negatives are read like positives: same route of a Router model, same prompt."""
        mapping = getattr(collator, "router_mapping", None) or {}
        if positive_column in column_routes(mapping):  # a flat mapping: a per-dataset one routes no single Dataset
            extra = {c: mapping[positive_column] for c in config.negative_columns if c not in mapping}
            collator.router_mapping = {**mapping, **extra}
        prompts = getattr(collator, "prompts", None)
        if isinstance(prompts, dict) and prompts and isinstance(prompts.get(positive_column), str):
            extra = {c: prompts[positive_column] for c in config.negative_columns if c not in prompts}
            collator.prompts = {**prompts, **extra}

    def _unwire(self) -> None:
        """Put the training dataset's own format back (the negatives transform is removed)."""
        if self.sampler is None or self._original_format is None:
            return
        dataset, fmt = self.sampler.dataset, self._original_format
        if fmt["type"] == "custom":
            transform = fmt["format_kwargs"]["transform"]
            dataset.set_transform(transform, columns=fmt["columns"], output_all_columns=fmt["output_all_columns"])
        else:
            dataset.set_format(type=fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"])
        self._original_format = None

    # ------------------------------------------------------------------------------------------------
    # trainer events
    # ------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs) -> None:
        sampler = _training_sampler(train_dataloader)
        if sampler is None:
            trainer = self._trainer()
            if trainer is not None:  # a stream gets no batch sampler at all: say that, not "set batch_sampler="
                self.check_dataset_kind(trainer.train_dataset)
            raise ValueError(
                "HardNegativeMiningCallback found no DynamicHardNegativeSampler in the training dataloader: set "
                "`batch_sampler=DynamicHardNegativeSampler.configure(...)` in the training arguments."
            )
        self._wire(sampler, args)
        model = model if model is not None else self._trainer().model
        card = getattr(model, "model_card_data", None)
        if isinstance(card, OpticalModelCardData):  # the card says how the negatives were mined
            card.negatives_mode = self.config.mode
        if state.global_step > 0:
            # resumed: the checkpoint trainer.train() loaded is not passed to callbacks; look where scripts keep it
            resume = args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None
            own = str(checkpoint_folder(args.output_dir, state.global_step))
            saved = load_checkpoint([resume, own], state.global_step)
            if saved is not None:
                self.state.load_state_dict(saved)
                self.history = list(saved.get("history", []))
                logger.info(
                    "Hard negatives restored from the checkpoint (refresh %d, step %d).",
                    self.state.refresh_count,
                    state.global_step,
                )
                return
            logger.warning(
                "Resuming at step %d without %s in args.resume_from_checkpoint or output_dir: re-mining every anchor "
                "with the current model, so the negatives will differ from an uninterrupted run. Set "
                "TrainingArguments(resume_from_checkpoint=...) to the checkpoint you resume from.",
                state.global_step,
                CHECKPOINT_FILE,
            )
            self.refresh(model, args, state, initial=True, all_anchors=True)
            return
        self.refresh(model, args, state, initial=True)

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(math.floor((state.epoch or 0) + 1e-6))

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        refresh_steps = self.config.refresh_steps
        if refresh_steps is None:
            return
        if state.global_step % refresh_steps == 0 and state.global_step < state.max_steps:
            self.refresh(model if model is not None else self._trainer().model, args, state, initial=False)

    def on_save(self, args, state, control, **kwargs) -> None:
        if not args.should_save:
            return
        folder = str(checkpoint_folder(args.output_dir, state.global_step))
        if not os.path.isdir(folder):
            logger.warning("Checkpoint folder %s not found; the hard-negative table was not saved with it.", folder)
            return
        save_checkpoint(folder, self.state, state.global_step, history=self.history)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._unwire()

    # ------------------------------------------------------------------------------------------------
    # mining
    # ------------------------------------------------------------------------------------------------
    def _generator(self, refresh: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((int(self.sampler.seed) * 1_000_003 + refresh) * 4 + salt)

    def _anchors_to_mine(
        self, args, trainer_state, world: int, activate_at: int, initial: bool, all_anchors: bool
    ) -> np.ndarray:
        config = self.config
        if all_anchors or config.refresh_steps is None or (initial and config.hard_batches):
            return np.arange(self.state.num_anchors)
        # The batches read until the next refresh activates: each optimizer step consumes at most
        # gradient_accumulation_steps rounds of `world` positions, and the next activation may land up to two rounds
        # later (rounding up to a round, an epoch's unused tail).
        steps = min(config.refresh_steps, max(trainer_state.max_steps - trainer_state.global_step, 1))
        span = steps * args.gradient_accumulation_steps * world + 2 * world
        start = max(activate_at, 0)
        rows = self.sampler.rows_at_positions(start, start + span)
        return np.unique(self.state.row_anchor[rows])

    def refresh(self, model, args, trainer_state, initial: bool, all_anchors: bool = False) -> None:
        """One refresh: mine (or draw) a new table for the anchors the coming batches read, and install it from the
        next sampler position no rank has fetched yet. Runs as the ``mining`` work phase
        (:func:`optical_st.phases.work_phase`), which :class:`optical_st.evaluation.FlopsCallback` can count."""
        with work_phase(MINING):
            self._refresh(model, args, trainer_state, initial, all_anchors)

    def _refresh(self, model, args, trainer_state, initial: bool, all_anchors: bool) -> None:
        config, state = self.config, self.state
        _, world = rank_and_world()
        start = time.perf_counter()
        refresh = 0 if initial else state.refresh_count + 1
        activate_at = -1 if initial else int(broadcast_from_main(self.sampler.first_unfetched_position(world)))
        previous = state.latest
        table = (
            previous.copy(activate_at, refresh)
            if previous is not None and config.strategy == "hard"
            else NegativeTable.random(state, activate_at, refresh, self._generator(refresh, 0))
        )
        stats: dict[str, float] = {"refresh": float(refresh)}
        if config.strategy == "hard":
            anchors = self._anchors_to_mine(args, trainer_state, world, activate_at, initial, all_anchors)
            payload = self._mine(model, args, anchors, refresh)
            ids = payload["anchor_ids"]
            if previous is not None:
                old = previous.negatives[ids]
                was_mined = previous.mined_step[ids] >= 0
                if was_mined.any():
                    same = np.sort(old, 1) == np.sort(payload["negatives"], 1)
                    stats["changed"] = float((~same.all(1))[was_mined].mean())
            table.negatives[ids] = payload["negatives"]
            table.scores[ids] = payload["scores"]
            table.mined_step[ids] = trainer_state.global_step
            stats.update(payload["stats"])
        else:
            stats["anchors_mined"] = 0.0
        state.add_table(table)
        state.refresh_count = refresh
        stats["mining_seconds"] = time.perf_counter() - start
        self.history.append({"step": float(trainer_state.global_step), "activate_at": float(activate_at), **stats})
        self._log(stats)

    def _mine(self, model, args, anchor_ids: np.ndarray, refresh: int) -> dict[str, Any]:
        config, state = self.config, self.state
        rank, _ = rank_and_world()
        was_training = model.training
        try:
            start = time.perf_counter()
            queries = self._encode(model, args, [state.anchor_texts[a] for a in anchor_ids.tolist()], "query")
            timings = {"anchor_seconds": time.perf_counter() - start}
            start = time.perf_counter()
            corpus = self._documents(model, args)
            timings["pool_seconds"] = time.perf_counter() - start
        finally:
            model.train(was_training)  # encode() leaves the model in eval mode
        payload = None
        if rank == 0:  # one search, broadcast: every rank serves the same table
            device = model.device
            mined = mine_negatives(
                queries.to(device),
                corpus.to(device),
                state.positive_matrix[torch.from_numpy(anchor_ids)],
                config,
                generator=self._generator(refresh, 1),
            )
            positives = [state.anchor_positives[a] for a in anchor_ids.tolist()]
            negatives, scores = fill_missing(mined, positives, len(state.pool), self._generator(refresh, 2))
            found = mined.indices >= 0
            payload = {
                "anchor_ids": anchor_ids,
                "negatives": negatives.numpy().astype(np.int64),
                "scores": scores.numpy().astype(np.float32),
                "stats": {
                    "anchors_mined": float(len(anchor_ids)),
                    "negative_score": float(mined.scores[found].mean()) if found.any() else float("nan"),
                    "positive_score": float(mined.positive_scores.mean()) if len(anchor_ids) else float("nan"),
                    "filtered": float(sum(mined.num_filtered.values())),
                    "random_filled": float((~found).sum()),
                },
            }
        payload = broadcast_from_main(payload)
        payload["stats"] = {**payload["stats"], **timings}  # this rank's own encoding times
        return payload

    def _autocast(self, args, model) -> contextlib.AbstractContextManager:
        # mine in the precision the model trains in
        device_type = model.device.type
        if getattr(args, "bf16", False):
            return torch.autocast(device_type, dtype=torch.bfloat16)
        if getattr(args, "fp16", False) and device_type == "cuda":
            return torch.autocast(device_type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _encode(self, model, args, texts: list[str], task: str) -> Tensor:
        """Normalised embeddings of ``texts`` on CPU; under DDP every rank encodes one shard, all get all."""
        encode = model.encode_query if task == "query" else model.encode_document

        def run(shard: list[str]) -> Tensor:
            with self._autocast(args, model):
                return encode(
                    shard,
                    batch_size=self.config.mining_batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=self.config.show_progress_bar,
                )

        return encode_sharded(run, texts)

    def _documents(self, model, args) -> Tensor:
        if self._document_cache is not None:
            return self._document_cache
        if self._cache_documents is None:
            self._cache_documents = document_route_frozen(model)
        embeddings = self._encode(model, args, self.state.pool, "document")
        if self._cache_documents:
            self._document_cache = embeddings
        return embeddings

    def _log(self, stats: dict[str, float]) -> None:
        logs = {f"hard_negatives/{key}": value for key, value in stats.items()}
        trainer = self._trainer()
        if trainer is not None:
            trainer.log(logs)
        logger.info(
            "hard negatives refresh %d: %d anchors in %.2fs, negative score %.4f, %d filtered, %d random-filled",
            int(stats["refresh"]),
            int(stats.get("anchors_mined", 0)),
            stats["mining_seconds"],
            stats.get("negative_score", float("nan")),
            int(stats.get("filtered", 0)),
            int(stats.get("random_filled", 0)),
        )
