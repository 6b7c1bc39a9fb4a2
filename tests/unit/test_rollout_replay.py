"""Replay files round-trip exactly (images included) and bad files are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srpo_mcore.rollout.replay import ReplaySource, load_rollouts, save_rollouts
from srpo_mcore.rollout.types import RolloutRequest, RolloutSample


def test_round_trip(tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 56, 3), dtype=np.uint8))
    requests = [RolloutRequest("p0 <img>", (image,), key="a"), RolloutRequest("p1", (), key="b")]
    samples = [
        [
            RolloutSample(0, "a", [1, 2], [3, 4], [-0.5, -1.25], "stop", "xy"),
            RolloutSample(0, "a", [1, 2], [5], [-2.0], "length", "z"),
        ],
        [RolloutSample(1, "b", [7], [8, 9, 10], [-0.1, -0.2, -0.3], "stop", "é")],
    ]
    save_rollouts(tmp_path, 3, requests, samples)
    got_requests, got_samples = ReplaySource(tmp_path).rollouts(3)
    assert got_samples == samples
    assert [r.prompt for r in got_requests] == ["p0 <img>", "p1"] and [r.key for r in got_requests] == ["a", "b"]
    assert np.array_equal(np.asarray(got_requests[0].images[0]), np.asarray(image))
    assert ReplaySource(tmp_path).steps() == [3]
    assert not list(tmp_path.glob(".step_*")), "no temporary directory left behind"


def test_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved rollouts for step 1"):
        load_rollouts(tmp_path, 1)
    d = tmp_path / "step_000002"
    d.mkdir()
    (d / "rollouts.jsonl").write_text('{"request_index": 0}\n')
    with pytest.raises(ValueError, match=r"rollouts\.jsonl:1: malformed"):
        load_rollouts(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReplaySource(tmp_path / "nope")
