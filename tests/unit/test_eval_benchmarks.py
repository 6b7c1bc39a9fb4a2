"""Benchmark loaders on fixtures in each benchmark's published column schema (parquet with embedded
PNGs; a ``save_to_disk`` Arrow copy), and the clear errors for a bad data root, a missing split, a
missing column and malformed rows."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from srpo_mcore.data.rl_dataset import IMAGE_MARKER
from srpo_mcore.eval.benchmarks import EvalDataError, load_items, parse_benchmarks
from srpo_mcore.eval.fixtures import mathvista_rows, png, write_fixture_root, write_parquet


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture_root(tmp_path_factory.mktemp("evaldata"))


def colour(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").getpixel((0, 0))  # type: ignore[return-value]


def test_mathvista(root: Path) -> None:
    items = load_items("mathvista", "testmini", root)
    assert [(i.id, i.answer_type, i.gold, i.precision, i.unit) for i in items] == [
        ("1", "choice", "B", None, None),
        ("2", "integer", "1200", None, None),
        ("3", "float", "3.5", 1, "cm"),
    ]
    mc = items[0]
    assert mc.options == ("circle", "square", "triangle") and mc.gold_text == "square"
    assert "(B) square" in mc.question and mc.category == "geometry problem solving"
    assert "(Unit: cm)" in items[2].question
    assert [colour(i.images[0]) for i in items] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_mathverse_versions(root: Path) -> None:
    items = load_items("mathverse", "testmini", root)
    assert [(i.id, i.category, i.answer_type, i.gold) for i in items] == [
        ("1", "Text Dominant", "choice", "C"),
        ("6", "Vision Only", "expression", "\\frac{3}{2}"),
    ]
    assert items[0].options == ("40°", "50°", "130°", "140°")
    assert items[1].question.strip()  # empty question of Vision Only -> the official query


def test_mathvision_splits_and_markers(root: Path) -> None:
    test = load_items("mathvision", "test", root)
    mini = load_items("mathvision", "testmini", root)
    assert [i.id for i in test] == ["test-1", "test-2"] and [i.id for i in mini] == ["testmini-1", "testmini-2"]
    mc, free = test
    assert (mc.answer_type, mc.gold, mc.category, mc.meta["level"]) == ("choice", "D", "metric geometry - angle", 2)
    assert "Choices: A, B, C, D, E" in mc.question  # letters-only options are drawn in the image
    assert (free.answer_type, free.gold) == ("expression", "7")
    for it in test:  # <image1> became the loader's marker, one per image
        assert it.question.count(IMAGE_MARKER) == len(it.images) == 1 and "<image1>" not in it.question


def test_mmmu_pro_standard_and_vision(root: Path) -> None:
    std = load_items("mmmu_pro", "standard (10 options)", root)
    art = std[0]
    assert (art.gold, art.gold_text, len(art.options)) == ("C", "option 2", 10)
    # <image 1> and <image 2> placed in order; the second mention of image 2 stays as text
    assert art.question.count(IMAGE_MARKER) == len(art.images) == 2
    assert "image 2?" in art.question and "(J) option 9" in art.question
    assert [colour(b) for b in art.images] == [(1, 2, 3), (4, 5, 6)]
    vis = load_items("mmmu_pro", "vision", root)
    assert [(i.id, i.gold, len(i.images), i.category) for i in vis] == [
        ("test_Art_1", "C", 1, "Art"),
        ("test_Math_2", "J", 1, "Math"),
    ]


def test_limit_and_parse(root: Path) -> None:
    assert len(load_items("mathvista", "testmini", root, limit=2)) == 2
    assert parse_benchmarks("mathvista, mmmu-pro,mathvision:testmini") == [
        ("mathvista", "testmini"),
        ("mmmu_pro", "standard (10 options)"),
        ("mmmu_pro", "vision"),
        ("mathvision", "testmini"),
    ]
    with pytest.raises(ValueError, match="unknown benchmark 'mathqa'"):
        parse_benchmarks("mathqa")
    with pytest.raises(ValueError, match="no split 'dev'"):
        parse_benchmarks("mathvista:dev")


def test_save_to_disk_arrow(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(mathvista_rows()).save_to_disk(str(tmp_path / "MathVista" / "testmini"))
    items = load_items("mathvista", "testmini", tmp_path)
    assert [i.gold for i in items] == ["B", "1200", "3.5"]


def test_image_path_relative_to_benchmark(tmp_path: Path) -> None:
    rows = mathvista_rows()[:1]
    rows[0]["decoded_image"] = None
    (tmp_path / "MathVista/images").mkdir(parents=True)
    (tmp_path / "MathVista/images/1.jpg").write_bytes(png((5, 6, 7)))
    write_parquet(tmp_path / "MathVista/data/testmini-00000-of-00001.parquet", rows)
    assert colour(load_items("mathvista", "testmini", tmp_path)[0].images[0]) == (5, 6, 7)


# -- errors -------------------------------------------------------------------------------------


def test_bad_root(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match=r"--data-root .*nope is not a directory"):
        load_items("mathvista", "testmini", tmp_path / "nope")
    with pytest.raises(EvalDataError, match="mathvista: no directory MathVista under --data-root"):
        load_items("mathvista", "testmini", tmp_path)


def test_missing_split(root: Path, tmp_path: Path) -> None:
    write_parquet(tmp_path / "MathVision/data/testmini-00000-of-00001.parquet", [])
    with pytest.raises(EvalDataError, match=r"no 'test' split under .*MathVision.*data files there: testmini"):
        load_items("mathvision", "test", tmp_path)
    (tmp_path / "MMMU_Pro").mkdir()
    with pytest.raises(EvalDataError, match="no 'vision' configuration directory"):
        load_items("mmmu_pro", "vision", tmp_path)


def test_missing_column(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "precision"} for r in mathvista_rows()]
    f = write_parquet(tmp_path / "MathVista/data/testmini-0.parquet", rows)
    with pytest.raises(EvalDataError, match=rf"{f}: missing column\(s\) precision of the published mathvista"):
        load_items("mathvista", "testmini", tmp_path)


@pytest.mark.parametrize(
    ("row_index", "change", "message"),
    [
        (0, {"answer": "hexagon"}, r"row 0 \(id '1'\): column 'answer' 'hexagon' is not one of the choices"),
        (1, {"decoded_image": {"bytes": b"not a png", "path": None}}, "row 1 .*'decoded_image' is not a readable"),
        (1, {"decoded_image": None, "image": "images/missing.jpg"}, "row 1 .*'image' image file .*missing.jpg"),
        (2, {"answer_type": "complex"}, "row 2 .*'answer_type' unknown answer type 'complex'"),
        (2, {"answer": None}, r"row 2 \(id '3'\): column 'answer' is empty"),
        (0, {"question_type": "essay"}, "row 0 .*'question_type' unknown question type 'essay'"),
    ],
)
def test_malformed_row(tmp_path: Path, row_index: int, change: dict, message: str) -> None:
    rows = mathvista_rows()
    rows[row_index].update(change)
    write_parquet(tmp_path / "MathVista/data/testmini-00000-of-00001.parquet", rows)
    with pytest.raises(EvalDataError, match=r"testmini-00000-of-00001\.parquet: " + message):
        load_items("mathvista", "testmini", tmp_path)


def test_malformed_mmmu_options(tmp_path: Path) -> None:
    from srpo_mcore.eval.fixtures import mmmu_pro_vision_rows

    rows = mmmu_pro_vision_rows()
    rows[1]["options"] = "['a', 'b'"
    write_parquet(tmp_path / "MMMU_Pro/vision/test-00000-of-00001.parquet", rows)
    with pytest.raises(EvalDataError, match=r"row 1 \(id 'test_Math_2'\): column 'options' is not a list literal"):
        load_items("mmmu_pro", "vision", tmp_path)
    rows[1]["options"] = repr(["a", "b"])  # gold J is not among two options
    write_parquet(tmp_path / "MMMU_Pro/vision/test-00000-of-00001.parquet", rows)
    with pytest.raises(EvalDataError, match="column 'answer' 'J' is not the letter of one of 2 options"):
        load_items("mmmu_pro", "vision", tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    f = tmp_path / "MathVista/data/testmini-00000-of-00001.parquet"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"garbage")
    with pytest.raises(EvalDataError, match=r"testmini-00000-of-00001\.parquet: cannot be read as parquet"):
        load_items("mathvista", "testmini", tmp_path)
