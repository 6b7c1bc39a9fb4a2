"""Correctness of one extracted answer against one benchmark item.

Owns the per-type rules:

- ``choice``: the predicted letter (by letter or by an option's text, ``extract.choice_letter``)
  equals the gold letter; a prediction naming no option is wrong.
- ``integer`` / ``float``: both sides parsed as numbers (units, commas, percents, fractions
  dropped); floats are compared at the item's ``precision`` decimal places when it has one
  (MathVista), else within a relative 1e-6; when the prediction is no plain number, math-verify
  decides (``\\sqrt{2}`` against 1.41 is not a plain number).
- ``text`` / ``list`` / ``expression``: math-verify equivalence with the normalised string
  comparison as the fallback (``srpo_mcore.rl.rewards.verify``), bounded by a timeout.

Does not own extraction (``extract``) or the optional LLM judge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from srpo_mcore.eval.extract import choice_letter, parse_number
from srpo_mcore.eval.items import EvalItem
from srpo_mcore.rl.rewards.verify import bounded_verify

VERIFY_TIMEOUT_S = 5.0
"""Bound on one math-verify comparison; over it the answer counts as wrong (method ``timeout``)."""


@dataclass(frozen=True)
class Score:
    """The verdict on one answer."""

    correct: bool
    method: str
    """choice | number | math | string | empty | timeout | error."""


def numbers_equal(pred: float, gold: float, precision: int | None) -> bool:
    """`pred` equals `gold` at `precision` decimals when given, else within a relative 1e-6."""
    if precision is not None:
        return round(pred, precision) == round(gold, precision)
    return math.isclose(pred, gold, rel_tol=1e-6, abs_tol=1e-9)


def score_answer(item: EvalItem, pred: str | None, *, timeout_s: float = VERIFY_TIMEOUT_S) -> Score:
    """Judge the extracted answer `pred` for `item`. Never raises.

    Args:
        item: The question (gold, answer type, options, precision, unit).
        pred: The extracted answer, or None when nothing was extracted.
        timeout_s: Bound on the math-verify comparison.

    Returns:
        Whether it is correct and how that was decided.
    """
    if pred is None or not pred.strip():
        return Score(False, "empty")
    if item.answer_type == "choice":
        return Score(choice_letter(pred, item.options) == item.gold, "choice")
    if item.answer_type in ("integer", "float"):
        gold_num = parse_number(item.gold, item.unit)
        pred_num = parse_number(pred, item.unit)
        if gold_num is not None and pred_num is not None:
            precision = item.precision if item.answer_type == "float" else None
            return Score(numbers_equal(pred_num, gold_num, precision), "number")
    verdict = bounded_verify(pred, item.gold, timeout_s)
    return Score(verdict.correct, verdict.method)
