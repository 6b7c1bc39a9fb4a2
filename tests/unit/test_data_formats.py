"""The data formats users have (chat, ShareGPT, LLaVA, EasyR1 parquet) give the same prompts, images
and golds as the equivalent rows file; malformed rows of each kind are skipped by reason; SFT rows in
ShareGPT form give the same training sequences and loss masks; the index and row checks are cached
by content (and rebuilt when it changes); the loaded rows hold no image bytes until a row is used."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image
from transformers import AutoProcessor

from srpo_mcore.config import DataConfig
from srpo_mcore.data.formats import detect_format
from srpo_mcore.data.rl_dataset import DataError, PromptRow, chat_prompt, load_prompt_rows, open_images, to_request


def png(color: tuple[int, int, int], size: tuple[int, int] = (28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write(path: Path, rows: list[dict[str, Any]], *, array: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(rows) if array else "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text)
    return path


def load(*files: Path, **kw: Any) -> tuple[Any, Any]:
    processor = kw.pop("processor", None)
    answer_from = kw.pop("answer_from", "gold")
    cfg = DataConfig(train_files=[str(f) for f in files], **kw)
    return load_prompt_rows(cfg, progress=False, processor=processor, answer_from=answer_from)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint: Any) -> Any:
    return AutoProcessor.from_pretrained(tiny_checkpoint("gqa"))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, color, size in [("red", (255, 0, 0), (28, 56)), ("blue", (0, 0, 255), (56, 28))]:
        out[name] = tmp_path / "pics" / f"{name}.png"
        out[name].parent.mkdir(exist_ok=True)
        out[name].write_bytes(png(color, size))
    return out


QUESTIONS = [  # id, question (rows layout, markers in place), gold, image names
    ("t", "What is 2 + 3?", "5", []),
    ("one", "<image>How many red squares?", "1", ["red"]),
    ("two", "Compare <image> and <image>: which is wider?", "B", ["red", "blue"]),
]


def rows_file(tmp_path: Path, images: dict[str, Path]) -> Path:
    return write(
        tmp_path / "rows.jsonl",
        [{"id": i, "question": q, "answer": a, "images": [str(images[n]) for n in ims]} for i, q, a, ims in QUESTIONS],
    )


def chat_parts(question: str, ims: list[str], images: dict[str, Path]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    pieces = question.split("<image>")
    for k, piece in enumerate(pieces):
        if k:
            parts.append({"type": "image", "image": f"file://{images[ims[k - 1]]}"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def assert_same_prompts(got: Any, want: Any, tokenizer: Any) -> None:
    assert [r.id for r in got] == [r.id for r in want]
    assert [r.answer for r in got] == [r.answer for r in want]
    for g, w in zip(got, want, strict=True):
        assert chat_prompt(g, tokenizer, "srpo") == chat_prompt(w, tokenizer, "srpo"), g.id
        gi, wi = open_images(g), open_images(w)
        assert [im.tobytes() for im in gi] == [im.tobytes() for im in wi] and len(gi) == len(w.images), g.id


def test_every_format_gives_the_prompts_images_and_golds_of_the_rows_file(
    tmp_path: Path, images: dict[str, Path], processor: Any
) -> None:
    want, _ = load(rows_file(tmp_path, images))
    tok = processor.tokenizer
    chat = write(
        tmp_path / "chat.jsonl",
        [
            {"id": i, "message": json.dumps([{"role": "user", "content": chat_parts(q, ims, images)}]), "answer": a}
            for i, q, a, ims in QUESTIONS
        ],
    )
    sharegpt = write(  # LLaMA-Factory: a JSON array, role/content, relative image paths
        tmp_path / "sharegpt.json",
        [
            {
                "id": i,
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"The answer is {a}."}],
                "answer": a,
                "images": [f"pics/{n}.png" for n in ims],
            }
            for i, q, a, ims in QUESTIONS
        ],
        array=True,
    )
    sharegpt_gold_turn = write(  # from/value, no answer column: the assistant turn is the gold
        tmp_path / "gold_turn.jsonl",
        [
            {
                "id": i,
                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
                "images": [str(images[n]) for n in ims],
            }
            for i, q, a, ims in QUESTIONS
        ],
    )
    llava = write(  # one image per row at most: the LLaVA `image` column
        tmp_path / "llava.json",
        [
            {
                "id": i,
                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
                "image": f"{n}.png",
            }
            for i, q, a, (n,) in [(i, q, a, ims) for i, q, a, ims in QUESTIONS if len(ims) == 1]
        ],
        array=True,
    )
    easyr1 = tmp_path / "easyr1.parquet"  # as HF datasets writes it: images embedded as {"bytes", "path"}
    datasets.Dataset.from_dict(
        {
            "id": [i for i, *_ in QUESTIONS],
            "problem": [q for _, q, _, _ in QUESTIONS],
            "answer": [a for *_, a, _ in QUESTIONS],
            "images": [[{"bytes": images[n].read_bytes(), "path": None} for n in ims] for *_, ims in QUESTIONS],
        },
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "problem": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "images": datasets.List(datasets.Image()),
            }
        ),
    ).to_parquet(str(easyr1))
    for path, fmt in [(chat, "chat"), (sharegpt, "sharegpt"), (sharegpt_gold_turn, "sharegpt"), (easyr1, "easyr1")]:
        got, report = load(path, image_root=str(tmp_path) if path == sharegpt else None)
        assert report.formats == {path.name: fmt} and report.skipped == {}, path.name
        assert_same_prompts(got, want, tok)
        explicit, _ = load(path, format=fmt, image_root=str(tmp_path) if path == sharegpt else None)
        assert_same_prompts(explicit, want, tok)
    got, report = load(llava, image_root=str(tmp_path / "pics"))
    assert report.formats == {"llava.json": "llava"}
    assert_same_prompts(got, [want[1]], tok)
    embedded, _ = load(easyr1)
    assert all(isinstance(ref, bytes) for r in embedded for ref in r.images)
    _, report = load(chat, tmp_path / "rows.jsonl", format="auto")  # one id per row across files
    assert report.formats == {"chat.jsonl": "chat", "rows.jsonl": "rows"}
    assert report.skipped == {"duplicate_id": ["t", "one", "two"]}


def test_detection_and_explicit_formats_name_what_is_missing(tmp_path: Path) -> None:
    assert detect_format(["message", "answer"]) == "chat"
    assert detect_format(["conversations", "image", "id"]) == "llava"
    assert detect_format(["conversations", "images"]) == "sharegpt"
    assert detect_format(["messages"]) == "sharegpt"
    assert detect_format(["problem", "answer", "images"]) == "easyr1"
    assert detect_format(["question", "answer", "images"]) == "rows"
    data = write(tmp_path / "t.jsonl", [{"question": "q", "answer": "1", "images": []}])
    with pytest.raises(DataError, match=r"data\.format=chat: column 'message' not in columns .*t\.jsonl"):
        load(data, format="chat")
    with pytest.raises(DataError, match=r"data\.format=easyr1: column 'problem' not in columns"):
        load(data, format="easyr1")


def test_malformed_rows_of_each_format_are_skipped_by_reason(tmp_path: Path, images: dict[str, Path]) -> None:
    red = f"file://{images['red']}"
    user = {"role": "user", "content": [{"type": "image", "image": red}, {"type": "text", "text": "q"}]}
    chat = write(
        tmp_path / "chat.jsonl",
        [
            {"id": "ok", "message": json.dumps([user]), "answer": "1"},
            {"id": "notjson", "message": "[{'role': 'user'", "answer": "1"},
            {"id": "role", "message": json.dumps([{"role": "tool", "content": "x"}, user]), "answer": "1"},
            {"id": "twoturns", "message": json.dumps([user, {"role": "assistant", "content": "a"}, user]), "answer": "1"},
            {"id": "noimage", "message": json.dumps([{"role": "user", "content": [{"type": "image"}]}]), "answer": "1"},
            {"id": "remote", "message": json.dumps([{"role": "user", "content": [
                {"type": "image", "image": "https://example.com/x.png"}, {"type": "text", "text": "q"}]}]), "answer": "1"},
            {"id": "gone", "message": json.dumps([{"role": "user", "content": [
                {"type": "image", "image": "file:///no/such.png"}, {"type": "text", "text": "q"}]}]), "answer": "1"},
            {"id": "nogold", "message": json.dumps([user]), "answer": None},
            {"id": "noquestion", "message": json.dumps([{"role": "user", "content": [{"type": "text", "text": " "}]}]),
             "answer": "1"},
        ],
    )  # fmt: skip
    _, report = load(chat)
    assert report.kept == 1
    assert report.skipped == {
        "bad_conversation": ["notjson", "role", "twoturns", "noimage"],
        "remote_image": ["remote"],
        "missing_image": ["gone"],
        "empty_answer": ["nogold"],
        "empty_question": ["noquestion"],
    }
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 9)
    sharegpt = write(
        tmp_path / "sg.jsonl",
        [
            {"id": "ok", "messages": [{"role": "user", "content": "<image>q"}], "images": [str(images["red"])]},
            {"id": "nouser", "messages": [{"role": "assistant", "content": "a"}], "images": []},
            {"id": "markers", "messages": [{"role": "user", "content": "<image><image>q"}],
             "images": [str(images["red"])]},
            {"id": "corrupt", "messages": [{"role": "user", "content": "q"}], "images": ["corrupt.png"]},
            {"id": "notlist", "messages": "hello", "images": []},
        ],
    )  # fmt: skip
    with pytest.raises(DataError, match="empty_answer"):  # no answer column and no assistant turn: no gold
        load(sharegpt)
    for row in (rows := [json.loads(line) for line in sharegpt.read_text().splitlines()]):
        row["answer"] = "1"
    _, report = load(write(sharegpt, rows))
    assert report.kept == 1
    assert report.skipped == {
        "bad_conversation": ["nouser", "notlist"],
        "image_marker_mismatch": ["markers"],
        "unreadable_image": ["corrupt"],
    }
    llava = write(
        tmp_path / "llava.jsonl",
        [
            {"id": "ok", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "2"}],
             "image": "pics/red.png"},
            {"id": "gone", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "2"}],
             "image": "pics/none.png"},
            {"id": "corrupt", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "2"}],
             "image": "corrupt.png"},
            {"id": "nogpt", "conversations": [{"from": "human", "value": "q"}], "image": "pics/red.png"},
        ],
    )  # fmt: skip
    _, report = load(llava)
    assert report.skipped == {"missing_image": ["gone"], "empty_answer": ["nogpt"], "unreadable_image": ["corrupt"]}
    easyr1 = tmp_path / "e.parquet"
    datasets.Dataset.from_dict(
        {"problem": ["q", "", "<image>q"], "answer": ["1", "2", None], "images": [[png((1, 2, 3))], [], []]}
    ).to_parquet(str(easyr1))
    rows, report = load(easyr1)
    assert [r.id for r in rows] == ["0"] and report.skipped == {"empty_question": ["1"], "empty_answer": ["2"]}


def test_system_turns_are_replaced_by_our_prompt_or_kept_with_prompt_none(tmp_path: Path, processor: Any) -> None:
    data = write(
        tmp_path / "sys.jsonl",
        [{"id": "s", "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
          "answer": "4"}],
    )  # fmt: skip
    tok = processor.tokenizer
    (row,) = load(data)[0]
    assert row.system == "Be terse."
    ours = chat_prompt(row, tok, "srpo")
    assert "Be terse." not in ours and ours == chat_prompt(PromptRow("s", "2+2?", "4", ()), tok, "srpo")
    theirs = chat_prompt(row, tok, "none")
    assert theirs.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n2+2?")


def test_sft_rows_in_sharegpt_form_give_the_same_sequences_and_loss_masks(
    tmp_path: Path, images: dict[str, Path], processor: Any
) -> None:
    from srpo_mcore.rl.batch import collate
    from srpo_mcore.sft_trainer import sft_sequence

    responses = ["<think> one </think><answer> \\boxed{5} </answer>", "<think> red </think><answer> 1 </answer>"]
    rows = write(
        tmp_path / "sft_rows.jsonl",
        [
            {"id": "a", "question": "What is 2 + 3?", "response": responses[0], "images": []},
            {"id": "b", "question": "<image>How many?", "response": responses[1], "images": [str(images["red"])]},
        ],
    )
    sharegpt = write(  # LLaMA-Factory SFT data: the assistant turn is the target; a gold column is ignored
        tmp_path / "sft_sharegpt.json",
        [
            {"id": "a", "messages": [{"role": "user", "content": "What is 2 + 3?"},
                                     {"role": "assistant", "content": responses[0]}], "answer": "5", "images": []},
        ],
        array=True,
    )  # fmt: skip
    llava = write(
        tmp_path / "sft_llava.jsonl",
        [{"id": "b", "conversations": [{"from": "human", "value": "<image>How many?"},
                                       {"from": "gpt", "value": responses[1]}], "image": "pics/red.png"}],
    )  # fmt: skip
    want, _ = load(rows, answer_field="response", answer_from="response")
    got = list(load(sharegpt, answer_from="response")[0]) + list(load(llava, answer_from="response")[0])
    assert [r.answer for r in got] == responses
    seqs = [[sft_sequence(r, processor, "srpo") for r in rs] for rs in (want, got)]
    for w, g in zip(*seqs, strict=True):
        assert (w.prompt_ids, w.response_ids) == (g.prompt_ids, g.response_ids)
        assert (w.vision is None) == (g.vision is None)
        if w.vision is not None:
            assert (w.vision.pixel_values == g.vision.pixel_values).all()
    masks = [collate(s, [0, 1], pad_id=0).loss_mask_BS for s in seqs]
    assert masks[0].sum() > 0 and (masks[0] == masks[1]).all()


def test_index_and_checks_are_cached_by_content(tmp_path: Path, images: dict[str, Path], processor: Any) -> None:
    data = rows_file(tmp_path, images)
    cache = tmp_path / "cache"
    rows, _ = load(data, cache_dir=str(cache), processor=processor, max_prompt_tokens=10_000)
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert sum(n.endswith(".arrow") for n in files) == 1 and sum(".checks-" in n for n in files) == 1
    tokens = [len(processor(text=[to_request(r, processor.tokenizer, "srpo").prompt],
                            images=list(open_images(r)) or None)["input_ids"][0]) for r in rows]  # fmt: skip
    again, report2 = load(data, cache_dir=str(cache), processor=processor, max_prompt_tokens=min(tokens))
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files, "nothing rebuilt, another limit"
    assert min(tokens) < max(tokens)
    assert [r.id for r in again] == [r.id for r, t in zip(rows, tokens, strict=True) if t <= min(tokens)]
    assert report2.skipped == {"too_long": [r.id for r, t in zip(rows, tokens, strict=True) if t > min(tokens)]}
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:2]) + "\n")  # new content: a new index
    fewer, _ = load(data, cache_dir=str(cache))
    assert len(fewer) == 2 and sum(p.suffix == ".arrow" for p in cache.iterdir()) == 2
    load(data)
    assert (data.parent / ".srpo-cache").is_dir(), "default cache: next to the data"


def test_rows_hold_no_image_bytes_until_used(tmp_path: Path) -> None:
    big = [png((i, 0, 0), (512, 512)) for i in range(4)]
    data = tmp_path / "emb.parquet"
    datasets.Dataset.from_dict(
        {"problem": [f"q{i}" for i in range(40)], "answer": ["1"] * 40, "images": [[big[i % 4]] for i in range(40)]}
    ).to_parquet(str(data))
    rows, _ = load(data)
    assert sum(len(b) for b in big) * 10 > 40_000
    assert len(pickle.dumps(rows)) < 4_000, "the loaded rows are an index, not the images"
    assert rows[5].images == (big[1],) and isinstance(rows[5], PromptRow)
    clone = pickle.loads(pickle.dumps(rows))  # e.g. sent to another process: reopens the index
    assert clone[7] == rows[7] and len(clone) == 40
    assert rows.positions()["7"] == 7 and rows[rows.positions()["39"]].question == "q39"


def test_inspect_prints_format_skips_images_and_token_histograms(
    tmp_path: Path, images: dict[str, Path], tiny_checkpoint: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from srpo_mcore.data.inspect import main

    data = write(
        tmp_path / "sft.json",
        [
            {"id": "a", "messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "ok"}],
             "images": [str(images["red"])]},
            {"id": "b", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c"}],
             "images": []},
            {"id": "c", "messages": [{"role": "user", "content": "q"}], "images": []},
        ],
        array=True,
    )  # fmt: skip
    assert main([str(data), "--sft", "--model", str(tiny_checkpoint("gqa"))]) == 0
    out = capsys.readouterr().out
    assert "prompt rows: 3 read, 2 kept, 1 skipped" in out and "empty_answer" in out and "e.g. c" in out
    assert "formats: sft.json=sharegpt" in out and "images per row: 0: 1, 1: 1" in out
    assert "prompt tokens (kept rows, <= 1024): min" in out and "(n=2)" in out
    assert "target tokens (assistant turn + end of turn): min" in out
    assert main([str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
