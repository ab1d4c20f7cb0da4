"""The callback that (re-)mines the negatives table during training, shares it across ranks, logs each refresh
and saves/restores it with checkpoints. Registered by :class:`~optical_st.DynamicHardNegativeSampler` itself."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import TrainerCallback

from optical_st.routes import find_router
from optical_st.sampling._distributed import all_gather_rows, broadcast_from_main, rank_and_world, shard_bounds
from optical_st.sampling.mining import mine_negatives, random_negatives
from optical_st.sampling.table import NegativeTable

__all__ = ["CHECKPOINT_FILE", "HardNegativeMiningCallback", "document_route_frozen"]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "hard_negatives.pt"


def document_route_frozen(model: torch.nn.Module) -> bool:
    """True when no trainable parameter can change ``model.encode_document`` (e.g. the frozen teacher route of an
    OPTICAL model), so candidate-pool embeddings can be computed once and cached."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not trainable:
        return True
    router = find_router(model)
    if router is None:
        return False
    # the route "document" texts take: Router.route_mappings ({(task, modality): route}), else the default route
    route = next((r for (task, _), r in router.route_mappings.items() if task == "document"), router.default_route)
    if route not in router.sub_modules:
        return False
    document = {id(p) for p in router.sub_modules[route].parameters()}
    outside = {id(p) for p in model.parameters()} - {id(p) for p in router.parameters()}
    return not (trainable & (document | outside))


def _find_resume_path() -> str | None:
    """The ``resume_from_checkpoint`` that ``Trainer.train`` is running with, when visible on the call stack."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        value = frame.f_locals.get("resume_from_checkpoint")
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        frame = frame.f_back
    return None


class HardNegativeMiningCallback(TrainerCallback):
    """Mines the negatives of a :class:`~optical_st.DynamicHardNegativeSampler` with the model being trained.

    Events: ``on_train_begin`` (initial mining, or restore from the checkpoint being resumed), ``on_epoch_begin``
    (sets the sampler's epoch, which accelerate does not forward under DDP), ``on_step_end`` (refresh every
    ``refresh_steps``), ``on_save`` (writes ``hard_negatives.pt`` into the checkpoint), ``on_train_end`` (removes
    the dataset transform). ``history`` holds one dict of statistics per refresh.
    """

    def __init__(self, sampler: Any, trainer: Any) -> None:
        self.sampler = sampler
        self.state = sampler.state
        self.config = sampler.config
        self._trainer = weakref.ref(trainer)
        self.history: list[dict[str, float]] = []
        self._document_cache: Tensor | None = None
        self._cache_documents: bool | None = self.config.cache_documents
        self._detached = False

    def detach(self) -> None:
        """Stop acting (a later ``train()`` call built a new sampler and callback)."""
        self._detached = True
        self.sampler.restore_dataset_format()

    # ------------------------------------------------------------------------------------------------
    # trainer events
    # ------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        if self._detached:
            return
        model = model if model is not None else self._trainer().model
        if state.global_step > 0:
            saved = self._find_checkpoint_state(args, state)
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
                "Resuming at step %d without %s in the checkpoint: re-mining every anchor with the current model, "
                "so the negatives will differ from an uninterrupted run.",
                state.global_step,
                CHECKPOINT_FILE,
            )
            self._refresh(model, args, state, initial=True, all_anchors=True)
            return
        self._refresh(model, args, state, initial=True)

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        if not self._detached:
            self.sampler.set_epoch(math.floor((state.epoch or 0) + 1e-6))

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        refresh_steps = self.config.refresh_steps
        if self._detached or refresh_steps is None:
            return
        if state.global_step % refresh_steps == 0 and state.global_step < state.max_steps:
            self._refresh(model if model is not None else self._trainer().model, args, state, initial=False)

    def on_save(self, args, state, control, **kwargs) -> None:
        if self._detached or not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning("Checkpoint folder %s not found; the hard-negative table was not saved with it.", folder)
            return
        payload = {"global_step": state.global_step, "history": self.history, **self.state.state_dict()}
        torch.save(payload, os.path.join(folder, CHECKPOINT_FILE))

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if not self._detached:
            self.sampler.restore_dataset_format()

    # ------------------------------------------------------------------------------------------------
    # mining
    # ------------------------------------------------------------------------------------------------
    def _next_round_start(self, world: int) -> int:
        """First sampler position that no rank can have fetched yet: the start of the next round of
        ``world`` batches (accelerate hands out one batch of each round to every rank)."""
        cursor, length = self.state.cursor, len(self.sampler)
        if cursor < 0:
            return 0
        epoch, index = divmod(cursor, length)
        nxt = (index // world + 1) * world
        return epoch * length + nxt if nxt < length else (epoch + 1) * length

    def _generator(self, refresh: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((int(self.sampler.seed) * 1_000_003 + refresh) * 4 + salt)

    def _random_table(self, refresh: int, activate_at: int) -> NegativeTable:
        state, k = self.state, self.config.num_negatives
        negatives = random_negatives(state.positive_matrix, len(state.pool), k, self._generator(refresh, 0))
        return NegativeTable(
            negatives.numpy().astype(np.int64),
            np.full((state.num_anchors, k), np.nan, dtype=np.float32),
            np.full(state.num_anchors, -1, dtype=np.int64),
            activate_at,
            refresh,
        )

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

    def _refresh(self, model, args, trainer_state, initial: bool, all_anchors: bool = False) -> None:
        config, state = self.config, self.state
        _, world = rank_and_world()
        start = time.perf_counter()
        refresh = 0 if initial else state.refresh_count + 1
        activate_at = -1 if initial else int(broadcast_from_main(self._next_round_start(world)))
        previous = state.latest
        table = (
            previous.copy(activate_at, refresh)
            if previous is not None and config.strategy == "hard"
            else self._random_table(refresh, activate_at)
        )
        stats: dict[str, float] = {"refresh": float(refresh)}
        if config.strategy == "hard":
            anchors = self._anchors_to_mine(args, trainer_state, world, activate_at, initial, all_anchors)
            payload = self._mine(model, args, anchors, refresh, trainer_state.global_step)
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

    def _mine(self, model, args, anchor_ids: np.ndarray, refresh: int, step: int) -> dict[str, Any]:
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
        if rank == 0:
            device = model.device
            positives = state.positive_matrix[torch.from_numpy(anchor_ids)]
            mined = mine_negatives(
                queries.to(device),
                corpus.to(device),
                positives,
                config.num_negatives,
                range_min=config.range_min,
                range_max=config.range_max,
                absolute_margin=config.absolute_margin,
                relative_margin=config.relative_margin,
                max_score=config.max_score,
                min_score=config.min_score,
                sampling_strategy=config.sampling_strategy,
                generator=self._generator(refresh, 1),
                use_faiss=config.use_faiss,
            )
            negatives = mined.indices.clone()
            scores = mined.scores.float().clone()
            missing = negatives < 0
            found = ~missing
            rows = missing.any(1).nonzero().flatten()
            if len(rows):  # too few candidates survived: random ones (never a positive or a found negative)
                banned = [
                    [*state.anchor_positives[int(anchor_ids[r])], *negatives[r][found[r]].tolist()]
                    for r in rows.tolist()
                ]
                fill = random_negatives(banned, len(state.pool), config.num_negatives, self._generator(refresh, 2))
                for j, r in enumerate(rows.tolist()):
                    negatives[r, missing[r]] = fill[j, : int(missing[r].sum())]
                scores[missing] = float("nan")
            payload = {
                "anchor_ids": anchor_ids,
                "negatives": negatives.numpy().astype(np.int64),
                "scores": scores.numpy().astype(np.float32),
                "stats": {
                    "anchors_mined": float(len(anchor_ids)),
                    "negative_score": float(mined.scores[found].mean()) if found.any() else float("nan"),
                    "positive_score": float(mined.positive_scores.mean()) if len(anchor_ids) else float("nan"),
                    "filtered": float(sum(mined.num_filtered.values())),
                    "random_filled": float(missing.sum()),
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
        rank, world = rank_and_world()
        lo, hi = shard_bounds(len(texts), rank, world)
        local = None
        if hi > lo:
            encode = model.encode_query if task == "query" else model.encode_document
            with self._autocast(args, model):
                local = encode(
                    texts[lo:hi],
                    batch_size=self.config.mining_batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=self.config.show_progress_bar,
                )
            local = local.detach().float().cpu()
        gathered = all_gather_rows(local)
        if gathered is None or len(gathered) != len(texts):
            raise RuntimeError(f"Encoded {0 if gathered is None else len(gathered)} of {len(texts)} texts.")
        return gathered

    def _documents(self, model, args) -> Tensor:
        if self._document_cache is not None:
            return self._document_cache
        if self._cache_documents is None:
            self._cache_documents = document_route_frozen(model)
        embeddings = self._encode(model, args, self.state.pool, "document")
        if self._cache_documents:
            self._document_cache = embeddings
        return embeddings

    # ------------------------------------------------------------------------------------------------
    def _find_checkpoint_state(self, args, trainer_state) -> dict[str, Any] | None:
        candidates = [
            _find_resume_path(),
            args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None,
            os.path.join(args.output_dir, f"checkpoint-{trainer_state.global_step}"),
        ]
        for folder in filter(None, candidates):
            path = os.path.join(folder, CHECKPOINT_FILE)
            if os.path.isfile(path):
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("global_step") == trainer_state.global_step:
                    return saved
        return None

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
