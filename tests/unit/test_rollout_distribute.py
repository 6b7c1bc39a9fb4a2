"""Prompts split into balanced contiguous chunks that cover the batch exactly once."""

from __future__ import annotations

from srpo_mcore.rollout.distribute import gather_samples, shard_bounds, shard_requests


def test_balanced_contiguous_cover() -> None:
    for n in range(0, 12):
        for world in range(1, 5):
            chunks = [shard_requests(list(range(n)), r, world) for r in range(world)]
            assert [x for c in chunks for x in c] == list(range(n))
            sizes = [len(c) for c in chunks]
            assert max(sizes) - min(sizes) <= 1
    assert shard_bounds(10, 3, 4) == (8, 10)


def test_gather_without_distributed_is_identity() -> None:
    assert gather_samples([[1], [2]]) == [[1], [2]]
