"""Teachers that write the reflection and the revised second attempt of one stage-1 item.

Owns: the ``Teacher`` protocol (``reflect(item) -> TeacherReply``), the teacher prompt (question,
the policy's reasoning and answer, the gold answer and whether the policy got it right — see
shared/SRPO.md, stage 1), the JSON schema of a reply and its validation, and two teachers:

- ``OpenAITeacher``: any OpenAI-compatible chat-completions endpoint through the official
  ``openai`` client (OpenAI, a ``vllm serve`` of a local model, ...). The reply is constrained by
  ``response_format={"type": "json_schema", ...}`` (vLLM enforces it with guided decoding) and
  still validated here; rate limits, timeouts, connection/server errors and malformed or invalid
  replies are retried with exponential backoff, and in the end a ``TeacherError`` says why not.
- ``TemplateTeacher``: deterministic and offline (the laptop demo and tests): a templated
  reflection and a second attempt that states the gold answer, which it is given like the paper's
  teacher.

The reply's strings may contain no SRPO tag characters (``<``/``>``) and no control characters:
the schema forbids them (so guided decoding cannot produce them) and validation rejects them (so
a backend that ignores the schema cannot break the five-block format).

Does not own: which items are asked (``build``) or assembling the SFT response (``items``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

FIELDS = ("reflection", "second_think", "second_answer")
"""Keys of a teacher reply, in the order they appear in the response."""
DEFAULT_MAX_CHARS = {"reflection": 2000, "second_think": 4000, "second_answer": 200}
"""Longest allowed value per field (the schema's length bound; guided decoding stops there)."""
_FORBIDDEN_RE = re.compile(r"[\x00-\x1f<>]")
"""Control characters (raw ones make JSON invalid) and tag brackets (they would break the format)."""


class TeacherError(RuntimeError):
    """The teacher gave no usable reply. ``reason`` is a short key for the failure table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TeacherItem:
    """What the teacher sees of one item."""

    id: str
    question: str
    first_think: str
    """The policy's first reasoning (content of its ``<think>``)."""
    first_answer: str
    """The policy's first answer (content of its ``<answer>``)."""
    gold: str
    first_correct: bool
    images: tuple[Any, ...] = ()
    """PIL images of the question (sent to a multimodal teacher when it asks for them)."""


@dataclass(frozen=True)
class TeacherReply:
    """A validated reply: every field non-empty, without tag brackets or control characters."""

    reflection: str
    second_think: str
    second_answer: str

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in FIELDS}


class Teacher(Protocol):
    """Writes a reflection and a second attempt for one item; raises ``TeacherError`` on failure."""

    name: str

    def reflect(self, item: TeacherItem) -> TeacherReply: ...


# --------------------------------------------------------------------------------------------
# Prompt, schema, validation
# --------------------------------------------------------------------------------------------

TEACHER_SYSTEM_PROMPT = (
    "You are an expert teacher of visual math and science reasoning. A student model answered a "
    "question; you see its reasoning, its answer and the correct answer. Write a reflection on the "
    "student's attempt: point out logical flaws, missing assumptions, what could be clearer and how "
    "to improve. If the student was right, the reflection streamlines the reasoning and removes "
    "redundancy; if it was wrong, it diagnoses the error and says how to fix it. Then write a revised "
    "second attempt: its reasoning and its final answer, which must be the correct answer. "
    "Do not reveal that you were given the correct answer. Do not use the characters < or >. "
    'Reply with JSON only: {"reflection": "...", "second_think": "...", "second_answer": "..."}.'
)


def teacher_prompt(item: TeacherItem) -> str:
    """The user message text for `item` (the images, if sent, come before it)."""
    verdict = "correct" if item.first_correct else "incorrect"
    return (
        f"Question:\n{item.question.strip()}\n\n"
        f"Student's reasoning:\n{item.first_think.strip()}\n\n"
        f"Student's answer: {item.first_answer.strip()}\n"
        f"Correct answer: {item.gold.strip()}\n"
        f"The student's answer is {verdict}."
    )


def reply_schema(max_chars: dict[str, int] | None = None) -> dict[str, Any]:
    """JSON schema of a reply: the three fields, required, non-empty, bounded, no ``<>``/controls.

    The bounds live in ``pattern`` (``{1,N}``) rather than ``minLength``/``maxLength`` because
    vLLM's guided decoding otherwise lets raw control characters into strings (invalid JSON).
    """
    limits = {**DEFAULT_MAX_CHARS, **(max_chars or {})}
    props = {k: {"type": "string", "pattern": f"^[^\\x00-\\x1f<>]{{1,{limits[k]}}}$"} for k in FIELDS}
    return {"type": "object", "properties": props, "required": list(FIELDS), "additionalProperties": False}


def parse_reply(text: str | None) -> TeacherReply:
    """Validate a teacher's raw reply text.

    Raises:
        TeacherError: ``malformed_json`` (not a JSON object) or ``invalid_reply`` (a field missing,
            not a string, empty, or holding ``<``, ``>`` or a control character).
    """
    try:
        obj = json.loads(text or "")
    except json.JSONDecodeError as e:
        raise TeacherError("malformed_json", f"{e}; reply starts {str(text)[:80]!r}") from None
    if not isinstance(obj, dict):
        raise TeacherError("malformed_json", f"expected a JSON object, got {type(obj).__name__}")
    values = {}
    for key in FIELDS:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise TeacherError("invalid_reply", f"field {key!r} is missing or empty")
        if _FORBIDDEN_RE.search(value):
            raise TeacherError("invalid_reply", f"field {key!r} holds '<', '>' or a control character")
        values[key] = value.strip()
    return TeacherReply(**values)


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------


class TemplateTeacher:
    """Deterministic offline teacher: a templated reflection and a second attempt stating the gold."""

    name = "template"

    def reflect(self, item: TeacherItem) -> TeacherReply:
        gold = item.gold.strip()
        if item.first_correct:
            reflection = (
                f"The first attempt reaches the right result, {gold}. The reasoning can be shorter: "
                "state what the image shows, apply the one step the question needs, and stop."
            )
            think = f"Reading the image again and applying the question's step directly gives {gold}."
        else:
            reflection = (
                f"The first answer, {_flat(item.first_answer)}, does not follow from the image. "
                "The reasoning misreads what is shown; read each element carefully, redo the step the "
                "question asks for, and check the result before answering."
            )
            think = f"Reading each element of the image carefully and redoing the step gives {gold}."
        return TeacherReply(reflection, think, f"\\boxed{{{gold}}}")


def _flat(text: str, limit: int = 80) -> str:
    """`text` on one line without tag brackets, shortened to `limit` characters."""
    flat = " ".join(_FORBIDDEN_RE.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


RETRYABLE_REASONS = ("rate_limit", "timeout", "connection", "server_error", "malformed_json", "invalid_reply")
"""Failures worth another try; any other API error (bad request, auth, ...) fails at once."""


@dataclass
class RetryPolicy:
    """Exponential backoff: ``base_s * 2**attempt`` (capped), times a jitter in [0.5, 1]."""

    attempts: int = 5
    base_s: float = 1.0
    max_s: float = 30.0
    seed: int = 0
    sleep: Callable[[float], None] = time.sleep
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        self._rng = random.Random(self.seed)

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * 2**attempt) * self._rng.uniform(0.5, 1.0)


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible chat-completions endpoint, JSON enforced by schema.

    Args:
        base_url: Endpoint root, e.g. ``http://127.0.0.1:8000/v1`` (default: ``OPENAI_BASE_URL``,
            else OpenAI's).
        model: Model name (default: ``SRPO_TEACHER_MODEL``).
        api_key: Key (default: ``OPENAI_API_KEY``; a local server accepts any, ``"EMPTY"`` is used).
        max_tokens: Completion token bound (keep it above the schema's character bounds' tokens).
        temperature: Sampling temperature (0 = greedy, reproducible reruns).
        seed: Base of the request seeds (backends that honour them reproduce sampled replies):
            attempt k of an item sends ``request_seed(seed, item.id) + k``, so items do not share
            their randomness and a retry at temperature > 0 is not a replay.
        timeout_s: Per-request timeout.
        retry: Backoff policy over rate limits, timeouts and malformed replies.
        send_images: Attach the question's images as PNG data URLs (for a multimodal teacher).
        max_chars: Per-field character bounds of the schema (see ``DEFAULT_MAX_CHARS``).
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 2048,
        temperature: float = 0.0,
        seed: int = 0,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        send_images: bool = True,
        max_chars: dict[str, int] | None = None,
    ) -> None:
        from openai import OpenAI

        model = model or os.environ.get("SRPO_TEACHER_MODEL")
        if not model:
            raise ValueError("OpenAITeacher needs a model name (--teacher-model or SRPO_TEACHER_MODEL)")
        self.model = model
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # max_retries=0: the backoff below is ours, so every retry is visible and counted.
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.retry = retry or RetryPolicy()
        self.send_images = send_images
        self.schema = reply_schema(max_chars)
        self.retries: dict[str, int] = {}
        """Retried failures by reason (for the summary)."""

    def messages(self, item: TeacherItem) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if self.send_images:
            content += [{"type": "image_url", "image_url": {"url": _data_url(im)}} for im in item.images]
        content.append({"type": "text", "text": teacher_prompt(item)})
        return [{"role": "system", "content": TEACHER_SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def reflect(self, item: TeacherItem) -> TeacherReply:
        messages = self.messages(item)
        last: TeacherError | None = None
        for attempt in range(self.retry.attempts):
            try:
                return parse_reply(self._complete(messages, request_seed(self.seed, item.id) + attempt))
            except TeacherError as e:
                if e.reason not in RETRYABLE_REASONS:
                    raise
                last = e
                self.retries[e.reason] = self.retries.get(e.reason, 0) + 1
                if attempt + 1 < self.retry.attempts:
                    self.retry.sleep(self.retry.delay(attempt))
        assert last is not None
        raise TeacherError(last.reason, f"gave up after {self.retry.attempts} attempts; last: {last.detail}")

    def _complete(self, messages: Sequence[dict[str, Any]], seed: int) -> str | None:
        """One request; API failures become ``TeacherError`` with a reason key."""
        import openai

        try:
            response = self.client.chat.completions.create(  # type: ignore[call-overload]
                model=self.model,
                messages=messages,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "srpo_reflection", "schema": self.schema, "strict": True},
                },
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                seed=seed,
            )
        except openai.RateLimitError as e:
            raise TeacherError("rate_limit", str(e)) from None
        except openai.APITimeoutError as e:  # a subclass of APIConnectionError: test it first
            raise TeacherError("timeout", str(e)) from None
        except openai.APIConnectionError as e:
            raise TeacherError("connection", str(e)) from None
        except openai.InternalServerError as e:
            raise TeacherError("server_error", str(e)) from None
        except openai.APIError as e:
            raise TeacherError("api_error", str(e)) from None
        if not response.choices:
            raise TeacherError("malformed_json", "reply has no choices")
        choice = response.choices[0]
        if choice.finish_reason == "length":
            raise TeacherError("malformed_json", f"reply cut at max_tokens={self.max_tokens}")
        return choice.message.content


def request_seed(seed: int, item_id: str) -> int:
    """The first request seed of an item: depends only on the run seed and the item id."""
    digest = hashlib.sha256(f"teacher/{seed}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:3], "little")


def _data_url(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_teacher(
    kind: str, *, base_url: str | None = None, model: str | None = None, seed: int = 0, **kwargs: Any
) -> Teacher:
    """``template`` or ``openai`` (the others keywords go to ``OpenAITeacher``)."""
    if kind == "template":
        return TemplateTeacher()
    if kind == "openai":
        return OpenAITeacher(base_url=base_url, model=model, seed=seed, **kwargs)
    raise ValueError(f"unknown teacher {kind!r}; choose template or openai")
