"""A tiny data root in each benchmark's published column schema, for tests and smoke runs.

Owns ``write_fixture_root``: a few hand-written rows per benchmark split, written as parquet with
embedded PNG images exactly where the hub releases put their files (see ``benchmarks``). The rows
cover every answer type the loaders distinguish. Does not own reading them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image


def png(color: tuple[int, int, int], size: tuple[int, int] = (28, 28)) -> bytes:
    """A one-colour PNG."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _img(color: tuple[int, int, int], path: str) -> dict[str, Any]:
    return {"bytes": png(color), "path": path}


def mathvista_rows() -> list[dict[str, Any]]:
    meta = {"split": "testmini", "source": "fixture", "task": "geometry problem solving", "grade": "high school"}
    return [
        {
            "pid": "1",
            "question": "Which shape is red?",
            "image": "images/1.jpg",
            "decoded_image": _img((255, 0, 0), "1.jpg"),
            "choices": ["circle", "square", "triangle"],
            "unit": None,
            "precision": None,
            "answer": "square",
            "question_type": "multi_choice",
            "answer_type": "text",
            "metadata": meta,
            "query": "Hint: ... Question: Which shape is red?",
        },
        {
            "pid": "2",
            "question": "How many apples are there?",
            "image": "images/2.jpg",
            "decoded_image": _img((0, 255, 0), "2.jpg"),
            "choices": None,
            "unit": None,
            "precision": None,
            "answer": "1200",
            "question_type": "free_form",
            "answer_type": "integer",
            "metadata": {**meta, "task": "figure question answering"},
            "query": "How many apples are there?",
        },
        {
            "pid": "3",
            "question": "What is the length of side AB?",
            "image": "images/3.jpg",
            "decoded_image": _img((0, 0, 255), "3.jpg"),
            "choices": None,
            "unit": "cm",
            "precision": 1.0,
            "answer": "3.5",
            "question_type": "free_form",
            "answer_type": "float",
            "metadata": meta,
            "query": "What is the length of side AB?",
        },
    ]


def mathverse_rows() -> list[dict[str, Any]]:
    meta = {"split": "testmini", "source": "fixture", "subject": "Plane Geometry", "subfield": "Angle"}
    q = "As shown in the figure, angle 1 = 50°. Find angle 2.\nChoices:\nA:40°\nB:50°\nC:130°\nD:140°"
    return [
        {
            "sample_index": "1",
            "problem_index": "1",
            "problem_version": "Text Dominant",
            "question": q,
            "image": _img((10, 20, 30), "1.png"),
            "answer": "C",
            "question_type": "multi-choice",
            "metadata": meta,
            "query_wo": q,
            "query_cot": q,
            "question_for_eval": q,
        },
        {
            "sample_index": "6",
            "problem_index": "1",
            "problem_version": "Vision Only",
            "question": "",
            "image": _img((30, 20, 10), "6.png"),
            "answer": "\\frac{3}{2}",
            "question_type": "free-form",
            "metadata": meta,
            "query_wo": "According to the question shown in the image, please directly answer the question.",
            "query_cot": "",
            "question_for_eval": "",
        },
    ]


def mathvision_rows(split: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{split}-1",
            "question": "<image1>\nWhich figure has the most sides?",
            "options": ["A", "B", "C", "D", "E"],
            "image": "images/1.jpg",
            "decoded_image": _img((200, 10, 10), "1.jpg"),
            "answer": "D",
            "solution": None,
            "level": 2,
            "subject": "metric geometry - angle",
        },
        {
            "id": f"{split}-2",
            "question": "How many dots are in the picture? <image1>",
            "options": [],
            "image": "images/2.jpg",
            "decoded_image": _img((10, 200, 10), "2.jpg"),
            "answer": "7",
            "solution": None,
            "level": 1,
            "subject": "counting",
        },
    ]


def mmmu_pro_standard_rows() -> list[dict[str, Any]]:
    options = [f"option {i}" for i in range(10)]
    empty = {f"image_{k}": None for k in range(1, 8)}
    return [
        {
            "id": "test_Art_1",
            "question": "Look at <image 1> and <image 2>. Which period is shown in <image 2>?",
            "options": repr(options),
            "explanation": "",
            **empty,
            "image_1": _img((1, 2, 3), "a.png"),
            "image_2": _img((4, 5, 6), "b.png"),
            "img_type": "['Paintings']",
            "answer": "C",
            "topic_difficulty": "Medium",
            "subject": "Art",
        },
        {
            "id": "test_Math_2",
            "question": "What is x in <image 1>?",
            "options": repr(["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]),
            "explanation": "",
            **empty,
            "image_1": _img((7, 8, 9), "c.png"),
            "img_type": "['Diagrams']",
            "answer": "J",
            "topic_difficulty": "Hard",
            "subject": "Math",
        },
    ]


def mmmu_pro_vision_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": "test_Art_1",
            "image": _img((9, 9, 9), "s1.png"),
            "options": repr([f"option {i}" for i in range(10)]),
            "answer": "C",
            "subject": "Art",
        },
        {
            "id": "test_Math_2",
            "image": _img((8, 8, 8), "s2.png"),
            "options": repr([str(i) for i in range(1, 11)]),
            "answer": "J",
            "subject": "Math",
        },
    ]


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` as one parquet file (parents created)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_fixture_root(root: str | Path) -> Path:
    """Write the fixture data root (all four benchmarks, every split the loaders read) under `root`."""
    root = Path(root)
    write_parquet(root / "MathVista/data/testmini-00000-of-00001.parquet", mathvista_rows())
    write_parquet(root / "MathVerse/testmini.parquet", mathverse_rows())
    for split in ("test", "testmini"):
        write_parquet(root / f"MathVision/data/{split}-00000-of-00001.parquet", mathvision_rows(split))
    write_parquet(root / "MMMU_Pro/standard (10 options)/test-00000-of-00001.parquet", mmmu_pro_standard_rows())
    write_parquet(root / "MMMU_Pro/vision/test-00000-of-00001.parquet", mmmu_pro_vision_rows())
    return root
