"""Parsing of SRPO responses: tagged blocks, the five-block format and the single-attempt format.

Owns: a linear-time scanner over ``<think>``, ``<answer>`` and ``<reflection>`` tags (no
backtracking regex, so no input string can make it slow), the strict format checks, and the spans
the reward needs (first/last answer, first think+answer segment, reflection).

The SRPO format (shared/SRPO.md) is, with only whitespace between blocks and anything before the
first block::

    <think>…</think> <answer>…</answer> <reflection>…</reflection> <think>…</think> <answer>…</answer>

All five blocks non-empty (after stripping whitespace), nothing but whitespace after the last
``</answer>``. A tag inside a block, a nested or unclosed tag, or any other order is not the format.

Does not own: judging answers (``verify``) or scoring (``reflection``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

TAG_RE = re.compile(r"<(/?)(think|answer|reflection)>")

SRPO_ORDER = ("think", "answer", "reflection", "think", "answer")
GRPO_ORDER = ("think", "answer")


@dataclass(frozen=True)
class Block:
    """One ``<tag>content</tag>`` block; ``start``/``end`` span the tags themselves."""

    tag: str
    content: str
    start: int
    end: int


@dataclass(frozen=True)
class ParsedResponse:
    """What the reward needs to know about one response's structure."""

    blocks: tuple[Block, ...]
    """Well-formed blocks in order (a malformed region ends the scan; see ``well_formed``)."""
    well_formed: bool
    """No nested, stray or unclosed tags anywhere."""
    only_whitespace_between: bool
    """Only whitespace between consecutive blocks and after the last one."""

    def tags(self) -> tuple[str, ...]:
        return tuple(b.tag for b in self.blocks)

    def of(self, tag: str) -> list[Block]:
        return [b for b in self.blocks if b.tag == tag]

    def _matches(self, order: tuple[str, ...]) -> bool:
        return (
            self.well_formed
            and self.only_whitespace_between
            and self.tags() == order
            and all(b.content.strip() for b in self.blocks)
        )

    @property
    def is_srpo_format(self) -> bool:
        """The exact five-block SRPO format."""
        return self._matches(SRPO_ORDER)

    @property
    def is_grpo_format(self) -> bool:
        """The single-attempt ``<think>…</think><answer>…</answer>`` format of the GRPO baseline."""
        return self._matches(GRPO_ORDER)

    @property
    def answers(self) -> list[str]:
        return [b.content for b in self.of("answer")]

    @property
    def first_answer(self) -> str | None:
        a = self.answers
        return a[0] if a else None

    @property
    def last_answer(self) -> str | None:
        a = self.answers
        return a[-1] if a else None

    @property
    def has_reflection(self) -> bool:
        """A non-empty, properly tagged reflection block is present."""
        return any(b.content.strip() for b in self.of("reflection"))

    def first_attempt_span(self) -> tuple[int, int] | None:
        """Character span of the first think+answer (from the first ``<think>`` before the first
        answer, else the first ``<answer>``, through the first ``</answer>``)."""
        first = next((b for b in self.blocks if b.tag == "answer"), None)
        if first is None:
            return None
        think = next((b for b in self.blocks if b.tag == "think" and b.end <= first.start), None)
        return (think.start if think else first.start, first.end)


def parse_response(text: str) -> ParsedResponse:
    """Scan `text` once and return its blocks and structure flags. Never raises, O(len(text))."""
    blocks: list[Block] = []
    well_formed = True
    open_tag: str | None = None
    open_start = open_end = 0
    for m in TAG_RE.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if open_tag is None:
            if closing:
                well_formed = False  # stray closing tag
                continue
            open_tag, open_start, open_end = tag, m.start(), m.end()
        elif closing and tag == open_tag:
            blocks.append(Block(tag, text[open_end : m.start()], open_start, m.end()))
            open_tag = None
        else:
            well_formed = False  # nested or mismatched tag: restart from here
            if not closing:
                open_tag, open_start, open_end = tag, m.start(), m.end()
            else:
                open_tag = None
    if open_tag is not None:
        well_formed = False  # unclosed tag
    gaps = [text[a.end : b.start] for a, b in itertools.pairwise(blocks)]
    tail = text[blocks[-1].end :] if blocks else text
    only_ws = all(not g.strip() for g in gaps) and not tail.strip()
    return ParsedResponse(tuple(blocks), well_formed, only_ws)
