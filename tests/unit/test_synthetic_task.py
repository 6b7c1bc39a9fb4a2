"""The synthetic visual-reasoning task: deterministic bytes, answers right by construction and by the
pixels, rows that load with nothing skipped, and a command line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from srpo_mcore.config import DataConfig
from srpo_mcore.data import synthetic
from srpo_mcore.data.rl_dataset import load_prompt_rows, open_images, prompt_token_count, to_request
from srpo_mcore.data.synthetic import (
    BAR_COLOR,
    BAR_LABELS,
    GRID,
    TASKS,
    WHITE,
    bar_layout,
    cell_box,
    generate_items,
    segment_boxes,
    write_synthetic_task,
)
from srpo_mcore.rl.rewards import verify_answer


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Reading the answer back from the pixels (independent of the generator's metadata)
# --------------------------------------------------------------------------------------------


def count_from_pixels(image: Image.Image, target: str) -> int:
    """Classify the shape in each grid cell by how much of its box it fills."""
    n = 0
    for cell in range(GRID * GRID):
        x0, y0, x1, y1 = cell_box(cell, image.width)
        pixels = [image.getpixel((x, y)) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]
        fill = sum(p != WHITE for p in pixels) / len(pixels)
        if fill == 0:
            continue
        kind = "square" if fill > 0.95 else "circle" if fill > 0.7 else "triangle"
        assert fill > 0.4, f"cell {cell}: fill {fill} is no shape"
        n += kind == target
    return n


def bar_heights_from_pixels(image: Image.Image) -> list[int]:
    """Each bar's height in units: bar-coloured pixels standing on the baseline, nowhere else."""
    baseline, unit, bars = bar_layout(image.width)
    heights = []
    for x0, x1 in bars:
        x = (x0 + x1) // 2
        column = [image.getpixel((x, y)) == BAR_COLOR for y in range(image.height)]
        top = column.index(True)
        assert all(column[top : baseline + 1]) and not any(column[baseline + 1 :]), "one solid bar on the baseline"
        assert (baseline - top) % unit == 0
        heights.append((baseline - top) // unit)
    return heights


# The standard seven-segment digits (a top, b top right, c bottom right, d bottom, e bottom left,
# f top left, g middle), written out here so that a wrong table in the generator is caught.
SEVEN_SEGMENT = ["abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg"]


def digits_from_pixels(image: Image.Image) -> tuple[int, ...]:
    by_segments = {v: k for k, v in enumerate(SEVEN_SEGMENT)}
    digits = []
    for position in (0, 1):
        lit = ""
        for seg, (x0, y0, x1, y1) in sorted(segment_boxes(image.width, position).items()):
            center = image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
            lit += seg if center == (0, 0, 0) else ""
        digits.append(by_segments["".join(sorted(lit))])
    return tuple(digits)


def answer_from_pixels(item: synthetic.SyntheticItem) -> str:
    if item.task == "count":
        target = item.question.split()[2][:-1]  # "How many circles are ..."
        return str(count_from_pixels(item.image, target))
    if item.task == "bars":
        heights = bar_heights_from_pixels(item.image)
        tallest = max(range(len(heights)), key=heights.__getitem__)
        return BAR_LABELS[tallest] if "letter" in item.question else str(heights[tallest])
    a, b = digits_from_pixels(item.image)
    if "sum" in item.question:
        return str(a + b)
    if "minus" in item.question:
        return str(a - b)
    assert "product" in item.question
    return str(a * b)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = write_synthetic_task(tmp_path / "a", n_train=12, n_test=6, seed=5)
    b = write_synthetic_task(tmp_path / "b", n_train=12, n_test=6, seed=5)
    c = write_synthetic_task(tmp_path / "c", n_train=12, n_test=6, seed=6)
    ta, tb, tc = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    assert ta == tb
    assert len(ta) == 2 + 18 and sum(k.startswith("images/") for k in ta) == 18
    assert ta["train.jsonl"] != tc["train.jsonl"], "another seed gives another task"
    assert a == {
        "train": tmp_path / "a/train.jsonl",
        "test": tmp_path / "a/test.jsonl",
        "images": tmp_path / "a/images",
    }
    assert b["train"].parent == tmp_path / "b" and c["test"].exists()
    assert ta["train.jsonl"] != ta["test.jsonl"], "train and test are different streams"


def test_rows_schema_and_task_mix(tmp_path: Path) -> None:
    paths = write_synthetic_task(tmp_path / "t", n_train=9, n_test=3, seed=0)
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert [list(r) for r in rows] == [["id", "question", "answer", "images", "task"]] * 9
    assert Counter(r["task"] for r in rows) == dict.fromkeys(TASKS, 3)
    assert len({r["id"] for r in rows}) == 9
    for r in rows:
        (img,) = r["images"]
        assert img.startswith("images/") and (paths["train"].parent / img).is_file()
        assert isinstance(r["answer"], str)
        with Image.open(paths["train"].parent / img) as im:
            assert im.size == (56, 56) and im.mode == "RGB"


def test_answers_match_the_metadata_by_construction() -> None:
    items = generate_items(60, seed=11, split="train")
    for item in items:
        m = item.meta
        if item.task == "count":
            expected = str(sum(kind == m["target"] for _, kind, _ in m["shapes"]))
            assert f"{m['target']}s" in item.question
        elif item.task == "bars":
            h = m["heights"]
            assert len(set(h)) == len(h), "one tallest bar"
            expected = BAR_LABELS[h.index(max(h))] if m["asks"] == "letter" else str(max(h))
        else:
            a, b = m["digits"]
            expected = str({"sum": a + b, "difference": a - b, "product": a * b}[m["op"]])
            assert int(item.answer) >= 0, "differences are never negative"
        assert item.answer == expected, item


@pytest.mark.parametrize("image_size", [56, 84])
def test_answers_can_be_read_from_the_pixels(image_size: int) -> None:
    items = generate_items(45, seed=3, split="test", image_size=image_size)
    assert {i.task for i in items} == set(TASKS)
    assert {i.meta["asks"] for i in items if i.task == "bars"} == {"letter", "value"}
    for item in items:
        assert item.image.size == (image_size, image_size)
        assert answer_from_pixels(item) == item.answer, item.id


def test_answers_are_checkable_by_the_verifier() -> None:
    for item in generate_items(30, seed=1, split="train"):
        verdict = verify_answer(f"\\boxed{{{item.answer}}}", item.answer)
        assert verdict.correct and not verdict.gold_unparseable, item
        wrong = "Z" if item.answer.isalpha() else str(int(item.answer) + 1)
        assert not verify_answer(f"\\boxed{{{wrong}}}", item.answer).correct


def test_rows_load_with_nothing_skipped(tmp_path: Path, tiny_checkpoint: Any) -> None:
    from transformers import AutoProcessor

    paths = write_synthetic_task(tmp_path / "t", n_train=15, n_test=3, seed=2)
    rows, report = load_prompt_rows(DataConfig(train_files=[str(paths["train"])]), progress=False)
    assert (report.total, report.kept, report.skipped) == (15, 15, {})
    items = generate_items(15, seed=2, split="train")
    assert [(r.id, r.question, r.answer) for r in rows] == [(i.id, i.question, i.answer) for i in items]
    assert list(open_images(rows[0])[0].getdata()) == list(items[0].image.getdata())
    processor = AutoProcessor.from_pretrained(tiny_checkpoint("gqa"))
    req = to_request(rows[0], processor.tokenizer, "srpo")
    no_image = to_request(
        rows[0].__class__(rows[0].id, rows[0].question, rows[0].answer, ()), processor.tokenizer, "srpo"
    )
    # 56 px -> 4x4 patches -> 2x2 merged = 4 image tokens (+ vision start/end).
    assert prompt_token_count(processor, req) - prompt_token_count(processor, no_image) == 4 + 2


def test_bad_sizes_and_foreign_directories_are_refused(tmp_path: Path) -> None:
    for size in (28, 60, 70):
        with pytest.raises(ValueError, match="multiple of 28"):
            write_synthetic_task(tmp_path / "x", n_train=1, n_test=1, seed=0, image_size=size)
    with pytest.raises(ValueError, match="n_train"):
        write_synthetic_task(tmp_path / "x", n_train=-1, n_test=1, seed=0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match=r"thesis\.tex"):
        write_synthetic_task(mine, n_train=1, n_test=1, seed=0)
    assert (mine / "thesis.tex").read_text() == "precious"
    out = tmp_path / "task"
    write_synthetic_task(out, n_train=6, n_test=0, seed=0)
    write_synthetic_task(out, n_train=3, n_test=3, seed=0)  # a previous task is replaced
    assert len(list((out / "images").iterdir())) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory is left"


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.main(["--out", str(tmp_path / "cli"), "--n-train", "6", "--n-test", "3", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "train.jsonl: 6 rows (arith 2, bars 2, count 2)" in out and "test.jsonl: 3 rows" in out
    assert tree_bytes(tmp_path / "cli") == tree_bytes(
        write_synthetic_task(tmp_path / "api", n_train=6, n_test=3, seed=4)["train"].parent
    )
    with pytest.raises(SystemExit) as exit_:
        synthetic.main(["--help"])
    assert exit_.value.code == 0 and "--n-train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        synthetic.main(["--out", str(tmp_path / "bad"), "--image-size", "57"])
    assert exit_.value.code == 2 and "multiple of 28" in capsys.readouterr().err
