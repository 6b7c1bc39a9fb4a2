"""The optional LLM judge: the OpenAI-compatible request it sends (to a local fake server), verdict
parsing, failures giving no verdict, and judge scores kept apart from the rule-based ones."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from srpo_mcore.eval.items import EvalItem
from srpo_mcore.eval.judge import JudgeConfig, LLMJudge, judge_messages, parse_verdict
from srpo_mcore.eval.run import SampleResult, markdown_table, summarize

ITEM = EvalItem("7", "mathverse", "testmini", "Text Lite", "Find x.", (), "2\\sqrt{3}", "expression")


class FakeJudge(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        answer = body["messages"][1]["content"].split("Model's answer: ")[1]
        reply = "Yes." if answer.startswith("3.464") else ("maybe" if answer.startswith("?") else "no")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    FakeJudge.seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/"
    httpd.shutdown()
    httpd.server_close()


def test_llm_judge_against_fake_server(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_JUDGE_KEY", "k123")
    judge = LLMJudge(JudgeConfig(server, "judge-model", api_key_env="FAKE_JUDGE_KEY", timeout_s=5))
    assert judge(ITEM, "3.4641", "...") is True
    assert judge(ITEM, "4", "...") is False
    assert judge(ITEM, "?", "...") is None and judge.failures == 1
    first = FakeJudge.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k123"
    assert first["body"]["model"] == "judge-model" and first["body"]["temperature"] == 0.0
    assert "Reference answer: 2\\sqrt{3}" in first["body"]["messages"][1]["content"]


def test_unreachable_judge_gives_no_verdict() -> None:
    judge = LLMJudge(JudgeConfig("http://127.0.0.1:9/v1", "m", timeout_s=1))
    assert judge(ITEM, "1", "...") is None and judge.failures == 1


def test_messages_and_parse() -> None:
    mc = EvalItem("1", "mathvista", "testmini", "c", "Q?", (), "B", "choice", options=("x", "y"))
    assert "Reference answer: (B) y" in judge_messages(mc, "y", "")[1]["content"]
    long = "a" * 5000 + "b" * 1997 + "END"  # no extracted answer: the judge sees the last 2000 chars
    assert f"Model's answer: {'b' * 1997}END\n" in judge_messages(ITEM, None, long)[1]["content"]
    assert [parse_verdict(t) for t in ("Yes", "**no**", "YES.", "", "perhaps yes")] == [True, False, True, None, None]


def result(correct: bool, judged: bool | None) -> SampleResult:
    return SampleResult(
        "1", "mathverse", "testmini", "c", "p", "r", "stop", 1, "a", "a", "answer_block", "g", "g", "expression",
        correct, correct, "math", judged,
    )  # fmt: skip


def test_judge_scores_reported_apart() -> None:
    s = summarize([result(True, True), result(False, True), result(False, False), result(False, None)])
    b = s["benchmarks"]["mathverse"]
    assert (b["accuracy"], b["judge_accuracy"]) == (25.0, 50.0)
    assert "| this run, LLM judge (reported apart) | 50.0 |" in markdown_table(s)
    assert "judge_accuracy" not in summarize([result(True, None)])["benchmarks"]["mathverse"]
