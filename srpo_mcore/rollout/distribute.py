"""Data-parallel rollouts: split a batch of prompts across the engines, gather the samples back.

Owns: ``shard_requests`` (contiguous, balanced chunks, one per engine), ``engine_count`` (the
one check that ``parallel.rollout_tp`` divides the job), ``engine_of`` (which engine a rank feeds: blocks of ``ranks_per_engine`` consecutive ranks share one engine and submit
the same chunk) and ``gather_samples`` (every rank receives all samples in the original prompt
order, each engine's results counted once).
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


def engine_count(rollout_tp: int, world: int) -> int:
    """How many rollout engines a job of `world` processes holds at `rollout_tp` ranks per engine."""
    if rollout_tp < 1 or world % rollout_tp:
        raise ValueError(
            f"parallel.rollout_tp={rollout_tp} must divide the number of processes ({world}): each block of "
            "rollout_tp consecutive ranks serves one vLLM engine"
        )
    return world // rollout_tp


def engine_of(rank: int, world: int, ranks_per_engine: int = 1) -> tuple[int, int]:
    """(this rank's engine index, number of engines) when consecutive ranks share engines."""
    return rank // ranks_per_engine, engine_count(ranks_per_engine, world)


def gather_samples(local: list[Any], group: Any = None, *, ranks_per_engine: int = 1) -> list[Any]:
    """Concatenate every engine's per-prompt results in engine order (= prompt order).

    Args:
        ranks_per_engine: Consecutive ranks that fed one engine hold the same results; only the
            first rank of each block is kept.
    """
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if world == ranks_per_engine:
        return list(local)
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local, group=group)
    return [item for part in parts[::ranks_per_engine] for item in part]
