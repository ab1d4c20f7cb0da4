"""The few collectives mining needs, no-ops in a single process (torch.distributed, any backend)."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
