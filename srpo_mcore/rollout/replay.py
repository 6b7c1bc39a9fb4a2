"""Replay mode: save one step's rollouts to disk and serve them back without vLLM.

Owns the on-disk format of a step's rollouts — ``<dir>/step_000042/rollouts.jsonl`` (one line per
sample: request index and key, prompt text, prompt/response token ids, logprobs, finish reason,
text) plus the prompts' images as PNG under ``images/`` — written to a temporary directory and
renamed into place, and ``ReplaySource`` which returns exactly what was saved for a step, so the
trainer can be debugged on fixed rollouts with no engine at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from srpo_mcore.atomic_dir import atomic_dir
from srpo_mcore.rollout.types import RolloutRequest, RolloutSample


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def save_rollouts(
    root: str | Path, step: int, requests: Sequence[RolloutRequest], samples: Sequence[Sequence[RolloutSample]]
) -> Path:
    """Write a step's requests and samples; returns the step directory."""
    final = step_dir(root, step)
    with atomic_dir(final) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "rollouts.jsonl", "w") as f:
            for i, (req, group) in enumerate(zip(requests, samples)):
                image_files = []
                for j, image in enumerate(req.images):
                    name = f"images/{i:06d}_{j}.png"
                    image.save(tmp / name)
                    image_files.append(name)
                for s in group:
                    f.write(
                        json.dumps(
                            {
                                "request_index": i,
                                "key": req.key,
                                "prompt": req.prompt,
                                "images": image_files,
                                "prompt_token_ids": s.prompt_token_ids,
                                "token_ids": s.token_ids,
                                "logprobs": s.logprobs,
                                "finish_reason": s.finish_reason,
                                "text": s.text,
                            }
                        )
                        + "\n"
                    )
    return final


def load_rollouts(root: str | Path, step: int) -> tuple[list[RolloutRequest], list[list[RolloutSample]]]:
    """Read back what `save_rollouts` wrote for `step`.

    Raises:
        FileNotFoundError: no rollouts were saved for `step` (names the directory).
        ValueError: a malformed line (names the file and line number).
    """
    from PIL import Image

    directory = step_dir(root, step)
    file = directory / "rollouts.jsonl"
    if not file.exists():
        raise FileNotFoundError(f"{directory}: no saved rollouts for step {step}")
    requests: dict[int, RolloutRequest] = {}
    samples: dict[int, list[RolloutSample]] = {}
    for lineno, line in enumerate(file.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            i = int(row["request_index"])
            if i not in requests:
                images = tuple(Image.open(directory / name).convert("RGB") for name in row["images"])
                requests[i] = RolloutRequest(row["prompt"], images, key=row["key"])
            samples.setdefault(i, []).append(
                RolloutSample(
                    request_index=i,
                    key=row["key"],
                    prompt_token_ids=row["prompt_token_ids"],
                    token_ids=row["token_ids"],
                    logprobs=row["logprobs"],
                    finish_reason=row["finish_reason"],
                    text=row["text"],
                )
            )
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise ValueError(f"{file}:{lineno}: malformed rollout record ({e})") from e
    order = sorted(requests)
    return [requests[i] for i in order], [samples[i] for i in order]


class ReplaySource:
    """Serves saved rollouts step by step in place of a ``RolloutEngine``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"rollout.replay_dir {self.root} does not exist")

    ranks_per_engine = 1

    def sleep(self) -> None:
        """Nothing to free (the engine's lifecycle calls are no-ops here)."""

    def wake_up(self) -> None:
        """Nothing to restore."""

    def steps(self) -> list[int]:
        return sorted(int(p.name.split("_")[1]) for p in self.root.glob("step_*") if (p / "rollouts.jsonl").exists())

    def rollouts(self, step: int) -> tuple[list[RolloutRequest], list[list[RolloutSample]]]:
        return load_rollouts(self.root, step)
