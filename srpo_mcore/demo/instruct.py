"""Stage 0 of the laptop demo: the plain-format answers that stand in for an Instruct model.

SRPO starts from Qwen2.5-VL-*-Instruct, which already answers in ``<think>…</think><answer>…</answer>``
form and is right on part of the data; stage 1 (the reflection set) needs exactly that: first
attempts, some right and some wrong. A tiny random model does neither, so the demo first gives it
a short supervised pass on plain-format answers to the synthetic task — one sentence of reasoning
naming what the question asks for, then the gold in ``\\boxed{}`` — on rows that stage 1 and
stage 2 never see. What it learns there is its own: the reflection builder then asks it, with the
plain system prompt, and keeps whatever it answers.

Owns: ``instruct_response`` (the target of one synthetic item) and ``write_jsonl_rows``.
Does not own: the synthetic task (``srpo_mcore.data.synthetic``) or training (``srpo_mcore.sft``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from srpo_mcore.data.synthetic import SyntheticItem

_ARITH_STEPS = {
    "sum": "I read the two digits and add them.",
    "difference": "I read the two digits and subtract the right one from the left one.",
    "product": "I read the two digits and multiply them.",
}


def instruct_reasoning(item: SyntheticItem) -> str:
    """One sentence of reasoning for `item`: what has to be read from the image and what to do with it."""
    meta = item.meta
    if item.task == "count":
        return f"I count the {meta['target']}s in the grid."
    if item.task == "bars":
        if meta["asks"] == "letter":
            return "I compare the heights of the four bars."
        return "I find the tallest bar and read its height on the grid."
    if item.task == "arith":
        return _ARITH_STEPS[meta["op"]]
    raise ValueError(f"item {item.id}: unknown synthetic task {item.task!r}")


def instruct_response(item: SyntheticItem) -> str:
    """The plain single-attempt target of `item`: ``<think> reasoning </think>\\n<answer> \\boxed{gold} </answer>``."""
    return f"<think> {instruct_reasoning(item)} </think>\n<answer> \\boxed{{{item.answer}}} </answer>"


def write_jsonl_rows(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write `rows` as jsonl to `path` through a temporary sibling and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
