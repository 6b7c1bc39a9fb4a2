"""Stage-1 builder rules: gold filter, first attempts, five-block assembly, the correct/incorrect mix."""

from __future__ import annotations

import pytest

from srpo_mcore.reflection.items import (
    FirstAttempt,
    assemble_response,
    first_attempt,
    gold_kind,
    item_seed,
    mix_quotas,
    select_mix,
)
from srpo_mcore.reflection.teacher import TeacherItem, TeacherReply, TemplateTeacher
from srpo_mcore.rl.rewards.format import parse_response
from srpo_mcore.rl.rewards.verify import verify_answer


@pytest.mark.parametrize(
    ("gold", "kind"),
    [
        ("B", "choice"),
        ("(c)", "choice"),
        ("D.", "choice"),
        ("\\boxed{A}", "choice"),
        ("3", "number"),
        ("-2.5", "number"),
        ("1,000", "number"),
        ("40%", "number"),
        ("3/4", "number"),
        ("\\frac{3}{4}", "number"),
        ("$12$", "number"),
        ("\\boxed{7}", "number"),
        ("a red circle", None),
        ("x^2 + 1", None),
        ("yes", None),
        ("AB", None),
        ("2 apples", None),
        ("", None),
    ],
)
def test_gold_kind(gold: str, kind: str | None) -> None:
    assert gold_kind(gold) == kind


def test_item_seed_depends_only_on_seed_and_id() -> None:
    assert item_seed(0, "a") == item_seed(0, "a")
    assert len({item_seed(0, "a"), item_seed(1, "a"), item_seed(0, "b")}) == 3
    assert 0 <= item_seed(3, "x") < 2**31


def test_first_attempt_strict_and_lenient() -> None:
    good = "sure <think> 2 and 3 </think>\n<answer> \\boxed{5} </answer>"
    assert first_attempt(good) == FirstAttempt("2 and 3", "\\boxed{5}", repaired=False)
    for bad in ("no tags at all", "<think> a </think>", "<think> a </think><answer> </answer>", "<answer>5</answer>"):
        assert first_attempt(bad) is None
    assert first_attempt("I count them.\nThe total is \\boxed{4} here", lenient=True) == FirstAttempt(
        "I count them.\nThe total is \\boxed{4} here", "\\boxed{4}", repaired=True
    )
    assert first_attempt("<think> half </think> so 7", lenient=True) == FirstAttempt("half   so 7", "half   so 7", True)
    assert first_attempt("   ", lenient=True) is None
    assert first_attempt("<think></think>", lenient=True) is None


def test_assemble_response_is_the_srpo_format() -> None:
    first = FirstAttempt("two plus three", "\\boxed{6}", repaired=False)
    reply = TeacherReply("The sum is wrong; add again.", "2 + 3 = 5.", "5")
    response = assemble_response(first, reply)
    assert response is not None
    parsed = parse_response(response)
    assert parsed.is_srpo_format
    assert [b.content.strip() for b in parsed.blocks] == [
        "two plus three",
        "\\boxed{6}",
        "The sum is wrong; add again.",
        "2 + 3 = 5.",
        "\\boxed{5}",  # the second answer is boxed when the teacher did not box it
    ]
    assert verify_answer(parsed.first_answer, "5").correct is False
    assert verify_answer(parsed.last_answer, "5").correct is True
    # A first attempt that smuggles a tag in breaks the format: rejected, not written.
    assert assemble_response(FirstAttempt("a <answer> b", "1", False), reply) is None


def test_template_teacher_states_the_gold() -> None:
    teacher = TemplateTeacher()
    for correct in (True, False):
        item = TeacherItem("i", "How many?", "I see <b>", "\\boxed{4}", "3", first_correct=correct)
        reply = teacher.reflect(item)
        response = assemble_response(FirstAttempt("I see", "\\boxed{4}", False), reply)
        assert response is not None
        assert verify_answer(parse_response(response).last_answer, "3").correct
        assert reply == teacher.reflect(item)  # deterministic


@pytest.mark.parametrize(
    ("size", "frac", "quotas"),
    [(10, 0.3, (3, 7)), (7, 0.3, (2, 5)), (1, 0.3, (0, 1)), (4, 0.5, (2, 2)), (5, 0.0, (0, 5))],
)
def test_mix_quotas(size: int, frac: float, quotas: tuple[int, int]) -> None:
    assert mix_quotas(size, frac) == quotas
    assert sum(mix_quotas(size, frac)) == size


def test_mix_quotas_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        mix_quotas(10, 1.5)
    with pytest.raises(ValueError):
        mix_quotas(-1, 0.3)


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


def test_select_mix_hits_the_quotas_deterministically() -> None:
    correct, incorrect = _ids("c", 20), _ids("w", 30)
    a = select_mix(correct, incorrect, size=10, correct_fraction=0.3, seed=1, accept=lambda _: None)
    assert (len(a.correct), len(a.incorrect)) == (3, 7)
    assert set(a.correct) <= set(correct) and set(a.incorrect) <= set(incorrect)
    # The input order does not matter, the seed does.
    b = select_mix(correct[::-1], incorrect[::-1], size=10, correct_fraction=0.3, seed=1, accept=lambda _: None)
    assert a.ids == b.ids
    c = select_mix(correct, incorrect, size=10, correct_fraction=0.3, seed=2, accept=lambda _: None)
    assert a.ids != c.ids


def test_select_mix_replaces_rejected_items_within_their_class() -> None:
    tried: list[str] = []

    def accept(item: str) -> str | None:
        tried.append(item)
        return "teacher_malformed_json" if item in {"c00", "c01", "w05"} else None

    mix = select_mix(_ids("c", 10), _ids("w", 10), size=10, correct_fraction=0.3, seed=0, accept=accept)
    assert (len(mix.correct), len(mix.incorrect)) == (3, 7)
    assert not {"c00", "c01", "w05"} & set(mix.ids)
    assert {k: v for k, v in mix.rejected.items()} == {i: "teacher_malformed_json" for i in set(tried) - set(mix.ids)}
    assert len(tried) == len(set(tried))  # nobody is asked twice


def test_select_mix_fills_a_short_class_from_the_other() -> None:
    mix = select_mix(_ids("c", 1), _ids("w", 20), size=10, correct_fraction=0.3, seed=0, accept=lambda _: None)
    assert (len(mix.correct), len(mix.incorrect)) == (1, 9)
    mix = select_mix(_ids("c", 20), _ids("w", 2), size=10, correct_fraction=0.3, seed=0, accept=lambda _: None)
    assert (len(mix.correct), len(mix.incorrect)) == (8, 2)
    mix = select_mix(_ids("c", 2), _ids("w", 3), size=10, correct_fraction=0.3, seed=0, accept=lambda _: None)
    assert (len(mix.correct), len(mix.incorrect)) == (2, 3)  # not enough items at all: all of them
