"""Training sequences and micro-batches (``rl.batch``) against hand-computed values.

Covers ``shard_for_dp`` (coverage, longest-first round-robin, determinism), ``plan_micro_batches``
(hand-worked plans, the budget, oversized sequences), ``collate`` (every tensor of a two-sequence
micro-batch written out by hand, mRoPE prompt positions, padding, vision inputs, errors) and
``MicroBatch.to``.
"""

from __future__ import annotations

import random

import pytest
import torch

from srpo_mcore.rl.batch import MicroBatch, TrainSequence, VisionInputs, collate, plan_micro_batches, shard_for_dp


def seq(
    n_prompt: int,
    n_response: int,
    *,
    start: int = 1,
    advantage: float = 0.0,
    vision: VisionInputs | None = None,
    prompt_positions: torch.Tensor | None = None,
) -> TrainSequence:
    """A sequence with consecutive token ids from `start` and logprobs -0.1, -0.2, ..."""
    prompt = tuple(range(start, start + n_prompt))
    response = tuple(range(start + n_prompt, start + n_prompt + n_response))
    logprobs = tuple(-0.1 * (k + 1) for k in range(n_response))
    return TrainSequence(prompt, response, advantage, logprobs, vision=vision, prompt_positions=prompt_positions)


def by_length(lengths: list[int]) -> list[TrainSequence]:
    """Sequences of the given total lengths (one prompt token, the rest response)."""
    return [seq(1, n - 1) for n in lengths]


# --------------------------------------------------------------------------- shard_for_dp


def test_shard_for_dp_longest_first_round_robin_by_hand() -> None:
    seqs = by_length([3, 7, 5, 7, 1])
    # longest first, ties by index: 1(7) 3(7) 2(5) 0(3) 4(1), dealt round-robin
    assert shard_for_dp(seqs, 0, 2) == [1, 2, 4]
    assert shard_for_dp(seqs, 1, 2) == [3, 0]
    assert [shard_for_dp(seqs, r, 3) for r in range(3)] == [[1, 0], [3, 4], [2]]
    assert shard_for_dp(seqs, 0, 1) == [1, 3, 2, 0, 4]


@pytest.mark.parametrize("dp_size", [1, 2, 3, 4, 7, 16])
def test_shard_for_dp_covers_every_index_once_and_balances(dp_size: int) -> None:
    rng = random.Random(dp_size)
    lengths = [rng.randint(2, 200) for _ in range(37)]
    seqs = by_length(lengths)
    shards = [shard_for_dp(seqs, r, dp_size) for r in range(dp_size)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(len(seqs)))
    counts = [len(s) for s in shards]
    assert max(counts) - min(counts) <= 1
    # round-robin over the length-sorted order: a lower rank's k-th sequence is never shorter than a
    # higher rank's k-th one, so token totals differ by at most one longest sequence
    for k in range(min(counts)):
        assert all(lengths[shards[r][k]] >= lengths[shards[r + 1][k]] for r in range(dp_size - 1))
    totals = [sum(lengths[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= max(lengths)
    # every call (every rank of a replica, every pipeline stage) builds the same shards
    assert [shard_for_dp(seqs, r, dp_size) for r in range(dp_size)] == shards


def test_shard_for_dp_more_ranks_than_sequences() -> None:
    seqs = by_length([4, 9])
    assert [shard_for_dp(seqs, r, 4) for r in range(4)] == [[1], [0], [], []]


# --------------------------------------------------------------------------- plan_micro_batches


@pytest.mark.parametrize(
    ("lengths", "budget", "multiple", "expected"),
    [
        # order 2(8) 0(5) 1(3) 3(2) 4(2): 2x8>10 | 2x5=10 fits, 3x5>10 | 2x2=4
        ([5, 3, 8, 2, 2], 10, 1, [[2], [0, 1], [3, 4]]),
        # rounded to 4: 5->8 (2x8>10), 3->4 (2x4=8 fits, 3x4>10)
        ([5, 3, 8, 2, 2], 10, 4, [[2], [0], [1, 3], [4]]),
        # 20 and 15 exceed the budget alone: one micro-batch each
        ([20, 4, 15, 3], 12, 1, [[0], [2], [1, 3]]),
        # equal lengths, ties by index: 4 per micro-batch
        ([3] * 9, 12, 1, [[0, 1, 2, 3], [4, 5, 6, 7], [8]]),
        # a huge budget: one micro-batch, longest first
        ([1, 2, 3], 10_000, 8, [[2, 1, 0]]),
        ([], 10, 1, []),
    ],
)
def test_plan_micro_batches_by_hand(lengths: list[int], budget: int, multiple: int, expected: list[list[int]]) -> None:
    assert plan_micro_batches(lengths, budget, multiple) == expected


@pytest.mark.parametrize("multiple", [1, 8, 64])
def test_plan_micro_batches_budget_coverage_determinism(multiple: int) -> None:
    rng = random.Random(multiple)
    lengths = [rng.randint(1, 700) for _ in range(101)]
    budget = 1024
    plan = plan_micro_batches(lengths, budget, multiple)
    assert sorted(i for mb in plan for i in mb) == list(range(len(lengths)))
    for mb in plan:
        padded = len(mb) * -(-max(lengths[i] for i in mb) // multiple) * multiple
        assert padded <= budget or len(mb) == 1, (mb, padded)
        if padded > budget:
            assert -(-lengths[mb[0]] // multiple) * multiple > budget  # alone only because it is too long
    # longest first: each micro-batch opens with its longest sequence, and they come longest first
    for mb in plan:
        assert lengths[mb[0]] == max(lengths[i] for i in mb)
    firsts = [lengths[mb[0]] for mb in plan]
    assert firsts == sorted(firsts, reverse=True)
    assert plan_micro_batches(lengths, budget, multiple) == plan
    assert plan_micro_batches(tuple(lengths), budget, multiple) == plan


def test_plan_micro_batches_padded_size_matches_collate() -> None:
    lengths = [7, 5, 3, 6]
    seqs = by_length(lengths)
    for mb in plan_micro_batches(lengths, 16, pad_multiple=4):
        batch = collate(seqs, mb, pad_id=0, pad_multiple=4)
        assert batch.input_ids_BS.numel() <= 16
        assert batch.index_B == mb


# --------------------------------------------------------------------------- collate

PAD = 99


def two_sequences(**a_kwargs: object) -> list[TrainSequence]:
    a = TrainSequence((11, 12, 13), (21, 22), 0.5, (-0.1, -0.2), **a_kwargs)  # type: ignore[arg-type]
    b = TrainSequence((31, 32), (41, 42, 43, 44), -1.0, (-1.0, -2.0, -3.0, -4.0))
    return [a, b]


def test_collate_two_sequences_by_hand() -> None:
    mb = collate(two_sequences(), [0, 1], pad_id=PAD)
    assert mb.input_ids_BS.tolist() == [[11, 12, 13, 21, 22, PAD], [31, 32, 41, 42, 43, 44]]
    assert mb.targets_BS.tolist() == [[12, 13, 21, 22, PAD, PAD], [32, 41, 42, 43, 44, PAD]]
    # loss on positions n_p-1 .. n_p+n_r-2: a (3, 2) -> 2..3; b (2, 4) -> 1..4
    assert mb.loss_mask_BS.tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]]
    assert mb.token_weight_BS.tolist() == mb.loss_mask_BS.tolist()
    assert mb.advantages_BS.tolist() == [[0, 0, 0.5, 0.5, 0, 0], [0, -1, -1, -1, -1, 0]]
    expected_old = torch.tensor([[0, 0, -0.1, -0.2, 0, 0], [0, -1.0, -2.0, -3.0, -4.0, 0]])
    assert torch.equal(mb.rollout_logprobs_BS, expected_old)  # float32 both sides: exact
    assert mb.position_ids_3BS.shape == (3, 2, 6)
    for row in range(3):
        assert mb.position_ids_3BS[row].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    assert mb.placeholder_mask_BS.tolist() == [[True, True, True, False, False, False], [True, True] + [False] * 4]
    assert mb.index_B == [0, 1]
    assert mb.num_response_tokens == 6
    assert mb.pixel_values is None and mb.image_grid_thw is None
    assert mb.input_ids_BS.dtype == mb.targets_BS.dtype == mb.position_ids_3BS.dtype == torch.long
    assert mb.loss_mask_BS.dtype == mb.rollout_logprobs_BS.dtype == torch.float32
    # the masked targets are exactly the response tokens
    for b, s in enumerate(two_sequences()):
        assert tuple(mb.targets_BS[b][mb.loss_mask_BS[b].bool()].tolist()) == s.response_ids


def test_collate_seq_mean_weights_and_index_order() -> None:
    mb = collate(two_sequences(), [1, 0], pad_id=PAD, aggregation="seq_mean")
    assert mb.index_B == [1, 0]
    assert mb.input_ids_BS.tolist() == [[31, 32, 41, 42, 43, 44], [11, 12, 13, 21, 22, PAD]]
    assert mb.token_weight_BS.tolist() == [[0, 0.25, 0.25, 0.25, 0.25, 0], [0, 0, 0.5, 0.5, 0, 0]]
    assert mb.loss_mask_BS.tolist() == [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]]


def test_collate_mrope_prompt_positions_continue_after_the_max() -> None:
    # three different rows; the largest position (7) exceeds the prompt length (3)
    prompt_pos = torch.tensor([[0, 1, 2], [0, 4, 4], [0, 2, 7]])
    mb = collate(two_sequences(prompt_positions=prompt_pos), [0, 1], pad_id=PAD, pad_multiple=4)
    assert mb.position_ids_3BS.shape == (3, 2, 8)
    # response (and padding) continue at max + 1 = 8 on every row
    assert mb.position_ids_3BS[:, 0].tolist() == [
        [0, 1, 2, 8, 9, 10, 11, 12],
        [0, 4, 4, 8, 9, 10, 11, 12],
        [0, 2, 7, 8, 9, 10, 11, 12],
    ]
    assert mb.position_ids_3BS[:, 1].tolist() == [list(range(8))] * 3  # text: 0..P-1, then consecutive
    assert mb.placeholder_mask_BS.tolist() == [[True] * 3 + [False] * 5, [True] * 2 + [False] * 6]


@pytest.mark.parametrize(("multiple", "width"), [(1, 6), (2, 6), (4, 8), (5, 10), (16, 16)])
def test_collate_pad_multiple(multiple: int, width: int) -> None:
    mb = collate(two_sequences(), [0, 1], pad_id=PAD, pad_multiple=multiple)
    assert mb.input_ids_BS.shape == (2, width)
    assert mb.input_ids_BS[0, 5:].tolist() == [PAD] * (width - 5)
    assert mb.input_ids_BS[1, 6:].tolist() == [PAD] * (width - 6)
    assert mb.targets_BS[1, 5:].tolist() == [PAD] * (width - 5)
    assert mb.loss_mask_BS.sum().item() == 6  # padding carries no loss
    assert mb.position_ids_3BS[0, 1].tolist() == list(range(width))


def test_collate_vision_inputs_in_sequence_order() -> None:
    va = VisionInputs(torch.arange(24.0).reshape(4, 6), torch.tensor([[1, 2, 2]]))
    vc = VisionInputs(-torch.arange(48.0).reshape(8, 6), torch.tensor([[1, 2, 4]]))
    seqs = [seq(3, 2, vision=va), seq(2, 2), seq(4, 1, vision=vc)]
    mb = collate(seqs, [2, 1, 0], pad_id=0)
    assert mb.pixel_values is not None and mb.image_grid_thw is not None
    assert torch.equal(mb.pixel_values, torch.cat([vc.pixel_values, va.pixel_values]))
    assert mb.image_grid_thw.tolist() == [[1, 2, 4], [1, 2, 2]]
    mb2 = collate(seqs, [0, 2], pad_id=0)
    assert torch.equal(mb2.pixel_values, torch.cat([va.pixel_values, vc.pixel_values]))  # type: ignore[arg-type]
    assert mb2.image_grid_thw.tolist() == [[1, 2, 2], [1, 2, 4]]  # type: ignore[union-attr]
    mb3 = collate(seqs, [1], pad_id=0)
    assert mb3.pixel_values is None and mb3.image_grid_thw is None


def test_collate_errors() -> None:
    good = seq(2, 2)
    bad = TrainSequence((1, 2), (3, 4, 5), 0.0, (-0.1, -0.2))
    with pytest.raises(ValueError, match=r"sequence 2: 3 response tokens but 2 logprobs"):
        collate([good, good, bad], [0, 2], pad_id=0)
    with pytest.raises(ValueError, match=r"token_mean or seq_mean.*'sum'"):
        collate([good], [0], pad_id=0, aggregation="sum")
    short = seq(3, 1, prompt_positions=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sequence 1: prompt positions \(3, 2\) for 3 prompt tokens"):
        collate([good, short], [0, 1], pad_id=0)
    flat = seq(3, 1, prompt_positions=torch.arange(3))
    with pytest.raises(ValueError, match=r"sequence 0: prompt positions \(3,\) for 3 prompt tokens"):
        collate([flat], [0], pad_id=0)


def test_micro_batch_to_cpu_keeps_values() -> None:
    va = VisionInputs(torch.randn(4, 6), torch.tensor([[1, 2, 2]]))
    seqs = [seq(3, 2, vision=va, advantage=0.25), seq(2, 3, advantage=-2.0)]
    mb = collate(seqs, [0, 1], pad_id=7, pad_multiple=4, aggregation="seq_mean")
    names = [
        "input_ids_BS",
        "targets_BS",
        "loss_mask_BS",
        "token_weight_BS",
        "advantages_BS",
        "rollout_logprobs_BS",
        "position_ids_3BS",
        "placeholder_mask_BS",
        "pixel_values",
        "image_grid_thw",
    ]
    before = {n: getattr(mb, n).clone() for n in names}
    out = mb.to(torch.device("cpu"))
    assert out is mb
    for n in names:
        t = getattr(mb, n)
        assert t.device.type == "cpu"
        assert t.dtype == before[n].dtype and torch.equal(t, before[n]), n
    assert isinstance(out, MicroBatch) and out.index_B == [0, 1]
    assert mb.advantages_BS[0, 2:4].tolist() == [0.25, 0.25]
