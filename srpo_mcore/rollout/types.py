"""Data contract between the rollout engine and the trainer.

``RolloutRequest`` is one prompt (chat-templated text plus its images); ``RolloutSample`` is one
generated response to it with the per-token logprobs of the sampled tokens (the mode is the
rollout config's ``logprobs_mode``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RolloutRequest:
    """One prompt: chat-templated text whose image placeholders match ``images`` in order."""

    prompt: str
    images: tuple[Any, ...] = ()
    """PIL images (or arrays) for the prompt's ``<|image_pad|>`` placeholders, in order."""
    key: str = ""
    """Caller's identifier (e.g. the dataset row id), carried into the samples."""


@dataclass(frozen=True)
class RolloutSample:
    """One response. ``token_ids`` and ``logprobs`` have the same length."""

    request_index: int
    key: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    """stop (EOS or a stop string) | length (hit max_tokens)."""
    text: str
    extra: dict[str, Any] = field(default_factory=dict)
