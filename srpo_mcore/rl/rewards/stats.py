"""Per-step reward statistics: what users watch to see whether reflection helps.

Owns: reducing a step's ``RewardBreakdown`` list to flat scalar metrics — mean/std of every
component, the four transition rates (over responses with a second attempt; they sum to 1), the
format-valid rate, first/last answer accuracy, and the counts of unparseable golds, timeouts and
responses zeroed by the official two-attempt rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from srpo_mcore.rl.rewards.reflection import TRANSITIONS, RewardBreakdown

COMPONENTS = ("total", "format", "accuracy", "effect", "reflection", "length", "f_len")


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def summarize(breakdowns: Sequence[RewardBreakdown], prefix: str = "reward/") -> dict[str, float]:
    """Flat metrics of one step (keys prefixed with `prefix`)."""
    n = len(breakdowns)
    out: dict[str, float] = {f"{prefix}count": float(n)}
    for comp in COMPONENTS:
        mean, std = _mean_std([getattr(b, comp) for b in breakdowns])
        out[f"{prefix}{comp}_mean"] = mean
        out[f"{prefix}{comp}_std"] = std
    rate = (lambda k: k / n) if n else (lambda k: 0.0)
    out[f"{prefix}format_valid_rate"] = rate(sum(b.format_valid for b in breakdowns))
    out[f"{prefix}first_accuracy"] = rate(sum(b.first_correct for b in breakdowns))
    out[f"{prefix}last_accuracy"] = rate(sum(b.last_correct for b in breakdowns))
    two = [b for b in breakdowns if b.transition is not None]
    out[f"{prefix}two_attempt_rate"] = rate(len(two))
    for t in TRANSITIONS:
        out[f"{prefix}{t}_rate"] = sum(b.transition == t for b in two) / len(two) if two else 0.0
    out[f"{prefix}gold_unparseable_count"] = float(sum(b.gold_unparseable for b in breakdowns))
    out[f"{prefix}timeout_count"] = float(sum(b.timed_out for b in breakdowns))
    out[f"{prefix}zeroed_count"] = float(sum(b.zeroed for b in breakdowns))
    return out
