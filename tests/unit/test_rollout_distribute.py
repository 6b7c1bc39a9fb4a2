"""Prompts split into balanced contiguous chunks that cover the batch exactly once."""

from __future__ import annotations

import pytest

from srpo_mcore.rollout.distribute import engine_of, gather_samples, shard_bounds, shard_requests
from srpo_mcore.rollout.engine import engine_count


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


def test_engine_blocks_are_consecutive_ranks() -> None:
    # vLLM's external_launcher numbers data-parallel engines RANK // (world / dp): the same blocks
    assert [engine_of(r, 8, 4) for r in range(8)] == [(0, 2)] * 4 + [(1, 2)] * 4
    assert [engine_of(r, 4, 1)[0] for r in range(4)] == [0, 1, 2, 3]
    assert engine_count(4, 32) == 8 and engine_count(8, 8) == 1
    with pytest.raises(ValueError, match=r"rollout_tp=3 must divide the number of processes \(8\)"):
        engine_count(3, 8)
