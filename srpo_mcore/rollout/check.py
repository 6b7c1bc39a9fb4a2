"""Rollout-vs-trainer consistency: the logprob gap every step, and the strict check mode.

Owns: ``logprob_gap`` (max / mean absolute difference between the engine's logprobs of the tokens
it sampled and the trainer's recomputation of the same tokens — the metric logged every step) and
``check_gap`` (check mode: raise when the gap exceeds ``rollout.check_tolerance``, naming the
worst sample and position, e.g. after a refit that did not take).
"""

from __future__ import annotations

from collections.abc import Sequence


class RefitCheckError(RuntimeError):
    """The engine's logprobs disagree with the trainer's beyond the tolerance."""


def logprob_gap(engine_lp: Sequence[Sequence[float]], trainer_lp: Sequence[Sequence[float]]) -> dict[str, float]:
    """``{"max": ..., "mean": ..., "tokens": n}`` over all sampled tokens of all samples."""
    if len(engine_lp) != len(trainer_lp):
        raise ValueError(f"{len(engine_lp)} engine samples vs {len(trainer_lp)} trainer samples")
    diffs: list[float] = []
    for i, (e, t) in enumerate(zip(engine_lp, trainer_lp)):
        if len(e) != len(t):
            raise ValueError(f"sample {i}: {len(e)} engine logprobs vs {len(t)} trainer logprobs")
        diffs.extend(abs(a - b) for a, b in zip(e, t))
    if not diffs:
        return {"max": 0.0, "mean": 0.0, "tokens": 0.0}
    return {"max": max(diffs), "mean": sum(diffs) / len(diffs), "tokens": float(len(diffs))}


def check_gap(
    engine_lp: Sequence[Sequence[float]], trainer_lp: Sequence[Sequence[float]], tolerance: float
) -> dict[str, float]:
    """`logprob_gap`, raising RefitCheckError when its max exceeds `tolerance`."""
    gap = logprob_gap(engine_lp, trainer_lp)
    if gap["max"] > tolerance:
        worst = max(
            (
                (abs(a - b), i, j)
                for i, (e, t) in enumerate(zip(engine_lp, trainer_lp))
                for j, (a, b) in enumerate(zip(e, t))
            ),
        )
        raise RefitCheckError(
            f"rollout check: engine vs trainer logprob gap {gap['max']:.3e} > rollout.check_tolerance {tolerance:g} "
            f"(sample {worst[1]}, token {worst[2]}); the engine is not serving the trainer's weights"
        )
    return gap
