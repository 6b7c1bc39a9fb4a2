"""Answer extraction for evaluation: the paper's protocol, choice letters and numbers.

Owns: turning one generated response into the answers that are scored —

- **final answer**: the content of the *last* ``<answer>`` block (its last ``\\boxed{}`` if it has
  one); else the last ``\\boxed{}`` anywhere; else a trailing "the answer is X" / "Answer: X";
  else nothing. (The released SRPO eval scripts took the first block, i.e. the pre-reflection
  answer; shared/SRPO.md calls that a bug.)
- **first answer**: the content of the *first* ``<answer>`` block (the pre-reflection attempt);
  a response without answer blocks made one attempt, so its first answer is its final answer.
- mapping a predicted answer to a choice letter (by letter, "(B)", "option B", or by the text of
  an option) and parsing numbers with units, thousands separators, percents and fractions.

Does not own: the verdict (``score``) or the tag scanner and ``\\boxed{}`` parser, which are the
reward's (``srpo_mcore.rl.rewards``) and reused as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from srpo_mcore.rl.rewards.answers import answer_core, extract_boxed, normalize_text, pred_choice
from srpo_mcore.rl.rewards.format import parse_response

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# "The answer is (B).", "Final answer: 42", "Answer: 3/4" — the last such statement wins.
_RULE_RE = re.compile(r"(?i:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]+)")
_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_FRAC_RE = re.compile(r"^([-+]?)\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}$")
_LEADING_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*\d+(?:\.\d*)?)?")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\%|%|\\\$|\$|\\!|\\,|\\ ")


@dataclass(frozen=True)
class Extraction:
    """The answers extracted from one response."""

    final: str | None
    """The final answer (None: nothing found)."""
    first: str | None
    """The first (pre-reflection) answer (None: nothing found)."""
    source: str
    """Where the final answer came from: answer_block | boxed | rule | none."""
    num_answer_blocks: int


def _rule_answer(text: str) -> str | None:
    last = None
    for m in _RULE_RE.finditer(text):
        last = m.group(1)
    if last is None:
        return None
    last = last.strip().rstrip(".").strip()
    return last or None


def extract(response: str) -> Extraction:
    """Extract the final and first answers of `response` by the paper's protocol. Never raises.

    Args:
        response: The generated text.

    Returns:
        The final answer, the first answer and where the final one came from.
    """
    answers = parse_response(response).answers
    if answers:
        return Extraction(answer_core(answers[-1]), answer_core(answers[0]), "answer_block", len(answers))
    boxed = extract_boxed(response)
    if boxed is not None:
        return Extraction(boxed.strip(), boxed.strip(), "boxed", 0)
    rule = _rule_answer(response)
    if rule is not None:
        return Extraction(rule, rule, "rule", 0)
    return Extraction(None, None, "none", 0)


def choice_letter(pred: str | None, options: Sequence[str]) -> str | None:
    """The choice a predicted answer names: by letter (``B``, ``(B)``, ``option B``, ``B. text``) or
    by the exact (normalised) text of one option. A letter beyond the options is no choice.

    Args:
        pred: The extracted answer (None: none).
        options: The option texts in letter order (may be empty: then only letters count).

    Returns:
        The upper-case letter, or None.
    """
    if pred is None or not pred.strip():
        return None
    letter = pred_choice(pred)
    if letter is not None and (not options or LETTERS.index(letter) < len(options)):
        return letter
    norm = normalize_text(pred)
    matches = [i for i, opt in enumerate(options) if normalize_text(str(opt)) == norm]
    if len(matches) == 1:
        return LETTERS[matches[0]]
    return None


def letter_of(gold_text: str, options: Sequence[str]) -> str | None:
    """The letter of the option whose text is `gold_text` (exact, then normalised), else None."""
    for i, opt in enumerate(options):
        if str(opt) == gold_text:
            return LETTERS[i]
    norm = normalize_text(gold_text)
    for i, opt in enumerate(options):
        if normalize_text(str(opt)) == norm:
            return LETTERS[i]
    return None


def parse_number(text: str | None, unit: str | None = None) -> float | None:
    """A number stated by an answer: ``1,234.5``, ``25%``, ``30°``, ``3/4``, ``\\frac{3}{4}``,
    ``5 cm`` (a trailing unit, in particular `unit`, is dropped). None when it is not one number.

    Args:
        text: The answer text.
        unit: The benchmark's unit for this question, stripped if present.

    Returns:
        The value, or None.
    """
    if text is None:
        return None
    t = text.strip().strip("$").strip()
    t = re.sub(r"\\(?:text|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", t)
    t = _DEGREE_RE.sub("", t).strip()
    if unit and unit.strip() and t.endswith(unit.strip()):
        t = t[: -len(unit.strip())].strip()
    t = t.replace("{,}", "")
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    m = _FRAC_RE.match(t)
    if m:
        return _ratio(m.group(1) + m.group(2), m.group(3))
    if _NUMBER_RE.match(t):
        return float(t)
    lead = _LEADING_NUMBER_RE.match(t)
    # "5 cm", "12 apples": a number followed by a word; not "3x + 1" or "2^3".
    if lead and re.fullmatch(r"\s+[A-Za-z][A-Za-z .²³]*", t[lead.end() :]):
        t = lead.group(0)
    if "/" in t:
        num, _, den = t.partition("/")
        return _ratio(num, den)
    return float(t) if _NUMBER_RE.match(t) else None


def _ratio(num: str, den: str) -> float | None:
    num, den = num.strip(), den.strip()
    if not (_NUMBER_RE.match(num) and _NUMBER_RE.match(den)) or float(den) == 0:
        return None
    return float(num) / float(den)
