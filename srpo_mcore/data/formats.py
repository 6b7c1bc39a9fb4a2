"""Row formats of prompt data: what one row of each supported layout means, in one common shape.

Owns: ``FORMATS`` and ``detect_format`` (choosing a file's format from its columns), and
``to_raw_prompt``, which turns one raw row of a format into a ``RawPrompt`` — system turn, question
with ``<image>`` markers where the images go, gold or target answer, raw image values in order —
or raises ``Skip`` with the reason. Pure: no file is read here (image values are resolved and
checked by ``prompt_index``).

Formats (columns; ``data.id_field`` names the id column in every format):

- ``rows``: ``data.question_field`` / ``answer_field`` / ``image_field`` (default question, answer,
  images) — this project's own layout and the synthetic task's.
- ``easyr1``: EasyR1 / MM-Eureka style — ``problem`` (``<image>`` markers), ``answer``, ``images``
  (paths or embedded ``{"bytes": ...}``; the column may be absent for text-only sets).
- ``chat``: the SRPO authors' released RL set — ``message``, a chat as a JSON string (or a list),
  whose user content is a list of ``{"type": "image", "image": "file:///..."}`` and
  ``{"type": "text", "text": ...}`` parts, and ``data.answer_field`` with the gold.
- ``sharegpt``: LLaMA-Factory / ShareGPT — ``messages`` or ``conversations``, turns with
  ``role``/``content`` or ``from``/``value``, ``<image>`` markers in the text, an ``images`` list.
- ``llava``: LLaVA — ``conversations`` with ``from`` human/gpt and ``value``, one ``image`` path.

A conversation must be one exchange: an optional system turn, one user turn, and at most one
assistant turn after it (otherwise ``bad_conversation``). Its answer is ``data.answer_field``
when the file has that column (the gold of an RL set), else the assistant turn; for SFT
(``answer_from="response"``) it is always the assistant turn — the target response.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

FORMATS = ("rows", "chat", "sharegpt", "llava", "easyr1")
"""Every value of ``data.format`` except ``auto``."""
IMAGE_MARKER = "<image>"
"""Marks where an image goes in a question (LLaVA-style data); stripped from the prompt."""
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}
"""Turn roles of chat / ShareGPT / LLaVA data -> system | user | assistant."""

type AnswerFrom = Literal["gold", "response"]


class DataError(ValueError):
    """The prompt data cannot be used as configured. The message names the file and/or config field."""


class Skip(Exception):
    """A row is unusable for `reason` (one of ``rl_dataset.REASONS``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Columns:
    """The columns a format reads (None: the format has no such column)."""

    question: str | None
    answer: str | None
    images: str | None
    conversation: str | None = None
    required: tuple[str, ...] = ()
    """Columns the file must have."""


@dataclass(frozen=True)
class RawPrompt:
    """One row in the common shape, before its image values are resolved and checked."""

    system: str | None
    question: Any
    """The question; a str for every format but ``rows`` / ``easyr1``, whose value is checked later."""
    answer: Any
    images: list[Any]


def detect_format(columns: Collection[str], question_field: str = "question") -> str:
    """The format of a file with these columns (``rows`` when no other format's columns are there)."""
    cols = set(columns)
    if question_field in cols:
        return "rows"
    if "message" in cols:
        return "chat"
    if "conversations" in cols and "image" in cols and "images" not in cols:
        return "llava"
    if "messages" in cols or "conversations" in cols:
        return "sharegpt"
    if "problem" in cols:
        return "easyr1"
    return "rows"


def columns_of(fmt: str, file_columns: Collection[str], cfg: Any) -> Columns:
    """The columns format `fmt` reads from a file with `file_columns` (``cfg``: the data config)."""
    cols = set(file_columns)
    if fmt == "rows":
        names = (cfg.question_field, cfg.answer_field, cfg.image_field)
        return Columns(*names, required=names)
    if fmt == "easyr1":
        return Columns("problem", cfg.answer_field, "images", required=("problem", cfg.answer_field))
    gold = cfg.answer_field if cfg.answer_field in cols else None
    if fmt == "chat":
        return Columns(None, gold, None, "message", required=("message",))
    conversation = "messages" if "messages" in cols else "conversations"
    if fmt == "llava":
        return Columns(None, gold, "image" if "image" in cols else "images", "conversations", ("conversations",))
    if fmt == "sharegpt":
        return Columns(None, gold, "images", conversation, (conversation,))
    raise DataError(f"data.format={fmt!r} is not a format; choose auto or one of {', '.join(FORMATS)}")


def _images_of(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


def _part_image(part: dict[str, Any]) -> Any:
    """The image value of one chat content part of type image / image_url."""
    value = part.get("image", part.get("image_url", part.get("url", part.get("path"))))
    if isinstance(value, dict):  # OpenAI style {"url": ...}, or {"bytes": ..., "path": ...}
        return value.get("url", value) if "url" in value else value
    if value is None:
        raise Skip("bad_conversation")
    return value


def _content_text(content: Any) -> tuple[str, list[Any]]:
    """A turn's content -> (text with ``<image>`` markers at its image parts, those parts' images)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise Skip("bad_conversation")
    text, images = "", []
    for part in content:
        if isinstance(part, str):
            text += part
            continue
        if not isinstance(part, dict):
            raise Skip("bad_conversation")
        kind = part.get("type", "text" if "text" in part else "image")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise Skip("bad_conversation")
            text += part["text"]
        elif kind in ("image", "image_url"):
            text += IMAGE_MARKER
            images.append(_part_image(part))
        else:
            raise Skip("bad_conversation")
    return text, images


def parse_conversation(value: Any) -> tuple[str | None, str, list[Any], str | None]:
    """A conversation -> (system text, user text, images of the user's content parts, assistant text).

    Args:
        value: A list of turns, or that list as a JSON string.

    Raises:
        Skip: ``bad_conversation`` — not JSON, not a list of turns, an unknown role, or not one
            [system] user [assistant] exchange.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Skip("bad_conversation") from None
    if not isinstance(value, list) or not value:
        raise Skip("bad_conversation")
    turns: list[tuple[str, Any]] = []
    for turn in value:
        if not isinstance(turn, dict):
            raise Skip("bad_conversation")
        role = ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
        if role is None:
            raise Skip("bad_conversation")
        turns.append((role, turn.get("content", turn.get("value"))))
    roles = [r for r, _ in turns]
    if roles not in (["user"], ["user", "assistant"], ["system", "user"], ["system", "user", "assistant"]):
        raise Skip("bad_conversation")
    contents = dict(turns)
    system = None
    if "system" in contents:
        system, extra = _content_text(contents["system"])
        if extra:
            raise Skip("bad_conversation")
    user, images = _content_text(contents["user"])
    assistant = None
    if "assistant" in contents:
        assistant, extra = _content_text(contents["assistant"])
        if extra:
            raise Skip("bad_conversation")
    return system, user, images, assistant


def to_raw_prompt(raw: dict[str, Any], fmt: str, columns: Columns, answer_from: AnswerFrom) -> RawPrompt:
    """One raw row of format `fmt` (read through `columns`) in the common shape.

    Raises:
        Skip: ``bad_conversation`` (see ``parse_conversation``).
    """
    if columns.conversation is None:  # rows, easyr1: every column is named
        question, answer, images = (
            raw.get(c) if c else None for c in (columns.question, columns.answer, columns.images)
        )
        return RawPrompt(None, question, answer, _images_of(images))
    system, question, images, assistant = parse_conversation(raw.get(columns.conversation))
    if columns.images is not None:
        images = images + _images_of(raw.get(columns.images))
    gold = columns.answer if answer_from == "gold" else None
    answer = raw.get(gold) if gold is not None else assistant
    return RawPrompt(system, question, answer, images)
