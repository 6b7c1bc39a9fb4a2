"""RL prompt data: loading jsonl/parquet with path and embedded images, bad-row reports, the clear
errors, chat prompts with images in place, prompt token counts, and the system prompts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image
from transformers import AutoProcessor

from srpo_mcore.config import DataConfig
from srpo_mcore.data.rl_dataset import (
    DataError,
    LoadReport,
    PromptRow,
    chat_prompt,
    load_prompt_rows,
    open_images,
    prompt_token_count,
    to_request,
    user_content,
)
from srpo_mcore.data.system_prompts import (
    PLAIN_EXAMPLE,
    PLAIN_SYSTEM_PROMPT,
    SRPO_EXAMPLE,
    SRPO_SYSTEM_PROMPT,
    system_prompt,
)
from srpo_mcore.rl.rewards import parse_response, verify_answer

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def png_bytes(color: tuple[int, ...], size: tuple[int, int] = (28, 28), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (28, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color, size))
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(*files: Path, **kw: Any) -> tuple[list[PromptRow], LoadReport]:
    processor = kw.pop("processor", None)
    return load_prompt_rows(DataConfig(train_files=[str(f) for f in files], **kw), progress=False, processor=processor)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint: Any) -> Any:
    return AutoProcessor.from_pretrained(tiny_checkpoint("gqa"))


# --------------------------------------------------------------------------------------------
# System prompts
# --------------------------------------------------------------------------------------------


def test_srpo_system_prompt_example_is_format_valid_and_correct() -> None:
    example = SRPO_SYSTEM_PROMPT.splitlines()[-1]
    assert example == SRPO_EXAMPLE, "the prompt ends with its one-line worked example"
    parsed = parse_response(example)
    assert parsed.is_srpo_format
    assert parsed.tags() == ("think", "answer", "reflection", "think", "answer")
    assert parsed.first_answer is not None and parsed.last_answer is not None
    assert verify_answer(parsed.first_answer, "2").correct and verify_answer(parsed.last_answer, "2").correct
    assert "1+1" in SRPO_SYSTEM_PROMPT and "\\boxed{}" in SRPO_SYSTEM_PROMPT
    # The description names the blocks in the order of the format.
    desc = SRPO_SYSTEM_PROMPT.splitlines()[0]
    pos = [desc.find("<think>"), desc.find("<answer>"), desc.find("<reflection>"), desc.rfind("<think>")]
    assert -1 not in pos and pos == sorted(pos) and desc.rfind("<answer>") > pos[-1]


def test_plain_system_prompt_example_is_single_attempt() -> None:
    example = PLAIN_SYSTEM_PROMPT.splitlines()[-1]
    assert example == PLAIN_EXAMPLE
    parsed = parse_response(example)
    assert parsed.is_grpo_format and not parsed.is_srpo_format
    assert "<reflection>" not in PLAIN_SYSTEM_PROMPT and "\\boxed{}" in PLAIN_SYSTEM_PROMPT


def test_system_prompt_lookup() -> None:
    assert system_prompt("srpo") == SRPO_SYSTEM_PROMPT
    assert system_prompt("plain") == PLAIN_SYSTEM_PROMPT
    with pytest.raises(ValueError, match=r"data\.prompt='grpo'"):
        system_prompt("grpo")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_jsonl_with_image_paths_and_numeric_answers(tmp_path: Path) -> None:
    red = write_png(tmp_path / "data" / "img" / "red.png")
    blue = write_png(tmp_path / "elsewhere" / "blue.png", (0, 0, 255))
    data = write_jsonl(
        tmp_path / "data" / "train.jsonl",
        [
            {"id": 7, "question": "Q1", "answer": 3, "images": ["img/red.png"]},  # relative, list
            {"id": "b", "question": "Q2", "answer": 2.5, "images": str(blue)},  # absolute, bare string
            {"id": "c", "question": "Q3", "answer": "  B ", "images": ["img/red.png", str(blue)]},
            {"id": "d", "question": "Q4", "answer": 4.0, "images": []},  # text-only
            {"id": "e", "question": "Q5", "answer": "x", "images": None},
        ],
    )
    rows, report = load(data)
    assert (report.total, report.kept, report.skipped) == (5, 5, {})
    assert [r.id for r in rows] == ["7", "b", "c", "d", "e"]
    assert [r.answer for r in rows] == ["3", "2.5", "B", "4", "x"]
    assert rows[0].images == (str(red.resolve()),)
    assert rows[1].images == (str(blue.resolve()),)
    assert rows[2].images == (str(red.resolve()), str(blue.resolve()))
    assert rows[3].images == () and rows[4].images == ()
    assert all(Path(p).is_absolute() for r in rows for p in r.images)
    (im,) = open_images(rows[1])
    assert im.mode == "RGB" and im.size == (28, 28) and im.getpixel((0, 0)) == (0, 0, 255)


def test_image_root_wins_over_the_data_file_directory(tmp_path: Path) -> None:
    img = write_png(tmp_path / "root" / "pics" / "x.png")
    data = write_jsonl(
        tmp_path / "data" / "t.jsonl", [{"id": "a", "question": "q", "answer": "1", "images": ["pics/x.png"]}]
    )
    rows, _ = load(data, image_root=str(tmp_path / "root"))
    assert rows[0].images == (str(img.resolve()),)
    with pytest.raises(DataError, match="missing_image"):  # resolved next to the data file: not there
        load(data)


def test_parquet_with_embedded_images(tmp_path: Path) -> None:
    features = datasets.Features(
        {
            "uid": datasets.Value("string"),
            "problem": datasets.Value("string"),
            "solution": datasets.Value("int64"),
            "pics": datasets.List(datasets.Image()),
        }
    )
    red, green = Image.new("RGB", (28, 56), (255, 0, 0)), Image.new("RGB", (56, 28), (0, 255, 0))
    ds = datasets.Dataset.from_dict(
        {"uid": ["p0", "p1"], "problem": ["two", "none"], "solution": [3, 12], "pics": [[red, green], []]},
        features=features,
    )
    path = tmp_path / "train.parquet"
    ds.to_parquet(str(path))
    rows, report = load(path, id_field="uid", question_field="problem", answer_field="solution", image_field="pics")
    assert (report.kept, report.skipped) == (2, {})
    assert [r.answer for r in rows] == ["3", "12"]
    assert all(isinstance(ref, bytes) for ref in rows[0].images) and rows[1].images == ()
    ims = open_images(rows[0])
    assert [im.size for im in ims] == [(28, 56), (56, 28)]
    assert ims[0].getpixel((5, 5)) == (255, 0, 0) and ims[1].getpixel((5, 5)) == (0, 255, 0)


def test_parquet_single_image_dict_and_raw_bytes_columns(tmp_path: Path) -> None:
    # A single Image feature (not a list), and raw bytes in a binary column.
    ds = datasets.Dataset.from_dict(
        {"id": ["a"], "question": ["q"], "answer": ["A"], "image": [Image.new("RGB", (28, 28), (1, 2, 3))]},
        features=datasets.Features(
            {k: datasets.Value("string") for k in ("id", "question", "answer")} | {"image": datasets.Image()}
        ),
    )
    single = tmp_path / "single.parquet"
    ds.to_parquet(str(single))
    rows, _ = load(single, image_field="image")
    assert open_images(rows[0])[0].getpixel((0, 0)) == (1, 2, 3)

    raw = tmp_path / "raw.parquet"
    datasets.Dataset.from_dict(
        {"id": ["r"], "question": ["q"], "answer": ["1"], "images": [[png_bytes((9, 8, 7))]]}
    ).to_parquet(str(raw))
    rows, _ = load(raw)
    assert rows[0].images == (png_bytes((9, 8, 7)),)


def test_transparent_images_are_composited_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    path.write_bytes(png_bytes((0, 0, 0, 0), mode="RGBA"))
    row = PromptRow("a", "q", "1", (str(path),))
    assert open_images(row)[0].getpixel((0, 0)) == (255, 255, 255)


def test_directory_in_name_order_and_row_numbers_as_ids(tmp_path: Path) -> None:
    d = tmp_path / "shards"
    write_jsonl(d / "b.jsonl", [{"question": "b0", "answer": "1", "images": []}])
    write_jsonl(
        d / "a.jsonl",
        [{"question": "a0", "answer": "1", "images": []}, {"question": "a1", "answer": "2", "images": []}],
    )
    (d / "notes.txt").write_text("not data")
    (d / ".hidden.jsonl").write_text("{broken")
    rows, report = load(d)
    assert [r.question for r in rows] == ["a0", "a1", "b0"]
    assert [r.id for r in rows] == ["0", "1", "2"], "no id column: the row number across files"
    assert report.total == 3


def test_every_bad_row_reason_is_reported_by_id_and_skipped(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "truncated.png").write_bytes(png_bytes((1, 2, 3), (56, 56))[:-20])
    ok = ["ok.png"]
    data = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"id": "good1", "question": "q", "answer": "1", "images": ok},
            {"id": "noimg", "question": "q", "answer": "1", "images": ["nope.png"]},
            {"id": "blankpath", "question": "q", "answer": "1", "images": [""]},
            {"id": "corrupt", "question": "q", "answer": "1", "images": ["corrupt.png"]},
            {"id": "trunc", "question": "q", "answer": "1", "images": ["ok.png", "truncated.png"]},
            {"id": "emptyq", "question": "   ", "answer": "1", "images": ok},
            {"id": "noneq", "question": None, "answer": "1", "images": ok},
            {"id": "noqkey", "answer": "1", "images": ok},
            {"id": "emptya", "question": "q", "answer": "", "images": ok},
            {"id": "nonea", "question": "q", "answer": None, "images": ok},
            {"id": "good1", "question": "q", "answer": "2", "images": ok},  # duplicate of the first
            {"id": "lista", "question": "q", "answer": ["1", "2"], "images": ok},
            {"id": "numimg", "question": "q", "answer": "1", "images": [5]},
            {"id": "boola", "question": "q", "answer": True, "images": ok},
            {"id": None, "question": "q", "answer": "1", "images": ok},
            {"id": "markers", "question": "<image> vs <image>", "answer": "1", "images": ok},
            {"id": "good2", "question": "<image> what?", "answer": 0, "images": ok},
        ],
    )
    rows, report = load(data)
    assert [r.id for r in rows] == ["good1", "good2"]
    assert rows[0].answer == "1", "the first of two rows with one id is kept"
    assert rows[1].answer == "0", "a zero gold is not empty"
    assert report.skipped == {
        "missing_image": ["noimg", "blankpath"],
        "unreadable_image": ["corrupt", "trunc"],
        "empty_question": ["emptyq", "noneq", "noqkey"],
        "empty_answer": ["emptya", "nonea"],
        "duplicate_id": ["good1"],
        "bad_row": ["lista", "numimg", "boola"],
        "missing_id": ["t.jsonl#14"],
        "image_marker_mismatch": ["markers"],
    }
    assert (report.total, report.kept, report.num_skipped) == (17, 2, 15)
    summary = report.summary()
    assert summary.splitlines()[0] == "prompt rows: 17 read, 2 kept, 15 skipped"
    for reason, ids in report.skipped.items():
        (line,) = [ln for ln in summary.splitlines() if ln.split()[0] == reason]
        assert line.split()[1] == str(len(ids)) and ids[0] in line


def test_summary_shows_only_the_first_ids() -> None:
    report = LoadReport(total=9, kept=1, skipped={"missing_image": [f"r{i}" for i in range(8)]})
    summary = report.summary()
    assert "r0, r1, r2, r3, r4, …" in summary and "r5" not in summary
    assert "8" in summary.splitlines()[1]


def test_too_long_prompts_are_skipped_when_a_processor_is_given(tmp_path: Path, processor: Any) -> None:
    write_png(tmp_path / "big.png", size=(224, 224))  # 8x8 merged patches = 64 image tokens
    data = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"id": "short", "question": "q", "answer": "1", "images": []},
            {"id": "long", "question": "q", "answer": "1", "images": ["big.png", "big.png"]},
        ],
    )
    rows, report = load(data)
    short = prompt_token_count(processor, to_request(rows[0], processor.tokenizer, "srpo"))
    long = prompt_token_count(processor, to_request(rows[1], processor.tokenizer, "srpo"))
    assert long == short + 2 * (64 + 2)  # image tokens plus vision start/end, per image
    rows, report = load(data, processor=processor, max_prompt_tokens=short + 10)
    assert [r.id for r in rows] == ["short"] and report.skipped == {"too_long": ["long"]}
    rows, report = load(data, processor=processor, max_prompt_tokens=long)
    assert report.kept == 2


def test_progress_bar_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": "a", "question": "q", "answer": "1", "images": []}
    load_prompt_rows(DataConfig(train_files=[str(write_jsonl(tmp_path / "t.jsonl", [row]))]), progress=False)
    err = capsys.readouterr().err
    assert "validating prompts" not in err and "indexing" not in err
    load_prompt_rows(DataConfig(train_files=[str(write_jsonl(tmp_path / "u.jsonl", [row]))]), progress=True)
    err = capsys.readouterr().err
    assert "validating prompts" in err and "indexing u.jsonl" in err


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_empty_train_files_names_the_field() -> None:
    with pytest.raises(DataError, match=r"data\.train_files is empty"):
        load_prompt_rows(DataConfig(train_files=[]), progress=False)


def test_missing_file_and_unsupported_extension_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.train_files: .*nope\.jsonl does not exist"):
        load(tmp_path / "nope.jsonl")
    csv = tmp_path / "rows.csv"
    csv.write_text("id,question,answer\n")
    with pytest.raises(DataError, match=r"rows\.csv has unsupported extension '\.csv'"):
        load(csv)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"directory .*empty_dir holds no data files"):
        load(tmp_path / "empty_dir")


def test_invalid_jsonl_and_parquet_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q", "answer": "1", "images": []}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl is not a valid jsonl file"):
        load(bad)
    pq = tmp_path / "bad.parquet"
    pq.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet is not a valid parquet file"):
        load(pq)


@pytest.mark.parametrize(
    ("drop", "field"), [("answer", "answer_field"), ("question", "question_field"), ("images", "image_field")]
)
def test_missing_column_names_column_field_and_file(tmp_path: Path, drop: str, field: str) -> None:
    row = {"id": "a", "question": "q", "answer": "1", "images": []}
    del row[drop]
    data = write_jsonl(tmp_path / "cols.jsonl", [row])
    with pytest.raises(DataError) as err:
        load(data)
    msg = str(err.value)
    assert f"data.{field}={drop!r} not in columns" in msg and str(data) in msg
    assert all(repr(c) in msg for c in row), "the message lists the columns that are there"


def test_zero_rows_kept_includes_the_summary(tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"id": "a", "question": "q", "answer": "1", "images": ["gone.png"]},
            {"id": "b", "question": "", "answer": "1"},
        ],
    )
    with pytest.raises(DataError) as err:
        load(data)
    msg = str(err.value)
    assert "no usable prompt rows" in msg and str(data) in msg
    assert "missing_image" in msg and "empty_question" in msg and "2 read, 0 kept" in msg
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="0 read, 0 kept"):
        load(empty)


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def test_chat_prompt_puts_images_before_the_text(processor: Any) -> None:
    row = PromptRow("r", "How many?", "3", (png_bytes((0, 0, 0)), png_bytes((1, 1, 1))))
    text = chat_prompt(row, processor.tokenizer, "srpo")
    assert text == (
        f"<|im_start|>system\n{SRPO_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{IMG}{IMG}How many?<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = chat_prompt(row, processor.tokenizer, "plain")
    assert PLAIN_SYSTEM_PROMPT in plain and SRPO_SYSTEM_PROMPT not in plain
    with pytest.raises(ValueError, match=r"data\.prompt"):
        chat_prompt(row, processor.tokenizer, "other")


def test_chat_prompt_puts_images_at_the_markers(processor: Any) -> None:
    row = PromptRow("r", "<image>\nCompare the left <image> with this one.", "A", (b"x", b"y"))
    text = chat_prompt(row, processor.tokenizer, "plain")
    assert text.endswith(
        f"<|im_start|>user\n{IMG}Compare the left {IMG} with this one.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<image>" not in text and text.count("<|image_pad|>") == 2
    assert user_content("a <image> b", 1) == [
        {"type": "text", "text": "a "},
        {"type": "image"},
        {"type": "text", "text": " b"},
    ]
    with pytest.raises(ValueError, match="2 <image> markers for 1 images"):
        user_content("<image><image>", 1)


def test_to_request_carries_prompt_rgb_images_and_id(tmp_path: Path, processor: Any) -> None:
    gray = tmp_path / "g.png"
    Image.new("L", (28, 28), 100).save(gray)
    row = PromptRow("row-9", "q", "1", (str(gray), png_bytes((5, 6, 7))))
    req = to_request(row, processor.tokenizer, "srpo")
    assert req.key == "row-9" and req.prompt == chat_prompt(row, processor.tokenizer, "srpo")
    assert [im.mode for im in req.images] == ["RGB", "RGB"]
    assert req.images[0].getpixel((0, 0)) == (100, 100, 100) and req.images[1].getpixel((0, 0)) == (5, 6, 7)


def test_prompt_token_count_matches_processor_and_grows_with_images(processor: Any) -> None:
    img = png_bytes((10, 20, 30), (56, 84))
    counts = []
    for n in range(3):
        req = to_request(PromptRow("r", "Count the shapes.", "2", (img,) * n), processor.tokenizer, "srpo")
        count = prompt_token_count(processor, req)
        # Independently: the template's text tokens, with each <|image_pad|> expanded to the
        # merged patch grid (56x84 px -> 4x6 patches of 14 px -> 2x3 after the 2x2 merge = 6 tokens).
        text_tokens = len(processor.tokenizer(req.prompt)["input_ids"])
        assert count == text_tokens + n * (6 - 1)
        out = processor(text=[req.prompt], images=list(req.images) or None)
        assert count == len(out["input_ids"][0])
        counts.append(count)
    assert counts[0] < counts[1] < counts[2] and counts[2] - counts[1] == counts[1] - counts[0] == 2 + 6
