"""Pure pieces of the stage-1 builder: gold filter, first attempts, five-block responses, the mix.

Owns:
- ``gold_kind``: whether a gold answer is a choice letter or a number (the only items SRPO keeps);
- ``first_attempt``: the policy's first ``<think>``/``<answer>`` from its raw output — strictly
  (the output must be the single-attempt format) or leniently (a policy that ignored the tags:
  its text becomes the reasoning and its last ``\\boxed{}``, else its last line, the answer);
- ``assemble_response``: the five-block SFT target, checked with ``parse_response``;
- ``mix_quotas`` and ``select_mix``: the ~30% correct / ~70% incorrect mix of a target size,
  deterministic given the seed.

Does not own: generation, the teacher or files (``build``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from srpo_mcore.reflection.teacher import TeacherReply
from srpo_mcore.rl.rewards.answers import answer_core, extract_boxed, gold_choice
from srpo_mcore.rl.rewards.format import TAG_RE, parse_response

_NUMBER_RE = re.compile(
    r"^[-+]?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)%?$"  # 3, -2.5, 1,000, .5, 40%
    r"|^[-+]?\d+\s*/\s*\d+$"  # 3/4
    r"|^[-+]?\\d?frac\{\d+\}\{\d+\}$"  # \frac{3}{4}
)


def gold_kind(gold: str) -> str | None:
    """``"choice"`` for a choice letter, ``"number"`` for a number, None for anything else."""
    core = answer_core(gold).strip().strip("$").strip()
    if gold_choice(core) is not None:
        return "choice"
    if _NUMBER_RE.match(core.replace(" ", "")):
        return "number"
    return None


def item_seed(seed: int, item_id: str) -> int:
    """A per-item sampling seed: depends only on the run seed and the id, not on batching."""
    digest = hashlib.sha256(f"{seed}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class FirstAttempt:
    think: str
    answer: str
    repaired: bool
    """The output was not in the single-attempt format and was repaired (lenient mode)."""


def first_attempt(text: str, *, lenient: bool = False) -> FirstAttempt | None:
    """The policy's first reasoning and answer, or None when the output gives none.

    Args:
        text: The policy's raw output for the plain ``<think>…</think><answer>…</answer>`` prompt.
        lenient: Also accept output that ignored the format: its text without tags becomes the
            reasoning, its last ``\\boxed{}`` (else its last line) the answer.
    """
    parsed = parse_response(text)
    if parsed.is_grpo_format:
        think, answer = (b.content.strip() for b in parsed.blocks)
        return FirstAttempt(think, answer, repaired=False)
    if not lenient:
        return None
    plain = TAG_RE.sub(" ", text).strip()
    boxed = extract_boxed(plain)
    if boxed is not None and boxed.strip():
        answer = f"\\boxed{{{boxed.strip()}}}"
    else:
        lines = [line.strip() for line in plain.splitlines() if line.strip()]
        answer = lines[-1] if lines else ""
    if not plain or not answer:
        return None
    return FirstAttempt(plain, answer, repaired=True)


def boxed(answer: str) -> str:
    """`answer` with its result in ``\\boxed{}`` (unchanged when it already has one)."""
    return answer if extract_boxed(answer) is not None else f"\\boxed{{{answer.strip()}}}"


def assemble_response(first: FirstAttempt, reply: TeacherReply) -> str | None:
    """The five-block SFT target, or None when it is not a valid SRPO response."""
    response = (
        f"<think> {first.think} </think>\n<answer> {first.answer} </answer>\n"
        f"<reflection> {reply.reflection} </reflection>\n"
        f"<think> {reply.second_think} </think>\n<answer> {boxed(reply.second_answer)} </answer>"
    )
    return response if parse_response(response).is_srpo_format else None


def mix_quotas(size: int, correct_fraction: float) -> tuple[int, int]:
    """(correct, incorrect) item counts of a set of `size` with that fraction of correct ones."""
    if size < 0 or not 0.0 <= correct_fraction <= 1.0:
        raise ValueError(f"size={size} must be >= 0 and correct_fraction={correct_fraction} in [0, 1]")
    n_correct = round(size * correct_fraction)
    return n_correct, size - n_correct


def shuffled(ids: Sequence[str], seed: int, label: str) -> list[str]:
    """`ids` in an order that depends only on the seed, the label and the ids (not their order)."""
    out = sorted(ids)
    random.Random(f"srpo-reflection/{seed}/{label}").shuffle(out)
    return out


@dataclass
class MixResult:
    correct: list[str]
    incorrect: list[str]
    rejected: dict[str, str]
    """id -> reason of every candidate tried that did not make it into the set."""

    @property
    def ids(self) -> list[str]:
        return self.correct + self.incorrect


def select_mix(
    correct_ids: Sequence[str],
    incorrect_ids: Sequence[str],
    *,
    size: int,
    correct_fraction: float,
    seed: int,
    accept: Callable[[str], str | None],
) -> MixResult:
    """Walk each class in seeded order until its quota of accepted items is met.

    A class short of candidates leaves its shortfall to the other class, so the set reaches
    `size` when enough items exist at all (the actual mix is reported by the caller).

    Args:
        correct_ids: Items whose first answer was correct.
        incorrect_ids: Items whose first answer was wrong.
        size: Target set size.
        correct_fraction: Share of correct first answers.
        seed: Order of the walk.
        accept: Called once per tried item: None accepts it, a string rejects it for that reason
            (teacher failure, invalid response, ...).

    Returns:
        The accepted ids per class (in walk order) and the rejected ones with their reasons.
    """
    quotas = dict(zip(("correct", "incorrect"), mix_quotas(size, correct_fraction)))
    queues = {
        "correct": shuffled(correct_ids, seed, "correct"),
        "incorrect": shuffled(incorrect_ids, seed, "incorrect"),
    }
    taken: dict[str, list[str]] = {"correct": [], "incorrect": []}
    rejected: dict[str, str] = {}
    position = {"correct": 0, "incorrect": 0}

    def fill(label: str, want: int) -> None:
        queue = queues[label]
        while len(taken[label]) < want and position[label] < len(queue):
            item = queue[position[label]]
            position[label] += 1
            reason = accept(item)
            if reason is None:
                taken[label].append(item)
            else:
                rejected[item] = reason

    for label in ("correct", "incorrect"):
        fill(label, quotas[label])
    for label, other in (("correct", "incorrect"), ("incorrect", "correct")):
        shortfall = quotas[other] - len(taken[other])
        if shortfall > 0:
            fill(label, len(taken[label]) + shortfall)
    return MixResult(taken["correct"], taken["incorrect"], rejected)
