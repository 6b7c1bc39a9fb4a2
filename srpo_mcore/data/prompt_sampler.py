"""Which prompts each step trains on: seeded per-episode shuffles and a resumable position.

Owns ``PromptSampler``: a permutation of the prompt rows per episode (seeded by the run seed and
the episode number, so a resumed run sees the same order), handed out in fixed-size batches that
run across episode boundaries, and its state ``{"episode", "cursor"}`` for checkpoints.
"""

from __future__ import annotations

import random
from typing import Any


class PromptSampler:
    """Hand out row indices `batch` at a time, episode after episode.

    Args:
        num_rows: Rows in the prompt set (> 0).
        seed: Run seed.
        shuffle: Permute each episode; False keeps file order.
    """

    def __init__(self, num_rows: int, *, seed: int, shuffle: bool = True) -> None:
        if num_rows <= 0:
            raise ValueError("the prompt set is empty")
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self.episode = 0
        self.cursor = 0

    def _order(self, episode: int) -> list[int]:
        order = list(range(self.num_rows))
        if self.shuffle:
            random.Random(self.seed * 7919 + episode).shuffle(order)
        return order

    def next(self, count: int) -> list[int]:
        """The next `count` row indices (crossing into the next episode when one runs out)."""
        out: list[int] = []
        while len(out) < count:
            order = self._order(self.episode)
            take = order[self.cursor : self.cursor + count - len(out)]
            out.extend(take)
            self.cursor += len(take)
            if self.cursor >= self.num_rows:
                self.episode, self.cursor = self.episode + 1, 0
        return out

    def state(self) -> dict[str, Any]:
        return {"episode": self.episode, "cursor": self.cursor, "num_rows": self.num_rows}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (the prompt set must have the same number of rows)."""
        if state.get("num_rows") != self.num_rows:
            raise ValueError(
                f"checkpoint was taken with {state.get('num_rows')} prompt rows, the data now has {self.num_rows}; "
                "resume with the same data (or start a new run)"
            )
        self.episode, self.cursor = int(state["episode"]), int(state["cursor"])
