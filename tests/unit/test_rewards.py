"""SRPO reward: every case of both variants and the GRPO baseline, hand-computed.

Token counts here are characters (``len``), so lengths are exact: the builder pads the reflection
so the whole response is exactly 2·L1 characters (f_len = 1, length term = α = 0.1).
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from srpo_mcore.config import RewardConfig
from srpo_mcore.rl.rewards import RewardScorer, length_factor, parse_response, summarize
from srpo_mcore.rl.rewards.answers import extract_boxed, gold_choice, pred_choice


def char_counts(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


R, W = "\\boxed{7}", "\\boxed{8}"  # right / wrong answers to gold "7"


def srpo(
    a1: str,
    a2: str,
    *,
    prefix: str = "",
    tail: str = "",
    reflection: str = "Check.",
    think2: str = "Again.",
    think1: str = "I add three and four, which gives seven; then I check it twice.",
) -> str:
    """A five-block response padded (inside the reflection) to exactly 2 x L1 characters."""
    first = f"<think>{think1}</think>\n<answer>{a1}</answer>\n"
    second = f"<think>{think2}</think>\n<answer>{a2}</answer>{tail}"
    l1 = len(first.rstrip("\n"))
    pad = 2 * l1 - len(prefix + first + f"<reflection>{reflection}</reflection>\n" + second)
    assert pad >= 0
    return f"{prefix}{first}<reflection>{reflection}{' ' * pad}</reflection>\n{second}"


SINGLE_R = "<think>I add.</think><answer>\\boxed{7}</answer>"
SINGLE_W = "<think>I add.</think><answer>\\boxed{8}</answer>"
NO_REFLECTION_RR = "<think>a</think><answer>7</answer><think>b</think><answer>7</answer>"

# (id, response, gold, paper total, official total)
CASES = [
    ("right_right", srpo(R, R), "7", 1.6, 1.35),
    ("wrong_right", srpo(W, R), "7", 1.35, 1.6),
    ("right_wrong", srpo(R, W), "7", 1.1, 0.85),
    ("wrong_wrong", srpo(W, W), "7", 0.85, 0.6),
    ("single_right", SINGLE_R, "7", 0.5, 0.0),
    ("single_wrong", SINGLE_W, "7", 0.0, 0.0),
    ("text_before_first_think", srpo(R, R, prefix="Let me see. "), "7", 1.6, 1.35),
    ("trailing_text", srpo(R, R, tail=" Done."), "7", 1.1, 0.85),
    ("empty_reflection", srpo(R, R, reflection="  "), "7", 0.75, 0.85),
    (
        "missing_reflection",
        NO_REFLECTION_RR,
        "7",
        0.75,
        0.75 + 0.1 * length_factor(len(NO_REFLECTION_RR), len("<think>a</think><answer>7</answer>"), 2, 2.5),
    ),
    ("empty_second_think", srpo(R, R, think2=""), "7", 1.1, 0.85),
    ("duplicated_answer_last_wrong", srpo(R, R, tail="<answer>8</answer>"), "7", 0.6, 0.35),
    ("no_tags", "The answer is 7.", "7", 0.0, 0.0),
    ("frac_vs_decimal", srpo("0.5", "\\boxed{\\frac12}"), "\\frac{1}{2}", 1.6, 1.35),
    ("choice_letter_forms", srpo("(B)", "\\boxed{B}"), "B", 1.6, 1.35),
    ("choice_letter_wrong_then_right", srpo("The answer is C", "B."), "(B)", 1.35, 1.6),
    ("unparseable_gold_no_free_credit", srpo("5", "6"), "???", 0.85, 0.6),
]


def score(response: str, gold: str, **cfg_kwargs: object):
    cfg = RewardConfig(num_workers=0, **cfg_kwargs)  # type: ignore[arg-type]
    with RewardScorer(cfg, count_tokens=char_counts) as scorer:
        return scorer.score([response], [gold])[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_paper_variant(case) -> None:
    _, response, gold, paper, _ = case
    b = score(response, gold, variant="paper")
    assert b.total == pytest.approx(paper, abs=1e-9), b
    assert b.total == pytest.approx(b.format + b.accuracy + b.effect + b.reflection + b.length)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_official_variant(case) -> None:
    _, response, gold, _, official = case
    b = score(response, gold, variant="official")
    assert b.total == pytest.approx(official, abs=1e-9), b


def test_breakdown_fields_of_a_correction() -> None:
    b = score(srpo(W, R), "7")
    assert (b.format, b.accuracy, b.effect, b.reflection, b.length) == (0.5, 0.0, 0.5, 0.25, pytest.approx(0.1))
    assert b.format_valid and b.two_attempts and b.transition == "wrong_right"
    assert not b.first_correct and b.last_correct and b.f_len == pytest.approx(1.0)


def test_unparseable_gold_is_counted_and_only_string_equal_counts() -> None:
    b = score(srpo("5", "???"), "???")
    assert b.gold_unparseable and not b.first_correct and b.last_correct
    assert summarize([b])["reward/gold_unparseable_count"] == 1


def test_official_single_answer_without_zero_rule() -> None:
    assert score(SINGLE_R, "7", variant="official", official_zero_without_two_attempts=False).total == 0.5
    assert score(SINGLE_W, "7", variant="official", official_zero_without_two_attempts=False).total == 0.0
    zeroed = score(SINGLE_R, "7", variant="official")
    assert zeroed.zeroed and zeroed.total == 0.0


def test_grpo_baseline() -> None:
    assert score(SINGLE_R, "7", variant="grpo").total == 1.5
    assert score(SINGLE_W, "7", variant="grpo").total == 0.5
    assert score(srpo(W, R), "7", variant="grpo").total == 1.0  # five blocks: not the baseline format
    assert score("7", "7", variant="grpo").total == 0.0


def test_every_constant_is_a_parameter() -> None:
    custom = dict(format_reward=1.0, first_correct_reward=2.0, keep_correct_bonus=3.0, reflection_reward=4.0, alpha=5.0)
    assert score(srpo(R, R), "7", **custom).total == pytest.approx(1 + 2 + 3 + 4 + 5)
    assert score(srpo(W, R), "7", fix_wrong_bonus=0.7).total == pytest.approx(0.5 + 0.7 + 0.25 + 0.1)
    assert score(srpo(R, W), "7", break_correct_penalty=-1.0).total == pytest.approx(0.5 + 0.5 - 1 + 0.25 + 0.1)
    assert score(srpo(W, W), "7", fail_to_fix_bonus=0.05).total == pytest.approx(0.85 + 0.05)
    assert score(srpo(R, R), "7", variant="official", official_right_right=0.9).total == pytest.approx(1.5)
    # Moving the target to 3·L1 with max 4·L1: L = 2·L1 gives f_len = exp(-1).
    b = score(srpo(R, R), "7", target_length_factor=3.0, max_length_factor=4.0)
    assert b.f_len == pytest.approx(math.exp(-1))


def test_length_factor_hand_values() -> None:
    assert length_factor(20, 10, 2.0, 2.5) == 1.0
    assert length_factor(25, 10, 2.0, 2.5) == pytest.approx(math.exp(-1))
    assert length_factor(15, 10, 2.0, 2.5) == pytest.approx(math.exp(-1))
    assert length_factor(10, 10, 2.0, 2.5) == pytest.approx(math.exp(-4))
    assert length_factor(10, 0, 2.0, 2.5) == 0.0


def test_format_parsing() -> None:
    ok = parse_response(
        "x <think>a</think> <answer>1</answer>\n<reflection>r</reflection><think>b</think><answer>2</answer>\n"
    )
    assert ok.is_srpo_format and ok.first_answer == "1" and ok.last_answer == "2"
    for bad in (
        "<think>a</think><answer>1</answer><reflection>r</reflection><think>b</think><answer>2</answer>x",
        "<think>a</think>y<answer>1</answer><reflection>r</reflection><think>b</think><answer>2</answer>",
        "<think>a<answer>1</answer></think><reflection>r</reflection><think>b</think><answer>2</answer>",
        "<think>a</think><answer>1</answer><reflection>r</reflection><think>b</think><answer>2",
        "<answer>1</answer><think>a</think><reflection>r</reflection><think>b</think><answer>2</answer>",
        "</think><think>a</think><answer>1</answer><reflection>r</reflection><think>b</think><answer>2</answer>",
    ):
        assert not parse_response(bad).is_srpo_format, bad
    assert parse_response("<think>a</think>\n<answer>1</answer>").is_grpo_format


def test_answer_helpers() -> None:
    assert extract_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{3}") == "3"
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{open") is None
    assert [gold_choice(g) for g in ("B", "(c)", "D.", "12", "Bob")] == ["B", "C", "D", None, None]
    assert [pred_choice(p) for p in ("(B)", "B. 12", "Answer: C", "the answer is a triangle", "7")] == [
        "B",
        "B",
        "C",
        None,
        None,
    ]


def test_summary_transition_rates_and_components() -> None:
    bs = [score(r, "7") for r in (srpo(R, R), srpo(W, R), srpo(W, R), srpo(R, W), SINGLE_R)]
    m = summarize(bs)
    assert m["reward/count"] == 5
    assert m["reward/two_attempt_rate"] == pytest.approx(4 / 5)
    assert (
        m["reward/right_right_rate"],
        m["reward/wrong_right_rate"],
        m["reward/right_wrong_rate"],
        m["reward/wrong_wrong_rate"],
    ) == (
        0.25,
        0.5,
        0.25,
        0.0,
    )
    assert m["reward/format_valid_rate"] == pytest.approx(4 / 5)
    totals = [1.6, 1.35, 1.35, 1.1, 0.5]
    mean = sum(totals) / 5
    assert m["reward/total_mean"] == pytest.approx(mean)
    assert m["reward/total_std"] == pytest.approx(math.sqrt(sum((t - mean) ** 2 for t in totals) / 5))
    assert m["reward/first_accuracy"] == pytest.approx(3 / 5) and m["reward/last_accuracy"] == pytest.approx(4 / 5)


def test_batch_validation_and_precomputed_lengths() -> None:
    with RewardScorer(RewardConfig(num_workers=0), count_tokens=char_counts) as scorer:
        with pytest.raises(ValueError, match="2 responses but 1 gold"):
            scorer.score(["a", "b"], ["7"])
        r = srpo(R, R)
        l1 = len(r) // 2
        (b,) = scorer.score([r], ["7"], response_lengths=[3 * l1])  # |3·L1 - 2·L1| / (0.5·L1) = 2
        assert b.f_len == pytest.approx(math.exp(-4))


def test_config_variants_are_validated() -> None:
    from srpo_mcore.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"reward\.variant"):
        load_config(None, ["reward.variant=papers"])
    assert dataclasses.asdict(load_config(None, ["reward.variant=official"]).reward)["variant"] == "official"
