"""Optional LLM judge through an OpenAI-compatible ``/chat/completions`` endpoint (off by default).

Owns: asking a judge model whether a response's final answer matches the gold answer, for the
answers the rules judged wrong (free-form answers that the rules cannot equate, e.g. a decimal
approximation of ``2\\sqrt{3}``). Its verdicts are reported *separately* from the rule-based
score (``judge_accuracy``), never mixed into it. Standard library HTTP only; a failed or unclear
call gives no verdict (None), counted as wrong in the judge score.

Does not own the rule-based verdict (``score``).
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass

from srpo_mcore.eval.items import EvalItem

JUDGE_INSTRUCTIONS = (
    "You grade answers to math and science questions. Given the question, the reference answer "
    "and a model's answer, reply with one word: yes if the model's final answer is equivalent to "
    "the reference answer (same value, same choice, or the same expression up to notation), "
    "otherwise no."
)
RESPONSE_TAIL_CHARS = 2000
"""When no answer was extracted, the judge sees the end of the response."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge model is served."""

    url: str
    """Base URL of an OpenAI-compatible API, e.g. ``http://localhost:8000/v1``."""
    model: str
    """The judge model's name at that endpoint."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (unset: no Authorization header)."""
    timeout_s: float = 60.0


def judge_messages(item: EvalItem, final_answer: str | None, response: str) -> list[dict[str, str]]:
    """The chat messages asking whether `final_answer` (or the response's end) matches the gold."""
    answer = final_answer if final_answer is not None else response[-RESPONSE_TAIL_CHARS:]
    gold = f"({item.gold}) {item.gold_text}" if item.answer_type == "choice" and item.options else item.gold
    user = f"Question:\n{item.question}\n\nReference answer: {gold}\n\nModel's answer: {answer}\n\nEquivalent?"
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> bool | None:
    """``yes`` -> True, ``no`` -> False (first word, case and punctuation ignored), else None."""
    words = text.strip().lower().split()
    first = words[0].strip(".,!:;*\"'") if words else ""
    return {"yes": True, "no": False}.get(first)


class LLMJudge:
    """Callable judge: ``judge(item, final_answer, response) -> bool | None``."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.failures = 0

    def __call__(self, item: EvalItem, final_answer: str | None, response: str) -> bool | None:
        body = {"model": self.cfg.model, "messages": judge_messages(item, final_answer, response), "temperature": 0.0}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(
            self.cfg.url.rstrip("/") + "/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                content = json.loads(resp.read())["choices"][0]["message"]["content"]
        except Exception:
            self.failures += 1
            return None
        verdict = parse_verdict(str(content))
        if verdict is None:
            self.failures += 1
        return verdict
