"""The OpenAI-compatible teacher against a real local HTTP server with scripted replies."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from srpo_mcore.reflection.teacher import (
    OpenAITeacher,
    RetryPolicy,
    TeacherError,
    TeacherItem,
    TeacherReply,
    parse_reply,
    reply_schema,
    request_seed,
)

GOOD = {"reflection": "Recount the circles.", "second_think": "There are 3 circles.", "second_answer": "\\boxed{3}"}


@dataclass
class Script:
    """Replies the server gives, in order: (status, content or body dict, delay seconds, finish_reason)."""

    replies: list[tuple[int, Any, float, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)


def completion(content: str, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "teacher",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append({"path": self.path, "body": body})
            status, payload, delay, finish = script.replies.pop(0)
            time.sleep(delay)
            if status == 200 and isinstance(payload, str):
                payload = completion(payload, finish)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out and left
                self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def item() -> TeacherItem:
    image = Image.new("RGB", (28, 28), (255, 0, 0))
    return TeacherItem("q1", "How many circles?", "I see four round shapes.", "\\boxed{4}", "3", False, (image,))


def teacher(url: str, sleeps: list[float], attempts: int = 5, **kw: Any) -> OpenAITeacher:
    retry = RetryPolicy(attempts=attempts, base_s=0.01, max_s=0.05, sleep=sleeps.append)
    return OpenAITeacher(base_url=url, model="teacher", api_key="k", retry=retry, **kw)


def test_retries_rate_limit_and_bad_replies_then_succeeds(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [
        (429, {"error": {"message": "slow down", "type": "rate_limit"}}, 0.0, "stop"),
        (200, '{"reflection": "cut', 0.0, "stop"),  # malformed JSON
        (200, json.dumps({**GOOD, "second_think": " "}), 0.0, "stop"),  # empty field
        (200, json.dumps({**GOOD, "reflection": "use <think> tags"}), 0.0, "stop"),  # a tag would break the format
        (200, json.dumps(GOOD), 0.0, "stop"),
    ]
    sleeps: list[float] = []
    t = teacher(url, sleeps)
    assert t.reflect(item()) == TeacherReply(**GOOD)
    assert t.retries == {"rate_limit": 1, "malformed_json": 1, "invalid_reply": 2}
    assert len(sleeps) == 4 and all(0 < s <= 0.05 for s in sleeps)
    assert len(script.requests) == 5
    base = request_seed(0, "q1")
    assert [r["body"]["seed"] for r in script.requests] == [base + k for k in range(5)]  # a retry is no replay
    assert request_seed(0, "q2") != base
    body = script.requests[-1]["body"]
    assert script.requests[-1]["path"] == "/v1/chat/completions"
    assert body["model"] == "teacher" and body["temperature"] == 0.0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == reply_schema()
    user = body["messages"][1]["content"]
    assert user[0]["type"] == "image_url" and user[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = user[-1]["text"]
    for part in ("How many circles?", "I see four round shapes.", "\\boxed{4}", "Correct answer: 3", "incorrect"):
        assert part in text


def test_gives_up_with_the_reason(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(200, "not json", 0.0, "stop")] * 2 + [(200, json.dumps(GOOD), 0.0, "length")]
    sleeps: list[float] = []
    with pytest.raises(TeacherError) as err:
        teacher(url, sleeps, attempts=3).reflect(item())
    assert err.value.reason == "malformed_json" and "3 attempts" in str(err.value)
    assert "max_tokens" in err.value.detail  # the last one was cut off
    assert len(script.requests) == 3 and len(sleeps) == 2


def test_server_error_is_retried_bad_request_is_not(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(500, {"error": {"message": "boom"}}, 0.0, "stop"), (200, json.dumps(GOOD), 0.0, "stop")]
    t = teacher(url, [])
    assert t.reflect(item()).second_answer == "\\boxed{3}"
    assert t.retries == {"server_error": 1}
    script.replies = [(400, {"error": {"message": "bad schema"}}, 0.0, "stop"), (200, json.dumps(GOOD), 0.0, "stop")]
    with pytest.raises(TeacherError) as err:
        t.reflect(item())
    assert err.value.reason == "api_error"
    assert len(script.requests) == 3  # no retry after the 400


def test_timeout_is_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(200, json.dumps(GOOD), 1.5, "stop"), (200, json.dumps(GOOD), 0.0, "stop")]
    t = teacher(url, [], timeout_s=0.5, send_images=False)
    assert t.reflect(item()) == TeacherReply(**GOOD)
    assert t.retries == {"timeout": 1}
    assert all(part["type"] == "text" for part in script.requests[-1]["body"]["messages"][1]["content"])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "malformed_json"),
        ("", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        ('{"reflection": "a", "second_think": "b"}', "invalid_reply"),
        ('{"reflection": "a", "second_think": "b", "second_answer": 3}', "invalid_reply"),
        ('{"reflection": "a\\u0007", "second_think": "b", "second_answer": "3"}', "invalid_reply"),
        ('{"reflection": "a", "second_think": "x > 2", "second_answer": "3"}', "invalid_reply"),
    ],
)
def test_parse_reply_rejects(text: str | None, reason: str) -> None:
    with pytest.raises(TeacherError) as err:
        parse_reply(text)
    assert err.value.reason == reason


def test_parse_reply_strips_and_ignores_extra_keys() -> None:
    reply = parse_reply(json.dumps({"reflection": " r ", "second_think": "t", "second_answer": "3", "x": 1}))
    assert reply == TeacherReply("r", "t", "3")


def test_schema_bounds_every_field() -> None:
    schema = reply_schema({"second_answer": 20})
    assert schema["required"] == ["reflection", "second_think", "second_answer"]
    assert schema["properties"]["second_answer"]["pattern"].endswith("{1,20}$")
    assert schema["additionalProperties"] is False
