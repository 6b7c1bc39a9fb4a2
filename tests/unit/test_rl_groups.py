"""Rollout groups (``rl.groups``): advantages and the accuracy filter by hand, request seeds, and
``rollout_groups`` on one process with a deterministic stand-in engine and the real SRPO scorer.

The stand-in engine only mirrors ``RolloutEngine.generate(requests, seeds=...)``; the real vLLM
path is covered by the e2e tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch.distributed as dist

from srpo_mcore.config import GRPOConfig, RewardConfig
from srpo_mcore.rl.groups import Group, request_seed, rollout_groups, select_groups
from srpo_mcore.rl.rewards import RewardBreakdown, RewardScorer
from srpo_mcore.rollout.types import RolloutRequest, RolloutSample

SQRT7 = math.sqrt(7.0)


def rb(total: float, last: bool, first: bool = False) -> RewardBreakdown:
    return RewardBreakdown(
        total=total,
        format=0.0,
        accuracy=0.0,
        effect=0.0,
        reflection=0.0,
        length=0.0,
        f_len=0.0,
        format_valid=True,
        first_correct=first,
        last_correct=last,
        two_attempts=True,
        transition=None,
        gold_unparseable=False,
        timed_out=False,
    )


def sample(index: int, k: int) -> RolloutSample:
    return RolloutSample(index, f"row{index}", [1, 2], [k + 3], [-0.5], "stop", f"response {k}")


def group(index: int, totals: list[float], last: list[bool], first: list[bool] | None = None) -> Group:
    first = first if first is not None else [False] * len(totals)
    return Group(
        request=RolloutRequest(prompt=f"prompt {index}", key=f"row{index}"),
        gold=str(index),
        samples=[sample(index, k) for k in range(len(totals))],
        rewards=[rb(t, lc, fc) for t, lc, fc in zip(totals, last, first, strict=True)],
    )


def four_groups() -> list[Group]:
    """Groups of 8 whose *last-answer* accuracies are 1/8, 7/8, 0 and 1.

    The first-answer flags and the totals are chosen so that a filter on either of them would keep a
    different set: group 2 has first-answer accuracy 1/2 and mean total 0.5, group 3 first-answer
    accuracy 1/2, group 0 first-answer accuracy 0.
    """
    half = [True, False] * 4
    return [
        # mean 1/8, population std sqrt(7)/8: advantages sqrt(7) and -1/sqrt(7)
        group(0, [1.0] + [0.0] * 7, [True] + [False] * 7),
        # mean 7/4, population std sqrt(7)/4: advantages 1/sqrt(7) and -sqrt(7)
        group(1, [2.0] * 7 + [0.0], [True] * 7 + [False], first=[False] * 8),
        group(2, [0.5] * 8, [False] * 8, first=half),
        group(3, [1.0] * 8, [True] * 8, first=half),
    ]


# --------------------------------------------------------------------------- select_groups


def test_select_groups_advantages_filter_and_metrics_by_hand() -> None:
    groups = four_groups()
    kept, metrics = select_groups(groups, GRPOConfig())
    assert kept == [groups[0], groups[1]]
    assert kept[0] is groups[0] and kept[1] is groups[1]
    assert groups[0].advantages == pytest.approx([SQRT7] + [-1 / SQRT7] * 7, rel=1e-5)
    assert groups[1].advantages == pytest.approx([1 / SQRT7] * 7 + [-SQRT7], rel=1e-5)
    # dropped groups still get advantages: all rewards equal -> exactly 0
    assert groups[2].advantages == [0.0] * 8
    assert groups[3].advantages == [0.0] * 8
    # sum |adv| is 2*sqrt(7) in each of groups 0 and 1, over 32 samples
    assert metrics == pytest.approx(
        {
            "grpo/groups_total": 4.0,
            "grpo/groups_kept": 2.0,
            "grpo/groups_kept_fraction": 0.5,
            "grpo/advantage_abs_mean": 4 * SQRT7 / 32,
        },
        rel=1e-5,
    )


def test_select_groups_eps_is_added_to_the_std() -> None:
    groups = [group(0, [1.0, 0.0], [True, False])]  # mean 0.5, std 0.5
    select_groups(groups, GRPOConfig(eps=0.5, filter_accuracy=False))
    assert groups[0].advantages == [0.5, -0.5]  # 0.5 / (0.5 + 0.5)


def test_select_groups_without_std_normalisation() -> None:
    groups = four_groups()
    kept, _ = select_groups(groups, GRPOConfig(std="none"))
    assert [g.gold for g in kept] == ["0", "1"]
    assert groups[0].advantages == pytest.approx([0.875] + [-0.125] * 7)
    assert groups[1].advantages == pytest.approx([0.25] * 7 + [-1.75])


@pytest.mark.parametrize(
    ("low", "high", "kept_golds"),
    [
        (0.1, 0.9, ["0", "1"]),
        (0.125, 0.875, ["0", "1"]),  # both bounds inclusive
        (0.2, 0.9, ["1"]),
        (0.1, 0.8, ["0"]),
        (0.0, 1.0, ["0", "1", "2", "3"]),
        (0.5, 0.6, []),
    ],
)
def test_select_groups_accuracy_filter_bounds(low: float, high: float, kept_golds: list[str]) -> None:
    kept, metrics = select_groups(four_groups(), GRPOConfig(accuracy_low=low, accuracy_high=high))
    assert [g.gold for g in kept] == kept_golds
    assert metrics["grpo/groups_kept"] == len(kept_golds)
    assert metrics["grpo/groups_kept_fraction"] == len(kept_golds) / 4


def test_select_groups_filter_off_keeps_every_group() -> None:
    groups = four_groups()
    kept, metrics = select_groups(groups, GRPOConfig(filter_accuracy=False))
    assert kept == groups
    assert metrics["grpo/groups_kept"] == 4.0 and metrics["grpo/groups_kept_fraction"] == 1.0
    assert all(g.advantages is not None and len(g.advantages) == 8 for g in groups)


def test_select_groups_unequal_sizes_raise() -> None:
    groups = [group(0, [1.0, 0.0, 0.0, 0.0], [True] + [False] * 3), group(1, [1.0, 0.0, 0.0], [True, False, False])]
    with pytest.raises(ValueError, match=r"different sizes \[3, 4\]"):
        select_groups(groups, GRPOConfig())


def test_select_groups_empty() -> None:
    kept, metrics = select_groups([], GRPOConfig())
    assert kept == []
    assert metrics["grpo/groups_total"] == 0.0
    assert metrics["grpo/groups_kept"] == 0.0
    assert metrics["grpo/groups_kept_fraction"] == 0.0


# --------------------------------------------------------------------------- request_seed


def test_request_seed_deterministic_distinct_and_in_range() -> None:
    assert request_seed(7, 3, 5) == request_seed(7, 3, 5)
    assert request_seed(0, 0, 0) == 0
    assert request_seed(1, 2, 3) == (1_000_003 + 2 * 10_007 + 3 * 101)  # below the modulus: no wrap
    for seed in (0, 1, 42, 2**31, 10**12, -7):
        grid = [request_seed(seed, step, index) for step in range(60) for index in range(128)]
        assert len(set(grid)) == len(grid), seed  # differs across steps and prompt indices
        assert all(0 <= s < 2**31 - 1 for s in grid)
    assert request_seed(1, 0, 0) != request_seed(2, 0, 0)


# --------------------------------------------------------------------------- rollout_groups


def srpo_response(a1: str, a2: str) -> str:
    """A valid five-block SRPO response (the system prompt's example) with answers `a1`, `a2`."""
    return (
        "<think> 1 + 1 adds one to one, which gives 2. </think>"
        f"<answer> \\boxed{{{a1}}} </answer>"
        "<reflection> The addition is right and the reasoning is direct; nothing is missing, "
        "so the answer stays. </reflection>"
        "<think> Checking again: one plus one is two. </think>"
        f"<answer> \\boxed{{{a2}}} </answer>"
    )


# L1 = 14 whitespace tokens in the first think+answer, so T_target = 28 and T_max = 35
L1 = 14
GOLDS = ["2", "5", "7"]
# (first right?, last right?, response length in tokens) of the samples, rotated by the seed
PATTERN = [(True, True, 28), (False, True, 35), (False, False, 28), (True, False, 31)]


class StandInEngine:
    """Mirrors ``RolloutEngine.generate``: ``len(PATTERN)`` samples per request, fixed by the seed."""

    def __init__(self, golds: list[str]) -> None:
        self.golds = golds
        self.calls: list[tuple[list[RolloutRequest], list[int]]] = []

    def generate(self, requests: list[RolloutRequest], *, seeds: list[int]) -> list[list[RolloutSample]]:
        self.calls.append((list(requests), list(seeds)))
        out = []
        for j, (req, seed) in enumerate(zip(requests, seeds, strict=True)):
            gold = self.golds[int(req.key)]
            wrong = str(int(gold) + 1)
            group = []
            for k in range(len(PATTERN)):
                first, last, length = PATTERN[(k + seed) % len(PATTERN)]
                text = srpo_response(gold if first else wrong, gold if last else wrong)
                group.append(RolloutSample(j, req.key, [seed, j], [seed] * length, [-0.25] * length, "stop", text))
            out.append(group)
        return out


def word_counts(texts: list[str]) -> list[int]:
    return [len(x.split()) for x in texts]


@pytest.fixture
def scorer() -> Iterator[RewardScorer]:
    with RewardScorer(RewardConfig(num_workers=0), count_tokens=word_counts) as s:
        yield s


def requests_and_seeds() -> tuple[list[RolloutRequest], list[int]]:
    requests = [RolloutRequest(prompt=f"What is question {i}?", key=str(i)) for i in range(len(GOLDS))]
    return requests, [request_seed(17, 4, i) for i in range(len(requests))]


def paper_total(first: bool, last: bool, length: int) -> float:
    """paper variant, default constants, valid format with a reflection and two attempts."""
    effect = {(True, True): 0.25, (False, True): 0.5, (True, False): -0.25, (False, False): 0.0}[(first, last)]
    f_len = math.exp(-(((length - 2 * L1) / (0.5 * L1)) ** 2))
    return 0.5 + (0.5 if first else 0.0) + effect + 0.25 + 0.1 * f_len


def test_rollout_groups_single_process(scorer: RewardScorer) -> None:
    assert not dist.is_initialized()
    requests, seeds = requests_and_seeds()
    engine = StandInEngine(GOLDS)
    groups = rollout_groups(engine, scorer, requests, GOLDS, seeds=seeds)

    assert engine.calls == [(requests, seeds)]  # one call, all requests, exactly the given seeds
    assert [g.request for g in groups] == requests
    assert [g.gold for g in groups] == GOLDS
    for i, (g, seed) in enumerate(zip(groups, seeds, strict=True)):
        assert g.advantages is None
        assert len(g.samples) == len(g.rewards) == len(PATTERN)
        assert all(s.key == str(i) and s.prompt_token_ids == [seed, i] for s in g.samples)
        for k, (s, r) in enumerate(zip(g.samples, g.rewards, strict=True)):
            first, last, length = PATTERN[(k + seed) % len(PATTERN)]
            assert len(s.token_ids) == length
            assert (r.first_correct, r.last_correct) == (first, last), (i, k)
            # L is the sampled token count (not the word count of the text): f_len differs by length
            assert r.total == pytest.approx(paper_total(first, last, length), abs=1e-9), (i, k)
        by_kind = {PATTERN[(k + seed) % len(PATTERN)][:2]: r.total for k, r in enumerate(g.rewards)}
        assert by_kind[(True, True)] > by_kind[(False, False)]
        assert by_kind[(False, True)] > by_kind[(True, False)]


def test_rollout_groups_rewards_match_scoring_each_sample_alone(scorer: RewardScorer) -> None:
    requests, seeds = requests_and_seeds()
    groups = rollout_groups(StandInEngine(GOLDS), scorer, requests, GOLDS, seeds=seeds)
    for g in groups:
        for s, r in zip(g.samples, g.rewards, strict=True):
            assert r == scorer.score([s.text], [g.gold], response_lengths=[len(s.token_ids)])[0]


def test_rollout_groups_then_select(scorer: RewardScorer) -> None:
    requests, seeds = requests_and_seeds()
    groups = rollout_groups(StandInEngine(GOLDS), scorer, requests, GOLDS, seeds=seeds)
    kept, metrics = select_groups(groups, GRPOConfig())
    assert kept == groups  # last-answer accuracy 2/4 in every group
    assert metrics["grpo/groups_kept_fraction"] == 1.0
    for g in kept:
        assert g.advantages is not None
        assert sum(g.advantages) == pytest.approx(0.0, abs=1e-9)
        best = max(range(len(g.rewards)), key=lambda k: g.rewards[k].total)
        assert g.advantages[best] == max(g.advantages) > 0
