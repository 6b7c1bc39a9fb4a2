"""The builder persists every finished item, skips it on a rerun and ends with the same set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srpo_mcore.data.synthetic import write_synthetic_task
from srpo_mcore.reflection.build import BuildConfig, build
from srpo_mcore.reflection.items import shuffled
from srpo_mcore.reflection.journal import Journal
from srpo_mcore.reflection.teacher import TeacherError, TeacherItem, TeacherReply, TemplateTeacher
from srpo_mcore.rl.rewards.format import parse_response

N = 12


class Killed(BaseException):
    """Stands in for a SIGKILL in the middle of the teacher phase."""


class CountingTeacher:
    name = "counting"

    def __init__(self, fail: set[str] = frozenset(), die_after: int | None = None) -> None:  # type: ignore[assignment]
        self.inner = TemplateTeacher()
        self.asked: list[str] = []
        self.fail = fail
        self.die_after = die_after

    def reflect(self, item: TeacherItem) -> TeacherReply:
        if self.die_after is not None and len(self.asked) == self.die_after:
            raise Killed
        self.asked.append(item.id)
        if item.id in self.fail:
            raise TeacherError("rate_limit", "scripted")
        return self.inner.reflect(item)


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    paths = write_synthetic_task(tmp_path / "pool", n_train=N, n_test=0, seed=0)
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    rows.append(
        {"id": "free", "question": "Describe the image.", "answer": "a red circle", "images": rows[0]["images"]}
    )
    paths["train"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths["train"]


def seed_initial(out: Path, pool: Path) -> dict[str, str]:
    """Journal initial answers (as the policy would have): every third one correct, one unformatted."""
    golds = {r["id"]: r["answer"] for r in map(json.loads, pool.read_text().splitlines()) if r["id"] != "free"}
    journal = Journal(out / "work" / "initial.jsonl")
    for i, (row_id, gold) in enumerate(golds.items()):
        answer = gold if i % 3 == 0 else "Z" if gold.isalpha() else str(int(gold) + 1)
        text = f"<think> looking at item {i} </think><answer> \\boxed{{{answer}}} </answer>"
        if i == N - 1:
            text = "no tags here"
        journal.append({"id": row_id, "text": text, "finish_reason": "stop", "seed": 0})
    return golds


def config(pool: Path, out: Path) -> BuildConfig:
    return BuildConfig(pool=[str(pool)], policy="/nonexistent/policy", out=out, size=6, progress=False)


def test_build_resume_skips_finished_items_and_ends_with_the_same_set(pool: Path, tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    first = shuffled(["train-00000", "train-00003", "train-00006", "train-00009"], 0, "correct")[0]
    seed_initial(whole, pool)
    seed_initial(broken, pool)
    summary = build(config(pool, whole), CountingTeacher(fail={first}))
    assert summary.pool_rows == N + 1 and summary.kept == N
    assert summary.dropped == {"free_form_gold": 1, "first_unformatted": 1}
    assert (summary.first_correct, summary.first_incorrect) == (4, 7)
    assert (summary.set_correct, summary.set_incorrect) == (2, 4)
    expected = (whole / "sft.jsonl").read_text()
    rows = [json.loads(line) for line in expected.splitlines()]
    assert len(rows) == 6 and sum(r["first_correct"] for r in rows) == 2
    assert all(parse_response(r["response"]).is_srpo_format for r in rows)
    assert all((whole / image).is_file() for r in rows for image in r["images"])

    # Killed after three teacher calls (one failed): they are on disk, the set is not.
    with pytest.raises(Killed):
        build(config(pool, broken), CountingTeacher(fail={first}, die_after=3))
    done_before = set(Journal(broken / "work" / "teacher.jsonl").by_id())
    assert not (broken / "sft.jsonl").exists()
    with open(broken / "work" / "teacher.jsonl", "a") as f:
        f.write('{"id": "torn')  # a kill in the middle of a line

    rerun = CountingTeacher(fail={first})
    build(config(pool, broken), rerun)
    assert done_before and not done_before & set(rerun.asked)  # finished items were not asked again
    assert (broken / "sft.jsonl").read_text() == expected
    failures = Journal(broken / "work" / "failures.jsonl").read()
    assert {f["id"] for f in failures} == {first} and failures[0]["reason"] == "rate_limit"

    # A complete rerun asks nobody but the failed item, and rewrites the same set.
    again = CountingTeacher(fail={first})
    build(config(pool, whole), again)
    assert again.asked == [first]
    assert (whole / "sft.jsonl").read_text() == expected


def test_rerun_with_other_generation_settings_is_refused(pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seed_initial(out, pool)
    build(config(pool, out), TemplateTeacher())
    cfg = config(pool, out)
    cfg.max_tokens = 77
    with pytest.raises(ValueError, match="max_tokens"):
        build(cfg, TemplateTeacher())
