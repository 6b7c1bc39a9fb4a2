"""``PromptSampler``: per-episode permutations, fixed-size batches across episodes, resumable state."""

from __future__ import annotations

import json

import pytest

from srpo_mcore.data.prompt_sampler import PromptSampler


def draw(sampler: PromptSampler, count: int, batches: int) -> list[list[int]]:
    return [sampler.next(count) for _ in range(batches)]


def test_each_episode_is_a_permutation_and_batches_cross_episodes() -> None:
    rows = 7
    batches = draw(PromptSampler(rows, seed=3), 3, 7)  # 21 indices = exactly 3 episodes
    assert [len(b) for b in batches] == [3] * 7
    stream = [i for b in batches for i in b]
    episodes = [stream[k : k + rows] for k in range(0, len(stream), rows)]
    for ep in episodes:
        assert sorted(ep) == list(range(rows))
    # batch 2 (indices 6..8) straddles episodes 0 and 1
    assert batches[2] == [episodes[0][6], episodes[1][0], episodes[1][1]]
    # episodes are shuffled independently (not the identity, not all the same order)
    assert any(ep != list(range(rows)) for ep in episodes)
    assert len({tuple(ep) for ep in episodes}) > 1


def test_batch_larger_than_the_prompt_set_spans_several_episodes() -> None:
    sampler = PromptSampler(3, seed=0)
    out = sampler.next(8)
    assert len(out) == 8
    assert sorted(out[0:3]) == sorted(out[3:6]) == [0, 1, 2]
    assert sampler.state() == {"episode": 2, "cursor": 2, "num_rows": 3}
    assert set(out[6:8]) < {0, 1, 2} and len(set(out[6:8])) == 2


def test_same_seed_same_order_different_seed_different_order() -> None:
    a = draw(PromptSampler(50, seed=11), 16, 8)
    b = draw(PromptSampler(50, seed=11), 16, 8)
    c = draw(PromptSampler(50, seed=12), 16, 8)
    assert a == b
    assert a != c
    assert a[0] != c[0]  # already the first batch differs


def test_batch_size_does_not_change_the_stream() -> None:
    small = [i for b in draw(PromptSampler(10, seed=5), 2, 15) for i in b]
    large = [i for b in draw(PromptSampler(10, seed=5), 6, 5) for i in b]
    assert small == large


def test_no_shuffle_keeps_file_order() -> None:
    sampler = PromptSampler(5, seed=123, shuffle=False)
    assert draw(sampler, 4, 3) == [[0, 1, 2, 3], [4, 0, 1, 2], [3, 4, 0, 1]]


@pytest.mark.parametrize(("count", "before"), [(3, 2), (7, 1), (5, 4), (4, 5)])
def test_state_load_round_trip_continues_exactly(count: int, before: int) -> None:
    rows, seed = 10, 42
    original = PromptSampler(rows, seed=seed)
    draw(original, count, before)
    state = json.loads(json.dumps(original.state()))  # as a checkpoint stores it
    resumed = PromptSampler(rows, seed=seed)
    resumed.load(state)
    reference = PromptSampler(rows, seed=seed)  # a fresh sampler that drew the same batches
    draw(reference, count, before)
    after_resume = draw(resumed, count, 6)
    assert after_resume == draw(reference, count, 6)
    assert after_resume == draw(original, count, 6)
    assert resumed.state() == reference.state()


def test_state_fields() -> None:
    sampler = PromptSampler(4, seed=1)
    assert sampler.state() == {"episode": 0, "cursor": 0, "num_rows": 4}
    sampler.next(3)
    assert sampler.state() == {"episode": 0, "cursor": 3, "num_rows": 4}
    sampler.next(1)
    assert sampler.state() == {"episode": 1, "cursor": 0, "num_rows": 4}


def test_load_with_a_different_prompt_count_raises() -> None:
    state = PromptSampler(10, seed=0).state()
    sampler = PromptSampler(12, seed=0)
    with pytest.raises(ValueError, match=r"10 prompt rows.*now has 12"):
        sampler.load(state)
    assert sampler.state() == {"episode": 0, "cursor": 0, "num_rows": 12}  # left untouched


@pytest.mark.parametrize("rows", [0, -1])
def test_empty_prompt_set_raises(rows: int) -> None:
    with pytest.raises(ValueError, match="empty"):
        PromptSampler(rows, seed=0)
