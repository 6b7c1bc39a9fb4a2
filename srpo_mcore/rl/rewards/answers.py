"""Answer text handling: ``\\boxed{}`` extraction, choice letters and normalised string comparison.

Owns: turning the content of an ``<answer>`` block (or a gold answer) into what is compared —
the last ``\\boxed{…}`` if there is one, a choice letter when the gold is a choice, and a
normalised string for the last-resort comparison. Pure string functions, linear time.

Does not own: symbolic equivalence (``verify`` calls math-verify).
"""

from __future__ import annotations

import re

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CHOICE_GOLD_RE = re.compile(r"^\(?([A-Za-z])\)?\.?$")
# A prediction names a choice as "B", "(B)", "B.", "B)", "B: text", "option B", "the answer is (B)".
_CHOICE_PRED_RES = (
    re.compile(r"^\(?([A-Z])\)?(?:[.:)]|\s*$|\s+[-–:]?\s*\S)"),
    re.compile(r"(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])"),
)
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) with balanced braces, else None."""
    last = None
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            depth += (c == "{") - (c == "}")
            i += 1
        if depth == 0:
            last = text[m.end() : i - 1]
    return last


def answer_core(content: str) -> str:
    """What an answer block states: its last boxed value if any, else the stripped content."""
    boxed = extract_boxed(content)
    return (boxed if boxed is not None else content).strip()


def _unwrap(text: str) -> str:
    text = text.strip().strip("$").strip()
    for _ in range(3):  # \text{\textbf{B}} and the like
        new = _TEXT_WRAP_RE.sub(r"\1", text)
        if new == text:
            break
        text = new
    return text.strip()


def gold_choice(gold: str) -> str | None:
    """The choice letter if the gold answer is one (``B``, ``(B)``, ``b.``), else None."""
    m = _CHOICE_GOLD_RE.match(_unwrap(gold))
    return m.group(1).upper() if m else None


def pred_choice(pred: str) -> str | None:
    """The choice letter a predicted answer names, or None."""
    text = _unwrap(pred)
    for pattern in _CHOICE_PRED_RES:
        m = pattern.search(text) if pattern is not _CHOICE_PRED_RES[0] else pattern.match(text)
        if m:
            return m.group(1).upper()
    return None


_NORM_DROP_RE = re.compile(r"\\(?:left|right|,|;|!|quad|qquad|displaystyle)|\s+")


def normalize_text(text: str) -> str:
    """Lower-cased answer text without math delimiters, text wrappers, spacing or a final period."""
    text = _unwrap(text.strip().rstrip("."))
    text = _NORM_DROP_RE.sub("", text)
    return text.rstrip(".").lower()
