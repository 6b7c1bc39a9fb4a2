"""Evaluation answer extraction and scoring: table-driven on realistic responses (five-block SRPO,
plain think/answer, boxed-only, letter-only, "The answer is (B)", units, commas, fractions,
wrong and blank), per benchmark answer type."""

from __future__ import annotations

import pytest

from srpo_mcore.eval.extract import choice_letter, extract, letter_of, parse_number
from srpo_mcore.eval.items import EvalItem
from srpo_mcore.eval.score import numbers_equal, score_answer

SRPO = (
    "<think> The angles are supplementary, so 180 - 50 = 120. </think> <answer> \\boxed{120} </answer> "
    "<reflection> I subtracted wrongly: 180 - 50 = 130. </reflection> "
    "<think> Recomputing: 130. </think> <answer> The angle is \\boxed{130} degrees. </answer>"
)

EXTRACT_CASES = [
    # (response, final, first, source)
    (SRPO, "130", "120", "answer_block"),
    ("<think>easy</think><answer>B</answer>", "B", "B", "answer_block"),
    ("<think>x</think><answer> 3/4 </answer>", "3/4", "3/4", "answer_block"),
    # truncated after the reflection: the last complete answer block is the only one
    ("<think>a</think><answer>\\boxed{7}</answer><reflection>hmm</reflection><think>more", "7", "7", "answer_block"),
    ("So the total is \\boxed{1,200}. Actually \\boxed{\\frac{3}{2}}", "\\frac{3}{2}", "\\frac{3}{2}", "boxed"),
    ("Comparing the options, the answer is (B).", "(B)", "(B)", "rule"),
    ("Reasoning...\nFinal Answer: 42", "42", "42", "rule"),
    ("I cannot tell from the picture", None, None, "none"),
    ("", None, None, "none"),
    # an answer block wins over a later stray box; the box inside the block wins over its prose
    ("<answer>it is \\boxed{5}</answer> and \\boxed{6}", "5", "5", "answer_block"),
]


@pytest.mark.parametrize(("response", "final", "first", "source"), EXTRACT_CASES)
def test_extract(response: str, final: str | None, first: str | None, source: str) -> None:
    ex = extract(response)
    assert (ex.final, ex.first, ex.source) == (final, first, source)


@pytest.mark.parametrize(
    ("text", "unit", "value"),
    [
        ("1,234.5", None, 1234.5),
        ("1200", None, 1200.0),
        ("25%", None, 25.0),
        ("30^\\circ", None, 30.0),
        ("30°", None, 30.0),
        ("3/4", None, 0.75),
        ("\\frac{3}{4}", None, 0.75),
        ("-\\frac{1}{2}", None, -0.5),
        ("3.5 cm", "cm", 3.5),
        ("3.5\\text{ cm}", "cm", 3.5),
        ("12 apples", None, 12.0),
        ("$12", None, 12.0),
        ("3x + 1", None, None),
        ("2^3", None, None),
        ("1/0", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_parse_number(text: str | None, unit: str | None, value: float | None) -> None:
    assert parse_number(text, unit) == value


OPTS = ("circle", "square", "triangle")


@pytest.mark.parametrize(
    ("pred", "options", "letter"),
    [
        ("B", OPTS, "B"),
        ("(B)", OPTS, "B"),
        ("B. square", OPTS, "B"),
        ("The answer is C", OPTS, "C"),
        ("square", OPTS, "B"),
        ("Square.", OPTS, "B"),
        ("D", OPTS, None),  # beyond the options
        ("hexagon", OPTS, None),
        ("J", (), "J"),  # options only in the image: any letter counts
        ("", OPTS, None),
        (None, OPTS, None),
    ],
)
def test_choice_letter(pred: str | None, options: tuple[str, ...], letter: str | None) -> None:
    assert choice_letter(pred, options) == letter


def test_letter_of() -> None:
    assert letter_of("square", OPTS) == "B"
    assert letter_of(" Triangle ", OPTS) == "C"
    assert letter_of("hexagon", OPTS) is None


def item(answer_type: str, gold: str, **kw: object) -> EvalItem:
    return EvalItem("q", "bench", "test", "cat", "question?", (), gold, answer_type, **kw)  # type: ignore[arg-type]


MC = item("choice", "B", options=OPTS)
INT = item("integer", "1200")
FLOAT1 = item("float", "3.5", precision=1, unit="cm")
FLOAT2 = item("float", "0.67", precision=2)
EXPR = item("expression", "\\frac{3}{2}")
TEXT = item("text", "Yes")

SCORE_CASES = [
    # (item, response, final correct, first correct)
    (
        MC,
        "<think>..</think><answer>A</answer><reflection>..</reflection><think>..</think><answer>B</answer>",
        True,
        False,
    ),
    (MC, "<think>..</think><answer>\\boxed{square}</answer>", True, True),
    (MC, "It is clearly the square, so the answer is (B).", True, True),
    (MC, "<answer>C</answer>", False, False),
    (MC, "", False, False),
    (INT, "<answer>\\boxed{1,200}</answer>", True, True),
    (INT, "<answer>1200 apples</answer>", True, True),
    (INT, "<answer>1201</answer>", False, False),
    (FLOAT1, "<answer>\\boxed{3.5 cm}</answer>", True, True),
    (FLOAT1, "<answer>3.54</answer>", True, True),  # MathVista compares at `precision` decimals
    (FLOAT1, "<answer>3.6</answer>", False, False),
    (FLOAT2, "<answer>\\frac{2}{3}</answer>", True, True),
    (EXPR, SRPO.replace("130", "\\frac{3}{2}").replace("120", "1.4"), True, False),
    (EXPR, "<answer>1.5</answer>", True, True),
    (EXPR, "<answer>3/2</answer>", True, True),
    (EXPR, "<answer>2/3</answer>", False, False),
    (TEXT, "<answer>yes</answer>", True, True),
    (TEXT, "no answer here", False, False),
]


@pytest.mark.parametrize(("it", "response", "final_ok", "first_ok"), SCORE_CASES)
def test_score(it: EvalItem, response: str, final_ok: bool, first_ok: bool) -> None:
    ex = extract(response)
    assert score_answer(it, ex.final).correct is final_ok
    assert score_answer(it, ex.first).correct is first_ok


def test_blank_and_none_are_empty() -> None:
    assert score_answer(INT, None).method == "empty"
    assert score_answer(INT, "  ").method == "empty"


def test_numbers_equal() -> None:
    assert numbers_equal(3.54, 3.5, 1) and not numbers_equal(3.56, 3.5, 1)
    assert numbers_equal(1200.0, 1200.0000001, None) and not numbers_equal(1200.0, 1201.0, None)


def test_gold_text() -> None:
    assert MC.gold_text == "square"
    assert item("choice", "J").gold_text == "J"
    assert INT.gold_text == "1200"
