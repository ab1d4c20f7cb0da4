"""The negatives table shared by the sampler (which positions are being fetched), the dataset transform (which
turns a row into ``(..., negative_1, ..., negative_k)``) and the mining callback (which replaces the table).

Why positions: the DataLoader fetches a batch or more ahead of the optimizer step (accelerate prefetches one), so
a table mined at the end of step ``t`` cannot change a batch that was already fetched. Every table therefore
carries ``activate_at``, the first *sampler position* (``epoch * len(sampler) + batch index``) it applies to,
chosen past everything fetched so far. The transform serves a batch from the newest table active at the position
being fetched. Saving the last two tables with their positions makes ``resume_from_checkpoint`` replay exactly the
negatives of an uninterrupted run, prefetched batches included: :func:`save_checkpoint` writes them into each
checkpoint folder and :func:`load_checkpoint` reads them back.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optical_st.fingerprints import hash_texts
from optical_st.sampling.config import HardNegativeConfig
from optical_st.sampling.mining import random_negatives

__all__ = [
    "CHECKPOINT_FILE",
    "HardNegativeState",
    "NegativeTable",
    "NegativesTransform",
    "load_checkpoint",
    "save_checkpoint",
]

STATE_VERSION = 1
CHECKPOINT_FILE = "hard_negatives.pt"


@dataclass
class NegativeTable:
    """Negatives of every unique anchor at one point of training.

    Attributes:
        negatives: ``(num_anchors, k)`` candidate-pool ids (always filled; see ``mined_step``).
        scores: ``(num_anchors, k)`` anchor–negative similarity when mined, NaN for random negatives.
        mined_step: ``(num_anchors,)`` global step of the model that mined the anchor's negatives, ``-1`` when they
            are random (``strategy="random"``, or the anchor has not been mined yet).
        activate_at: first sampler position served from this table (``-1``: from the start, in every process).
        refresh: how many refreshes produced it (``0`` = the initial table).
    """

    negatives: np.ndarray
    scores: np.ndarray
    mined_step: np.ndarray
    activate_at: int
    refresh: int

    @classmethod
    def random(
        cls, state: HardNegativeState, activate_at: int, refresh: int, generator: torch.Generator
    ) -> NegativeTable:
        """Uniformly random negatives for every anchor (never one of its positives), marked as not mined."""
        k = state.config.num_negatives
        negatives = random_negatives(state.positive_matrix, len(state.pool), k, generator)
        return cls(
            negatives.numpy().astype(np.int64),
            np.full((state.num_anchors, k), np.nan, dtype=np.float32),
            np.full(state.num_anchors, -1, dtype=np.int64),
            activate_at,
            refresh,
        )

    def copy(self, activate_at: int, refresh: int) -> NegativeTable:
        return NegativeTable(
            self.negatives.copy(), self.scores.copy(), self.mined_step.copy(), int(activate_at), int(refresh)
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "negatives": torch.from_numpy(self.negatives),
            "scores": torch.from_numpy(self.scores),
            "mined_step": torch.from_numpy(self.mined_step),
            "activate_at": self.activate_at,
            "refresh": self.refresh,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NegativeTable:
        return cls(
            state["negatives"].numpy().astype(np.int64),
            state["scores"].numpy().astype(np.float32),
            state["mined_step"].numpy().astype(np.int64),
            int(state["activate_at"]),
            int(state["refresh"]),
        )


def _fingerprint(*texts: list[str]) -> str:
    digest = hashlib.sha256()
    hash_texts(digest, *texts)
    return digest.hexdigest()


class HardNegativeState:
    """Everything the sampler, the transform and the callback share about one training dataset.

    Built once from the raw (un-transformed) columns: the unique anchors, the candidate pool (unique positives +
    optional extra ``corpus``, de-duplicated as in sentence-transformers' ``mine_hard_negatives``), every anchor's
    positives in that pool (all rows with the same anchor text count), and per row its anchor and positive ids.
    """

    def __init__(
        self,
        config: HardNegativeConfig,
        anchors: list[str],
        positives: list[str],
        anchor_column: str,
        positive_column: str,
    ) -> None:
        if len(anchors) != len(positives):
            raise ValueError("anchors and positives must have the same length.")
        if not anchors:
            raise ValueError("The training dataset is empty.")
        for name, column in ((anchor_column, anchors), (positive_column, positives)):
            bad = next((i for i, text in enumerate(column) if not isinstance(text, str)), None)
            if bad is not None:
                raise ValueError(f"Column {name!r} must hold strings; row {bad} is {type(column[bad]).__name__}.")
        self.config = config
        self.anchor_column = anchor_column
        self.positive_column = positive_column
        self.negative_columns = config.negative_columns

        self.anchor_texts = list(dict.fromkeys(anchors))
        self.anchor_index = {text: i for i, text in enumerate(self.anchor_texts)}
        self.pool = list(dict.fromkeys([*(config.corpus or []), *positives]))
        self.pool_index = {text: i for i, text in enumerate(self.pool)}
        self.row_anchor = np.fromiter((self.anchor_index[a] for a in anchors), dtype=np.int64, count=len(anchors))
        self.row_positive = np.fromiter((self.pool_index[p] for p in positives), dtype=np.int64, count=len(anchors))
        per_anchor: list[list[int]] = [[] for _ in self.anchor_texts]
        for a, p in zip(self.row_anchor.tolist(), self.row_positive.tolist(), strict=True):
            if p not in per_anchor[a]:
                per_anchor[a].append(p)
        self.anchor_positives = per_anchor
        width = max(len(p) for p in per_anchor)
        self.positive_matrix = torch.full((len(per_anchor), width), -1, dtype=torch.long)
        for a, ids in enumerate(per_anchor):
            self.positive_matrix[a, : len(ids)] = torch.tensor(ids)
        if len(self.pool) - width < config.num_negatives:
            raise ValueError(
                f"The candidate pool has {len(self.pool)} distinct texts, too few for {config.num_negatives} "
                "negatives per anchor besides its positives. Lower num_negatives or pass a larger `corpus`."
            )
        self.fingerprint = _fingerprint(anchors, positives, config.corpus or [])

        self.tables: list[NegativeTable] = []
        self.cursor = -1  # last sampler position handed to the DataLoader
        self.orders: dict[int, list[np.ndarray]] = {}  # epoch -> batches of row ids (hard_batches only)
        self.refresh_count = 0

    # ------------------------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return len(self.row_anchor)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_texts)

    def table_at(self, position: int) -> NegativeTable | None:
        """The newest table whose ``activate_at <= position``."""
        for table in reversed(self.tables):
            if table.activate_at <= position:
                return table
        return None

    @property
    def latest(self) -> NegativeTable | None:
        return self.tables[-1] if self.tables else None

    def add_table(self, table: NegativeTable, keep: int = 2) -> None:
        """Append a table; keep the last ``keep`` (enough: a table is superseded one refresh later, and a refresh
        happens at most once per optimizer step, while fetching runs at most one step ahead)."""
        if self.tables and table.activate_at < self.tables[-1].activate_at:
            raise RuntimeError("Tables must be activated in order.")
        self.tables = [*self.tables, table][-keep:]

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        orders = {
            int(epoch): {
                "rows": torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, np.int64)),
                "sizes": torch.tensor([len(b) for b in batches], dtype=torch.long),
            }
            for epoch, batches in self.orders.items()
        }
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "num_negatives": self.config.num_negatives,
            "refresh_count": self.refresh_count,
            "tables": [t.to_state() for t in self.tables],
            "orders": orders,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"Unsupported hard-negative state version {state.get('version')!r}.")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(
                "The checkpoint's hard-negative table was mined for a different training dataset (or corpus); "
                "resume with the same train_dataset and sampler settings."
            )
        if state["num_negatives"] != self.config.num_negatives:
            raise ValueError(
                f"The checkpoint has {state['num_negatives']} negatives per anchor, the sampler is configured for "
                f"{self.config.num_negatives}."
            )
        self.refresh_count = int(state["refresh_count"])
        self.tables = [NegativeTable.from_state(t) for t in state["tables"]]
        self.orders = {}
        for epoch, packed in state["orders"].items():
            rows = packed["rows"].numpy().astype(np.int64)
            bounds = np.cumsum([0, *packed["sizes"].tolist()])
            self.orders[int(epoch)] = [rows[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


class NegativesTransform:
    """``dataset.set_transform`` function: appends ``negative_1..k`` to every row from the active table.

    Rows are matched by their anchor text (negatives are per unique anchor, as in ``mine_hard_negatives``), so no
    index column is needed and the dataset length never changes. A user transform that was already set runs first.
    """

    # how the dataset checks name this transform when they find it on a dataset (optical_st.losses.checks)
    origin = (
        "optical_st's DynamicHardNegativeSampler transform, left by a run that stopped before its end; the sampler "
        "puts it on the trainer's own copy of the dataset when attached with DynamicHardNegativeSampler.attach"
    )

    def __init__(self, state: HardNegativeState, inner: Callable[[dict], dict] | None = None) -> None:
        self.state = state
        self.inner = inner

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.inner is not None:
            batch = self.inner(batch)
        state = self.state
        anchors = batch.get(state.anchor_column)
        table = state.table_at(state.cursor)
        if anchors is None or table is None:  # a single other column was requested, or nothing mined yet
            return batch
        try:
            ids = [state.anchor_index[text] for text in anchors]
        except KeyError as exc:
            raise ValueError(
                f"Anchor {exc.args[0]!r} was not in the training dataset when DynamicHardNegativeSampler indexed it; "
                "do not change the anchor column in a transform, and do not reuse the sampler's dataset elsewhere."
            ) from None
        negatives = table.negatives[ids]
        out = dict(batch)
        pool = state.pool
        for j, column in enumerate(state.negative_columns):
            out[column] = [pool[i] for i in negatives[:, j].tolist()]
        return out


def save_checkpoint(folder: str | os.PathLike, state: HardNegativeState, global_step: int, **extra: Any) -> None:
    """Write ``state`` (tables, refresh counter, epoch orders) and ``extra`` into a trainer checkpoint folder."""
    payload = {"global_step": global_step, **extra, **state.state_dict()}
    torch.save(payload, os.path.join(folder, CHECKPOINT_FILE))


def load_checkpoint(folders: Iterable[str | os.PathLike | None], global_step: int) -> dict[str, Any] | None:
    """The saved state of the first of ``folders`` that holds one for ``global_step``, or ``None``."""
    for folder in filter(None, folders):
        path = os.path.join(folder, CHECKPOINT_FILE)
        if os.path.isfile(path):
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # torch's message names neither the file nor the way out
                raise ValueError(
                    f"{path} is unreadable (truncated or damaged: {type(err).__name__}: {err}). Resume from an "
                    f"earlier checkpoint, or delete {CHECKPOINT_FILE} from this one to re-mine every anchor with the "
                    "resumed model (the negatives then differ from an uninterrupted run)."
                ) from err
            if saved.get("global_step") == global_step:
                return saved
    return None
