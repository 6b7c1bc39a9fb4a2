"""Property tests: over arbitrary strings and tag soups the reward never raises, stays within the
variant's bounds and is deterministic."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srpo_mcore.config import RewardConfig
from srpo_mcore.rl.rewards import RewardScorer, parse_response, reward_bounds

PIECES = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<reflection>",
    "</reflection>",
    "\\boxed{",
    "}",
    "{",
    "7",
    "8",
    "B",
    "(B)",
    "\\frac{1}{2}",
    "0.5",
    " ",
    "\n",
    "$",
    "x",
    "<think",
    "answer>",
]


def char_counts(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


tag_soup = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
responses = st.one_of(tag_soup, st.text(max_size=200))
golds = st.one_of(st.sampled_from(["7", "B", "\\frac{1}{2}", "", "???", "x^2"]), st.text(max_size=10))

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", params=["paper", "official", "grpo"])
def scorer(request):
    with RewardScorer(
        RewardConfig(variant=request.param, num_workers=0, verify_timeout_s=2.0), count_tokens=char_counts
    ) as s:
        yield s


@SETTINGS
@given(batch=st.lists(st.tuples(responses, golds), min_size=1, max_size=4))
def test_never_raises_bounded_deterministic(scorer, batch) -> None:
    texts, gs = zip(*batch)
    lo, hi = reward_bounds(scorer.cfg)
    first = scorer.score(list(texts), list(gs))
    again = scorer.score(list(texts), list(gs))
    assert first == again
    for b in first:
        assert lo - 1e-9 <= b.total <= hi + 1e-9, b
        assert 0.0 <= b.f_len <= 1.0


@SETTINGS
@given(text=responses)
def test_parser_invariants(text: str) -> None:
    p = parse_response(text)
    for block in p.blocks:  # spans are real and contents sit between their tags
        assert text[block.start : block.end] == f"<{block.tag}>{block.content}</{block.tag}>"
    assert [b.start for b in p.blocks] == sorted(b.start for b in p.blocks)
    if p.is_srpo_format:
        assert p.tags() == ("think", "answer", "reflection", "think", "answer") and p.has_reflection


def test_bounds_are_attained() -> None:
    assert reward_bounds(RewardConfig()) == (0.0, pytest.approx(1.6))  # right->wrong still keeps R_acc
    assert reward_bounds(RewardConfig(variant="official")) == (0.0, pytest.approx(1.6))
    assert reward_bounds(RewardConfig(variant="grpo")) == (0.0, 1.5)
