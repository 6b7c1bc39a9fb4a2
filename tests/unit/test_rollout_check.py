"""The logprob-gap metric and the strict check mode, on hand-made numbers."""

from __future__ import annotations

import pytest

from srpo_mcore.rollout.check import RefitCheckError, check_gap, logprob_gap


def test_gap_by_hand() -> None:
    gap = logprob_gap([[-1.0, -2.0], [-0.5]], [[-1.0, -2.5], [-0.25]])
    assert gap == {"max": 0.5, "mean": pytest.approx(0.75 / 3), "tokens": 3.0}
    assert logprob_gap([], []) == {"max": 0.0, "mean": 0.0, "tokens": 0.0}


def test_check_mode_names_the_worst_token() -> None:
    assert check_gap([[-1.0]], [[-1.00001]], 1e-3)["max"] < 1e-3
    with pytest.raises(
        RefitCheckError, match=r"gap 5\.000e-01 > rollout\.check_tolerance 0\.001 \(sample 0, token 1\)"
    ):
        check_gap([[-1.0, -2.0]], [[-1.0, -2.5]], 1e-3)
    with pytest.raises(ValueError, match="sample 0: 1 engine logprobs vs 2"):
        logprob_gap([[-1.0]], [[-1.0, -2.0]])
