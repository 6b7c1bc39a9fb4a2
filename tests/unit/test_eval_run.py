"""``evaluate`` with a scripted engine (no vLLM): prompts carry the images and the system prompt,
known responses give hand-computed final/first accuracies per benchmark and category, a prompt
over the context length is counted wrong without generating, and the outputs round-trip."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from srpo_mcore.data.system_prompts import PLAIN_SYSTEM_PROMPT, SRPO_SYSTEM_PROMPT
from srpo_mcore.eval.benchmarks import load_items
from srpo_mcore.eval.fixtures import write_fixture_root
from srpo_mcore.eval.items import EvalItem
from srpo_mcore.eval.run import evaluate, markdown_table, read_samples, summarize, write_outputs
from srpo_mcore.rollout.types import RolloutRequest, RolloutSample

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def srpo(first: str, final: str) -> str:
    return (
        f"<think>t</think><answer>\\boxed{{{first}}}</answer><reflection>r</reflection>"
        f"<think>t</think><answer>\\boxed{{{final}}}</answer>"
    )


class ScriptedEngine:
    """Answers each request (by key) with a scripted response; records what it was asked."""

    def __init__(self, responses: dict[str, str]) -> None:
        self.responses = responses
        self.requests: list[RolloutRequest] = []
        self.calls: list[dict[str, Any]] = []

    def generate(self, requests: Sequence[RolloutRequest], **kw: Any) -> list[list[RolloutSample]]:
        self.requests.extend(requests)
        self.calls.append(kw)
        return [
            [RolloutSample(i, r.key, [], [1, 2, 3], [0.0] * 3, "stop", self.responses.get(r.key, "no idea"))]
            for i, r in enumerate(requests)
        ]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint: Any) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint("gqa"))


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[EvalItem]:
    root = write_fixture_root(tmp_path_factory.mktemp("evaldata"))
    return load_items("mathvista", "testmini", root) + load_items("mmmu_pro", "standard (10 options)", root)


def test_evaluate_scores_and_summary(items: list[EvalItem], processor: Any, tmp_path: Path) -> None:
    # mathvista: 1 (choice B) first wrong -> final right; 2 (1200) right both; 3 (3.5 cm) wrong both.
    # mmmu_pro: Art (C) plain single answer right; Math (J) first right -> final wrong.
    engine = ScriptedEngine(
        {
            "1": srpo("A", "B"),
            "2": srpo("1,200", "1200"),
            "3": srpo("4", "4.2"),
            "test_Art_1": "<think>t</think><answer>C</answer>",
            "test_Math_2": srpo("J", "I"),
        }
    )
    results = evaluate(engine, items, processor.tokenizer, max_tokens=7, batch_size=2, progress=False)
    assert engine.calls == [{"greedy": True, "max_tokens": 7}] * 3
    assert [(r.id, r.correct, r.first_correct) for r in results] == [
        ("1", True, False),
        ("2", True, True),
        ("3", False, False),
        ("test_Art_1", True, True),
        ("test_Math_2", False, True),
    ]
    req = engine.requests[3]
    assert req.prompt.count(IMG) == len(req.images) == 2 and SRPO_SYSTEM_PROMPT in req.prompt

    s = summarize(results)
    vista, mmmu = s["benchmarks"]["mathvista"], s["benchmarks"]["mmmu_pro"]
    assert (vista["accuracy"], vista["first_accuracy"]) == (66.67, 33.33)
    assert (mmmu["accuracy"], mmmu["first_accuracy"]) == (50.0, 100.0)
    cats = vista["splits"]["testmini"]["categories"]
    assert cats["geometry problem solving"] == {
        "n": 2,
        "accuracy": 50.0,
        "first_accuracy": 0.0,
        "no_answer": 0.0,
        "truncated": 0.0,
        "prompt_too_long": 0,
    }
    table = markdown_table(s)
    assert "| **this run** (final answer) | **66.7** | **50.0** |" in table and "| SRPO-7B | 75.8 | 42.3 |" in table

    out = write_outputs(tmp_path / "out", results, s, {"command": "x"})
    assert read_samples(out / "samples.jsonl") == results
    assert json.loads((out / "summary.json").read_text())["benchmarks"] == json.loads(json.dumps(s["benchmarks"]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_prompt_too_long_is_wrong_and_not_generated(items: list[EvalItem], processor: Any) -> None:
    engine = ScriptedEngine({"1": "<answer>B</answer>", "2": "<answer>1200</answer>"})
    short_limit = 180  # plain prompts: the two MathVista questions take 148 and 128 tokens, MMMU-Pro Art 220
    chosen = items[:2] + items[3:4]
    kw: dict[str, Any] = {"prompt": "plain", "progress": False, "processor": processor, "max_model_len": short_limit}
    results = evaluate(engine, chosen, processor.tokenizer, **kw)
    assert PLAIN_SYSTEM_PROMPT in engine.requests[0].prompt
    assert [r.key for r in engine.requests] == ["1", "2"]
    assert [(r.finish_reason, r.correct) for r in results] == [
        ("stop", True),
        ("stop", True),
        ("prompt_too_long", False),
    ]


def test_cli_errors_before_starting_an_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from srpo_mcore.eval.__main__ import main

    assert main(["--model", "m", "--data-root", str(tmp_path / "nope"), "--benchmarks", "mathvista"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["--model", "m", "--data-root", str(tmp_path), "--benchmarks", "mathvista:dev"]) == 2
    assert "mathvista has no split 'dev'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "data root layout" in capsys.readouterr().out


def test_judge_asked_only_about_rule_wrong_answers(items: list[EvalItem], processor: Any) -> None:
    engine = ScriptedEngine({"1": "<answer>B</answer>", "2": "<answer>1,199</answer>", "3": "<answer>3.5</answer>"})
    asked: list[tuple[str, str | None]] = []

    def judge(item: EvalItem, final: str | None, response: str) -> bool | None:
        asked.append((item.id, final))
        return item.id == "2"  # a lenient judge

    results = evaluate(engine, items[:3], processor.tokenizer, progress=False, judge=judge)
    assert asked == [("2", "1,199")]
    assert [(r.correct, r.judge_correct) for r in results] == [(True, True), (False, True), (True, True)]
    assert summarize(results)["benchmarks"]["mathvista"]["accuracy"] == 66.67
