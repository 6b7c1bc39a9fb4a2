"""The SRPO reflection-aware reward (variants ``paper`` and ``official``) and the GRPO baseline.

Owns: the arithmetic of shared/SRPO.md on already-judged answers — pure functions of the parsed
response, the two verdicts and the token lengths, returning a per-component ``RewardBreakdown``.

Definitions (all constants are ``RewardConfig`` fields):

- ``a1``/``a2``: first and last ``<answer>`` contents; a *second attempt* exists when there are at
  least two answer blocks. The transition (right→right, wrong→right, right→wrong, wrong→wrong) is
  defined only then.
- ``L``: tokens of the whole response; ``L1``: tokens of the first think+answer;
  ``f_len(L) = exp(-((|L - T_target|) / (T_max - T_target))²)`` with ``T_target = target·L1`` and
  ``T_max = max·L1``; 0 when ``L1`` is 0.
- paper: ``R = R_format + R_acc + I_eff + I_ref + α·f_len``. ``R_acc`` rewards a correct ``a1``;
  ``I_eff`` needs a second attempt; ``α·f_len`` counts only with a reflection *and* a second attempt.
- official: ``R = r_acc + r_fmt + α·f_len``; ``r_acc`` by transition, or ``official_single_correct``
  for a single correct answer block; with ``official_zero_without_two_attempts`` (default, as the
  released code behaves) a response without two think and two answer blocks scores exactly 0.
- grpo: ``grpo_format_reward`` for the single ``<think><answer>`` format plus ``grpo_accuracy_reward``
  when the (last) answer is correct.

Does not own: parsing (``format``), verification (``verify``) or batching (``scorer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from srpo_mcore.config import RewardConfig
from srpo_mcore.rl.rewards.format import ParsedResponse
from srpo_mcore.rl.rewards.verify import Verdict

TRANSITIONS = ("right_right", "wrong_right", "right_wrong", "wrong_wrong")


@dataclass(frozen=True)
class RewardBreakdown:
    """One response's reward and its parts (what the trainer logs)."""

    total: float
    format: float
    """R_format (paper) / r_fmt (official) / format reward (grpo)."""
    accuracy: float
    """R_acc (paper) / r_acc (official) / accuracy reward (grpo)."""
    effect: float
    """I_eff (paper only)."""
    reflection: float
    """I_ref (paper only)."""
    length: float
    """The length term as added to the total: α·f_len, or 0 where it does not count."""
    f_len: float
    """The raw length factor in [0, 1] (0 without a first attempt)."""
    format_valid: bool
    first_correct: bool
    last_correct: bool
    two_attempts: bool
    transition: str | None
    """right_right | wrong_right | right_wrong | wrong_wrong, or None without a second attempt."""
    gold_unparseable: bool
    timed_out: bool
    zeroed: bool = False
    """official: scored 0 by the two-attempt rule."""


def length_factor(length: int, first_length: int, target_factor: float, max_factor: float) -> float:
    """``f_len`` of shared/SRPO.md; 0 when there is no first attempt (``first_length <= 0``)."""
    if first_length <= 0:
        return 0.0
    target = target_factor * first_length
    spread = (max_factor - target_factor) * first_length
    return math.exp(-(((abs(length - target)) / spread) ** 2))


def transition(first: bool, last: bool) -> str:
    """right_right | wrong_right | right_wrong | wrong_wrong."""
    return f"{'right' if first else 'wrong'}_{'right' if last else 'wrong'}"


def compute_reward(
    parsed: ParsedResponse,
    first: Verdict,
    last: Verdict,
    length: int,
    first_length: int,
    cfg: RewardConfig,
) -> RewardBreakdown:
    """The reward of one response under ``cfg.variant``.

    Args:
        parsed: The response's structure.
        first: Verdict on the first answer block (``a1``).
        last: Verdict on the last answer block (``a2``; the same block when there is one).
        length: ``L``, tokens of the whole response.
        first_length: ``L1``, tokens of the first think+answer.
        cfg: The reward config.
    """
    two = len(parsed.answers) >= 2
    trans = transition(first.correct, last.correct) if two else None
    f_len = length_factor(length, first_length, cfg.target_length_factor, cfg.max_length_factor)
    common = dict(
        f_len=f_len,
        first_correct=first.correct,
        last_correct=last.correct,
        two_attempts=two,
        transition=trans,
        gold_unparseable=first.gold_unparseable or last.gold_unparseable,
        timed_out=first.timed_out or last.timed_out,
    )
    if cfg.variant == "paper":
        valid = parsed.is_srpo_format
        r_format = cfg.format_reward if valid else 0.0
        r_acc = cfg.first_correct_reward if first.correct else 0.0
        effect = {
            "right_right": cfg.keep_correct_bonus,
            "wrong_right": cfg.fix_wrong_bonus,
            "wrong_wrong": cfg.fail_to_fix_bonus,
            "right_wrong": cfg.break_correct_penalty,
            None: 0.0,
        }[trans]
        r_ref = cfg.reflection_reward if parsed.has_reflection else 0.0
        r_len = cfg.alpha * f_len if (parsed.has_reflection and two) else 0.0
        total = r_format + r_acc + effect + r_ref + r_len
        return RewardBreakdown(total, r_format, r_acc, effect, r_ref, r_len, format_valid=valid, **common)  # type: ignore[arg-type]
    if cfg.variant == "official":
        valid = parsed.is_srpo_format
        if cfg.official_zero_without_two_attempts and (len(parsed.of("think")) < 2 or not two):
            return RewardBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, format_valid=valid, zeroed=True, **common)  # type: ignore[arg-type]
        if two:
            r_acc = {
                "right_right": cfg.official_right_right,
                "wrong_right": cfg.official_wrong_right,
                "right_wrong": cfg.official_right_wrong,
                "wrong_wrong": cfg.official_wrong_wrong,
            }[trans]  # type: ignore[index]
        else:
            r_acc = cfg.official_single_correct if first.correct else 0.0
        r_format = cfg.format_reward if valid else 0.0
        r_len = cfg.alpha * f_len if two else 0.0
        total = r_acc + r_format + r_len
        return RewardBreakdown(total, r_format, r_acc, 0.0, 0.0, r_len, format_valid=valid, **common)  # type: ignore[arg-type]
    if cfg.variant == "grpo":
        valid = parsed.is_grpo_format
        r_format = cfg.grpo_format_reward if valid else 0.0
        r_acc = cfg.grpo_accuracy_reward if last.correct else 0.0
        return RewardBreakdown(r_format + r_acc, r_format, r_acc, 0.0, 0.0, 0.0, format_valid=valid, **common)  # type: ignore[arg-type]
    raise ValueError(f"reward.variant must be paper, official or grpo, got {cfg.variant!r}")


def reward_bounds(cfg: RewardConfig) -> tuple[float, float]:
    """Smallest and largest total the variant can give under ``cfg`` (tight: enumerates the cases)."""
    totals: list[float] = []
    fmt = (0.0, cfg.format_reward)
    length = (0.0, cfg.alpha)
    if cfg.variant == "paper":
        effect = {
            "right_right": cfg.keep_correct_bonus,
            "wrong_right": cfg.fix_wrong_bonus,
            "right_wrong": cfg.break_correct_penalty,
            "wrong_wrong": cfg.fail_to_fix_bonus,
        }
        for first in (True, False):
            acc = cfg.first_correct_reward if first else 0.0
            totals += [acc + ref for ref in (0.0, cfg.reflection_reward)]  # single answer: no format
            for t, eff in effect.items():
                if t.startswith("right") != first:
                    continue
                totals += [acc + eff + f for f in fmt]  # no reflection: no length term
                totals += [acc + eff + f + cfg.reflection_reward + ln for f in fmt for ln in length]
    elif cfg.variant == "official":
        accs = (cfg.official_right_right, cfg.official_wrong_right, cfg.official_right_wrong, cfg.official_wrong_wrong)
        totals += [a + f + ln for a in accs for f in fmt for ln in length]
        totals += [0.0] if cfg.official_zero_without_two_attempts else [0.0, cfg.official_single_correct]
    else:
        totals += [f + a for f in (0.0, cfg.grpo_format_reward) for a in (0.0, cfg.grpo_accuracy_reward)]
    return min(totals), max(totals)
