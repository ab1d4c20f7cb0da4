"""What mining needs from torch.distributed (any backend), as no-ops in a single process: the rank, shards of the
texts to encode, and the collectives that gather embeddings and share the negatives table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from sentence_transformers.util import get_rank, get_world_size

__all__ = ["all_gather_rows", "broadcast_from_main", "encode_sharded", "rank_and_world", "shard_bounds"]

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a distributed run."""
    return get_rank(), get_world_size()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous slice ``[start, stop)`` of ``n`` items for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_gather_rows(local: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate every rank's ``(n_r, d)`` CPU tensor in rank order (``None`` stands for an empty shard)."""
    _, world = rank_and_world()
    if world == 1:
        return local
    # object collectives: the shards differ in length, which tensor all_gather does not allow
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    parts = [part for part in gathered if part is not None and len(part)]
    return torch.cat(parts) if parts else None


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def encode_sharded(encode: Callable[[list[str]], torch.Tensor], texts: list[str]) -> torch.Tensor:
    """Embeddings of ``texts`` on CPU, in order: every rank encodes one contiguous shard with ``encode`` and all
    ranks receive all rows (one forward pass per text across the run, whatever the world size)."""
    rank, world = rank_and_world()
    lo, hi = shard_bounds(len(texts), rank, world)
    local = encode(texts[lo:hi]).detach().float().cpu() if hi > lo else None
    gathered = all_gather_rows(local)
    if gathered is None or len(gathered) != len(texts):
        raise RuntimeError(f"Encoded {0 if gathered is None else len(gathered)} of {len(texts)} texts.")
    return gathered
