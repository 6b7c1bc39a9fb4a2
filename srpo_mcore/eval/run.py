"""Running an evaluation: prompt, generate greedily, extract, score, summarise, write.

Owns: ``evaluate`` (the library call, also for the RL trainer on a held-out subset: it takes a
live ``RolloutEngine``), ``score_response`` (rescoring a recorded response gives the same verdict),
the summary (accuracy per benchmark split and per official category, final-answer and
first-answer accuracy, the answer-extraction sources), the table next to the paper's numbers, and
writing ``samples.jsonl``, ``summary.json`` and ``summary.md`` into an output directory atomically.

Does not own: reading benchmarks (``benchmarks``), the rules of extraction (``extract``) and
scoring (``score``), or vLLM (``srpo_mcore.rollout.engine``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from srpo_mcore.atomic_dir import atomic_dir
from srpo_mcore.data.rl_dataset import PromptRow, prompt_token_count, to_request
from srpo_mcore.eval.extract import Extraction, extract
from srpo_mcore.eval.items import EvalItem
from srpo_mcore.eval.score import VERIFY_TIMEOUT_S, Score, score_answer
from srpo_mcore.rollout.types import RolloutRequest

PAPER_SCORES: dict[str, dict[str, float]] = {
    "Qwen2.5-VL-7B base": {"mathvista": 68.2, "mathverse": 46.3, "mathvision": 25.1, "mmmu_pro": 36.9},
    "+ GRPO (same 37K data)": {"mathvista": 72.3, "mathverse": 52.9, "mathvision": 30.3, "mmmu_pro": 39.9},
    "SRPO-7B": {"mathvista": 75.8, "mathverse": 55.8, "mathvision": 32.9, "mmmu_pro": 42.3},
    "Qwen2.5-VL-32B base": {"mathvista": 74.7, "mathverse": 48.5, "mathvision": 38.4, "mmmu_pro": 49.5},
    "SRPO-32B": {"mathvista": 78.5, "mathverse": 58.9, "mathvision": 39.6, "mmmu_pro": 51.3},
}
"""Accuracy (%) the SRPO paper reports (shared/SRPO.md, "Evaluation the paper reports")."""

BENCH_ORDER = ("mathvista", "mathverse", "mathvision", "mmmu_pro")


@dataclass(frozen=True)
class SampleResult:
    """One scored response: what ``samples.jsonl`` holds per line."""

    id: str
    benchmark: str
    split: str
    category: str
    prompt: str
    response: str
    finish_reason: str
    response_tokens: int
    final_answer: str | None
    first_answer: str | None
    answer_source: str
    """answer_block | boxed | rule | none (see ``extract``)."""
    gold: str
    gold_text: str
    answer_type: str
    correct: bool
    """The final answer is right (the reported score)."""
    first_correct: bool
    """The first (pre-reflection) answer is right."""
    method: str
    """How the final answer was judged (see ``score.Score``)."""
    judge_correct: bool | None = None
    """With an LLM judge: rule-correct, or judged equivalent by the judge; None without a judge."""


def score_response(
    item: EvalItem, response: str, *, timeout_s: float = VERIFY_TIMEOUT_S
) -> tuple[Extraction, Score, Score]:
    """Extract and score one response: (extraction, verdict on the final answer, on the first)."""
    ex = extract(response)
    final = score_answer(item, ex.final, timeout_s=timeout_s)
    first = final if ex.first == ex.final else score_answer(item, ex.first, timeout_s=timeout_s)
    return ex, final, first


def build_request(item: EvalItem, tokenizer: Any, prompt: str) -> RolloutRequest:
    """The chat prompt of `item` (system prompt of `prompt`: srpo | plain | none) with its images."""
    row = PromptRow(id=item.id, question=item.question, answer=item.gold, images=item.images)
    return to_request(row, tokenizer, prompt)


def evaluate(
    engine: Any,
    items: Sequence[EvalItem],
    tokenizer: Any,
    *,
    prompt: str = "srpo",
    max_tokens: int = 4096,
    batch_size: int = 64,
    timeout_s: float = VERIFY_TIMEOUT_S,
    progress: bool = True,
    processor: Any = None,
    max_model_len: int | None = None,
    judge: Callable[[EvalItem, str | None, str], bool | None] | None = None,
) -> list[SampleResult]:
    """Generate greedily for `items` and score every response.

    Args:
        engine: A ``RolloutEngine`` (anything with its ``generate(requests, greedy=, max_tokens=)``).
        items: The questions.
        tokenizer: The policy's tokenizer (chat template).
        prompt: System prompt kind: ``srpo`` | ``plain`` | ``none``.
        max_tokens: New-token limit per response (the paper: 4096).
        batch_size: Questions per ``generate`` call (the progress bar moves per batch).
        timeout_s: Bound on one math-verify comparison.
        progress: Show a progress bar.
        processor: The policy's HF processor; with `max_model_len`, a prompt of `max_model_len` or
            more tokens (images expanded) is not generated for and counts as wrong, with
            ``finish_reason="prompt_too_long"`` (the engine would reject the whole batch).
        max_model_len: The engine's context length.
        judge: Optional LLM judge (``judge.LLMJudge``), asked only about rule-wrong answers to
            generated responses; its verdicts go to ``judge_correct``, reported apart.

    Returns:
        One result per item, in order.
    """
    results: list[SampleResult] = []
    bar = tqdm(total=len(items), desc="eval", unit="q", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        requests = [build_request(it, tokenizer, prompt) for it in chunk]
        fits = [
            processor is None or max_model_len is None or prompt_token_count(processor, r) < max_model_len
            for r in requests
        ]
        generated = iter(
            engine.generate([r for r, ok in zip(requests, fits) if ok], greedy=True, max_tokens=max_tokens)
        )
        for item, req, ok in zip(chunk, requests, fits):
            text, finish, n_tokens = "", "prompt_too_long", 0
            if ok:
                s = next(generated)[0]
                text, finish, n_tokens = s.text, s.finish_reason, len(s.token_ids)
            ex, final, first = score_response(item, text, timeout_s=timeout_s)
            judged = None
            if judge is not None:
                judged = final.correct or (ok and bool(judge(item, ex.final, text)))
            results.append(
                SampleResult(
                    id=item.id,
                    benchmark=item.benchmark,
                    split=item.split,
                    category=item.category,
                    prompt=req.prompt,
                    response=text,
                    finish_reason=finish,
                    response_tokens=n_tokens,
                    final_answer=ex.final,
                    first_answer=ex.first,
                    answer_source=ex.source,
                    gold=item.gold,
                    gold_text=item.gold_text,
                    answer_type=item.answer_type,
                    correct=final.correct,
                    first_correct=first.correct,
                    method=final.method,
                    judge_correct=judged,
                )
            )
        bar.update(len(chunk))
        done = len(results)
        bar.set_postfix(acc=f"{100 * sum(r.correct for r in results) / done:.1f}%")
    bar.close()
    return results


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def _pct(num: int, den: int) -> float:
    return round(100.0 * num / den, 2) if den else 0.0


def _stats(rs: Sequence[SampleResult]) -> dict[str, Any]:
    n = len(rs)
    judged = any(r.judge_correct is not None for r in rs)
    return {
        "n": n,
        "accuracy": _pct(sum(r.correct for r in rs), n),
        "first_accuracy": _pct(sum(r.first_correct for r in rs), n),
        "no_answer": _pct(sum(r.answer_source == "none" for r in rs), n),
        "truncated": _pct(sum(r.finish_reason == "length" for r in rs), n),
        "prompt_too_long": sum(r.finish_reason == "prompt_too_long" for r in rs),
        **({"judge_accuracy": _pct(sum(bool(r.judge_correct) for r in rs), n)} if judged else {}),
    }


def summarize(results: Sequence[SampleResult]) -> dict[str, Any]:
    """Accuracies (%) per benchmark, per split and per category, final and first answer.

    A benchmark's ``accuracy`` is the mean of its splits' accuracies (MMMU-Pro's overall score is
    the mean of standard-10 and vision; the others have one split).
    """
    by_split: dict[tuple[str, str], list[SampleResult]] = defaultdict(list)
    for r in results:
        by_split[(r.benchmark, r.split)].append(r)
    benchmarks: dict[str, Any] = {}
    for (bench, split), rs in by_split.items():
        cats: dict[str, list[SampleResult]] = defaultdict(list)
        for r in rs:
            cats[r.category].append(r)
        entry = benchmarks.setdefault(bench, {"splits": {}})
        entry["splits"][split] = {**_stats(rs), "categories": {c: _stats(v) for c, v in sorted(cats.items())}}
    for entry in benchmarks.values():
        splits = list(entry["splits"].values())
        for key in ("accuracy", "first_accuracy", "judge_accuracy"):
            if key not in splits[0]:
                continue
            entry[key] = round(sum(s[key] for s in splits) / len(splits), 2)
        entry["n"] = sum(s["n"] for s in splits)
    sources: dict[str, int] = defaultdict(int)
    for r in results:
        sources[r.answer_source] += 1
    ordered = {b: benchmarks[b] for b in sorted(benchmarks, key=lambda b: (*BENCH_ORDER, b).index(b))}
    return {"benchmarks": ordered, "answer_sources": dict(sources), "n": len(results), "paper": PAPER_SCORES}


def markdown_table(summary: dict[str, Any]) -> str:
    """The results table: this run's accuracy (final and first answer) next to the paper's rows,
    then each split's categories."""
    benches = list(summary["benchmarks"])
    head = "| model | " + " | ".join(benches) + " |\n|---|" + "---|" * len(benches)
    ours = "| **this run** (final answer) | " + " | ".join(
        f"**{summary['benchmarks'][b]['accuracy']:.1f}**" for b in benches
    )
    first = "| this run (first answer) | " + " | ".join(
        f"{summary['benchmarks'][b]['first_accuracy']:.1f}" for b in benches
    )
    paper = [
        f"| {model} | " + " | ".join(f"{scores[b]:.1f}" if b in scores else "–" for b in benches) + " |"
        for model, scores in summary["paper"].items()
        if any(b in scores for b in benches)  # none for the synthetic task
    ]
    lines = [head, ours + " |", first + " |"]
    if all("judge_accuracy" in summary["benchmarks"][b] for b in benches):
        lines.append(
            "| this run, LLM judge (reported apart) | "
            + " | ".join(f"{summary['benchmarks'][b]['judge_accuracy']:.1f}" for b in benches)
            + " |"
        )
    lines += [*paper, ""]
    for b in benches:
        for split, s in summary["benchmarks"][b]["splits"].items():
            lines.append(
                f"### {b} / {split}: {s['accuracy']:.1f}% final, {s['first_accuracy']:.1f}% first "
                f"(n={s['n']}, no answer {s['no_answer']:.1f}%, truncated {s['truncated']:.1f}%, "
                f"prompt too long {s['prompt_too_long']})\n"
            )
            lines.append("| category | n | final | first |\n|---|---|---|---|")
            for cat, c in s["categories"].items():
                lines.append(f"| {cat} | {c['n']} | {c['accuracy']:.1f} | {c['first_accuracy']:.1f} |")
            lines.append("")
    return "\n".join(lines)


def write_outputs(
    out: str | Path, results: Sequence[SampleResult], summary: dict[str, Any], run: dict[str, Any]
) -> Path:
    """Write ``samples.jsonl``, ``summary.json`` (with the run's settings) and ``summary.md`` into
    `out`, which appears only when complete (``atomic_dir``)."""
    with atomic_dir(out) as tmp:
        with (tmp / "samples.jsonl").open("w") as f:
            for r in results:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        (tmp / "summary.json").write_text(json.dumps({"run": run, **summary}, indent=2, ensure_ascii=False))
        (tmp / "summary.md").write_text(f"# Evaluation\n\n`{run.get('command', '')}`\n\n" + markdown_table(summary))
    return Path(out)


def read_samples(path: str | Path) -> list[SampleResult]:
    """The results recorded in a ``samples.jsonl``."""
    with Path(path).open() as f:
        return [SampleResult(**json.loads(line)) for line in f if line.strip()]
