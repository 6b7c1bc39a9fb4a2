"""Data-parallel rollouts: split a batch of prompts across the engines, gather the samples back.

Owns: ``shard_requests`` (contiguous, balanced chunks; every rank of a model replica gets the same
chunk so the TP/PP peers that share weights also share prompts) and ``gather_samples`` (every
rank receives all samples in the original prompt order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of chunk `rank` when `n` items are split into `world` balanced chunks."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_requests[T](requests: Sequence[T], rank: int, world: int) -> list[T]:
    """This data-parallel rank's prompts."""
    start, end = shard_bounds(len(requests), rank, world)
    return list(requests[start:end])


def gather_samples(local: list[Any], group: Any = None) -> list[Any]:
    """Concatenate every data-parallel rank's per-prompt results in rank order (= prompt order)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return list(local)
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, local, group=group)
    return [item for part in parts for item in part]
