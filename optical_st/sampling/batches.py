"""Batch composition: which training rows share a batch.

* :class:`LengthGroupedBatchSampler`: rows of similar length share a batch, so the collator pads far less.
* :func:`compose_hard_batches`: rows whose anchors are hard negatives of each other share a batch (used by
  :class:`~optical_st.DynamicHardNegativeSampler` with ``hard_batches=True``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers.trainer_pt_utils import get_length_grouped_indices

__all__ = ["LengthGroupedBatchSampler", "compose_hard_batches", "length_grouped_batches", "text_lengths"]

# mega-batch size in batches: see LengthGroupedBatchSampler's ``megabatch_factor``
MEGABATCH_FACTOR = 8


def text_lengths(dataset: Any, length_column: str | None = None, label_columns: Sequence[str] = ()) -> list[int]:
    """Each row's length: the characters summed over the text columns (a tokenizer-free proxy for token count), or
    the values of ``length_column`` when given."""
    if hasattr(dataset, "with_format"):  # read the stored columns, not what a set_transform would add
        dataset = dataset.with_format(None)
    if length_column is not None:
        return [int(x) for x in dataset[length_column]]
    text_columns = [
        name
        for name, feature in dataset.features.items()
        if name not in label_columns and getattr(feature, "dtype", None) in ("string", "large_string")
    ]
    if not text_columns:
        raise ValueError("Grouping rows by length found no text column; pass `length_column=`.")
    lengths = [0] * len(dataset)
    for name in text_columns:
        for i, text in enumerate(dataset[name]):
            lengths[i] += len(text)
    return lengths


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    generator: torch.Generator,
    megabatch_factor: int = MEGABATCH_FACTOR,
    drop_last: bool = False,
) -> list[list[int]]:
    """Batches of row ids whose rows have similar ``lengths``, in random batch order (deterministic given
    ``generator``): transformers' ``get_length_grouped_indices`` (shuffle, cut into mega-batches of
    ``megabatch_factor * batch_size`` rows, sort each by length), cut into batches, batch order shuffled."""
    # mega-batches hold whole batches, so consecutive slices of batch_size never straddle two of them
    order = get_length_grouped_indices(list(lengths), batch_size, megabatch_factor, generator)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last:
        batches = [batch for batch in batches if len(batch) == batch_size]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """A sentence-transformers batch sampler that groups rows of similar text length, in random batch order.

    The collator pads every batch to its longest text, so random batches of texts of varied length carry many
    padding tokens, which the encoder processes like real ones. Each epoch this sampler shuffles the rows, cuts them
    into "mega-batches" of ``megabatch_factor * batch_size`` rows, sorts each mega-batch by length, splits it into
    batches and shuffles the order of all batches, which cuts the padded tokens and thus the time of an encoder step
    (measured on the demo's Bible verses in docs/demo_tuning.md). The grouping
    is ``transformers.trainer_pt_utils.get_length_grouped_indices`` (which also moves the longest row into the first
    mega-batch); the batch order is then shuffled.

    Use it with losses whose rows are independent (``OTDistillationLoss``, ``MSELoss``, ...). Losses with in-batch
    negatives (``MultipleNegativesRankingLoss``) also run, but see negatives of similar length only.

    Length is the number of characters summed over the text columns (a tokenizer-free proxy for token count), or
    the values of ``length_column`` when given.

    Args:
        dataset: the training ``datasets.Dataset`` (passed by the trainer).
        batch_size, drop_last, valid_label_columns, generator, seed: as in ``DefaultBatchSampler``.
        megabatch_factor: mega-batch size in batches. Larger = less padding, less randomness in batch composition.
            8 (transformers uses up to 50): on a small dataset 50 makes one mega-batch, so every batch holds texts of
            one length and in-batch negatives are alike; 8 keeps batches mixed for a little more padding (the demo's
            comparison of the two: docs/demo_tuning.md).
        length_column: optional numeric column holding each row's length.

    Example::

        from sentence_transformers import SentenceTransformerTrainingArguments
        from optical_st.sampling import LengthGroupedBatchSampler

        args = SentenceTransformerTrainingArguments(output_dir="out", batch_sampler=LengthGroupedBatchSampler)
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        megabatch_factor: int = MEGABATCH_FACTOR,
        length_column: str | None = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if megabatch_factor < 1:
            raise ValueError(f"megabatch_factor must be >= 1, got {megabatch_factor}.")
        self.megabatch_factor = megabatch_factor
        self.lengths = text_lengths(dataset, length_column, valid_label_columns or [])

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        yield from length_grouped_batches(
            self.lengths, self.batch_size, generator, self.megabatch_factor, drop_last=self.drop_last
        )

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size * self.megabatch_factor)
        # every mega-batch but the last splits into exactly megabatch_factor full batches
        n_full = full * self.megabatch_factor + rest // self.batch_size
        return n_full if self.drop_last else n_full + (rest % self.batch_size > 0)


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
    by_positive, starts = _rows_by_positive(row_positive, anchor_negatives, perm)

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
        add(_seed_row(perm, seed_ptr, placed, row_positive, current_pos, batch_size))
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return _full_batches_shuffled(batches, batch_size, generator)


def _rows_by_positive(
    row_positive: np.ndarray, anchor_negatives: np.ndarray, perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(by_positive, starts)``: the rows grouped by positive id, each group in seed order (``perm``), and where
    each pool id's group starts (``by_positive[starts[p] : starts[p + 1]]`` are the rows whose positive is ``p``)."""
    n = len(row_positive)
    perm_rank = np.empty(n, dtype=np.int64)
    perm_rank[perm] = np.arange(n)
    by_positive = np.lexsort((perm_rank, row_positive))
    sorted_pos = row_positive[by_positive]
    n_pool = int(max(row_positive.max(), anchor_negatives.max() if anchor_negatives.size else 0)) + 1
    return by_positive, np.searchsorted(sorted_pos, np.arange(n_pool + 1))


def _seed_row(
    perm: np.ndarray,
    seed_ptr: int,
    placed: np.ndarray,
    row_positive: np.ndarray,
    current_pos: set[int],
    batch_size: int,
) -> int:
    """The next seed: the first unplaced row in seed order (``perm[seed_ptr]``), or when its positive is already in
    the batch, the first unplaced row a little further on whose positive is not."""
    seed = int(perm[seed_ptr])
    if int(row_positive[seed]) in current_pos:  # look a little further for a row without a clash
        for candidate in perm[seed_ptr + 1 : seed_ptr + 1 + 4 * batch_size].tolist():
            if not placed[candidate] and int(row_positive[candidate]) not in current_pos:
                return candidate
    return seed


def _full_batches_shuffled(batches: list[np.ndarray], batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """The full batches in a random order, then the last, shorter one (if any)."""
    full = [b for b in batches if len(b) == batch_size]
    tail = [b for b in batches if len(b) != batch_size]
    shuffle = torch.randperm(len(full), generator=generator).tolist()
    return [full[i] for i in shuffle] + tail
