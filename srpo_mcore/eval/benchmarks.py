"""Benchmark loaders: MathVista, MathVerse, MathVision and MMMU-Pro from a local data root, offline.

Owns: finding a benchmark's files under ``--data-root`` (the layout of its hub repository, as
``huggingface-cli download --repo-type dataset`` or ``save_to_disk`` leave it), reading them
(parquet, or the Arrow files of ``Dataset.save_to_disk``), checking the published columns, and
turning each row into an ``EvalItem``; and ``EvalDataError``, whose message names the file, the
row and the column for everything that is the data's fault.

Layouts searched (``<root>`` is ``--data-root``; the directory name is matched case-insensitively)::

    <root>/MathVista/data/testmini-*.parquet            pid question choices unit precision answer
                                                         question_type answer_type decoded_image|image metadata
    <root>/MathVerse/testmini*.parquet (any depth)       sample_index problem_index problem_version question
                                                         image answer question_type metadata
    <root>/MathVision/data/{test,testmini}-*.parquet     id question options decoded_image|image answer level subject
    <root>/MMMU_Pro/standard (10 options)/test-*.parquet id question options image_1..image_7 answer subject ...
    <root>/MMMU_Pro/vision/test-*.parquet                id image options answer subject
    <root>/synthetic/{train,test}.jsonl                  id question answer images task
                                                         (``python -m srpo_mcore.data.synthetic --out <root>/synthetic``)

A split's files are those named ``<split>-*``/``<split>.*`` or lying in a directory named
``<split>`` (parquet-converter and ``save_to_disk`` layouts), at any depth below the benchmark's
(or MMMU-Pro configuration's) directory.

Does not own: prompting (``run``), extraction (``extract``) or scoring (``score``).
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from srpo_mcore.data.rl_dataset import IMAGE_MARKER
from srpo_mcore.eval.extract import LETTERS, letter_of
from srpo_mcore.eval.items import AnswerType, EvalItem
from srpo_mcore.rl.rewards.answers import gold_choice


class EvalDataError(ValueError):
    """A benchmark's data cannot be used. The message names the file, row and column at fault."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to find and read one benchmark."""

    name: str
    dirnames: tuple[str, ...]
    """Directory names under the data root (case-insensitive)."""
    splits: tuple[str, ...]
    """Splits (MMMU-Pro: configurations) it can read; the first is the default."""
    required: tuple[str, ...]
    """Columns every split must have (an image column is checked per row)."""
    row_to_item: Callable[[dict[str, Any], str, Path, Path], EvalItem]


type Row = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _bench_dir(root: Path, spec: BenchmarkSpec) -> Path:
    if not root.is_dir():
        raise EvalDataError(f"--data-root {root} is not a directory")
    wanted = {d.lower() for d in spec.dirnames}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    raise EvalDataError(
        f"{spec.name}: no directory {' or '.join(spec.dirnames)} under --data-root {root} "
        f"(found: {', '.join(sorted(p.name for p in root.iterdir())) or 'nothing'})"
    )


def _is_split_file(rel: Path, split: str) -> bool:
    """`rel` (relative to the benchmark directory) is named ``<split>-*`` or lies in a ``<split>/``."""
    s = split.lower()
    return rel.name.lower().startswith((f"{s}-", f"{s}.", f"{s}_")) or s in (p.lower() for p in rel.parts[:-1])


DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl")
"""Files a split may be stored in (jsonl: the package's own synthetic task)."""


def split_files(bench_dir: Path, split: str) -> list[Path]:
    """The parquet/arrow/jsonl files of `split` under `bench_dir`, sorted.

    Raises:
        EvalDataError: There are none (the message lists the splits that are there).
    """
    data = sorted(p for p in bench_dir.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    files = [p for p in data if _is_split_file(p.relative_to(bench_dir), split)]
    if not files:
        seen = sorted({p.name.split("-")[0].split(".")[0] for p in data})
        raise EvalDataError(
            f"no {split!r} split under {bench_dir}: expected {split}-*.parquet (or .arrow) files or a "
            f"{split}/ directory of them; data files there: {', '.join(seen) or 'none'}"
        )
    return files


def read_rows(path: Path) -> list[Row]:
    """All rows of one parquet file, ``save_to_disk`` Arrow file or jsonl file, as dicts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}: line {lineno} is not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise EvalDataError(f"{path}: line {lineno} is not a JSON object")
            rows.append(row)
        return rows
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            with pa.memory_map(str(path)) as source:
                try:
                    table = pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(source).read_all()
    except Exception as e:
        raise EvalDataError(f"{path}: cannot be read as {path.suffix[1:]}: {e}") from e
    return table.to_pylist()


# --------------------------------------------------------------------------------------------
# Row helpers
# --------------------------------------------------------------------------------------------


class _RowError(Exception):
    """A row is malformed in `column` (turned into an EvalDataError with file and row)."""

    def __init__(self, column: str, why: str) -> None:
        super().__init__(why)
        self.column, self.why = column, why


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _text(row: Row, col: str, *, required: bool = True) -> str:
    v = row.get(col)
    if _missing(v) or (required and isinstance(v, str) and not v.strip()):
        if required:
            raise _RowError(col, "is empty")
        return ""
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise _RowError(col, f"should be text, got {type(v).__name__}")
    return str(v)


def _image(value: Any, col: str, base: Path) -> bytes:
    """An image cell (``{"bytes", "path"}``, bytes, or a path relative to the benchmark) -> bytes."""
    data: Any = None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path"):
            value = value["path"]
    if isinstance(value, bytes | bytearray):
        data = value
    if data is None and isinstance(value, str) and value.strip():
        path = base / value
        if not path.is_file():
            raise _RowError(col, f"image file {path} does not exist")
        data = path.read_bytes()
    if data is None:
        raise _RowError(col, "has no image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception:
        raise _RowError(col, "is not a readable image") from None
    return bytes(data)


def _first_image(row: Row, cols: tuple[str, ...], base: Path) -> bytes:
    for col in cols:
        if not _missing(row.get(col)) and row.get(col) != "":
            return _image(row[col], col, base)
    raise _RowError("/".join(cols), "has no image")


def _meta(row: Row) -> dict[str, Any]:
    meta = row.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _options(row: Row, col: str) -> tuple[str, ...]:
    v = row.get(col)
    if _missing(v):
        return ()
    if isinstance(v, str):  # MMMU-Pro stores the list's Python repr
        try:
            v = ast.literal_eval(v) if v.strip() else []
        except (ValueError, SyntaxError):
            raise _RowError(col, f"is not a list literal: {v[:60]!r}") from None
    if not isinstance(v, list | tuple) or len(v) > len(LETTERS):
        raise _RowError(col, f"should be a list of option texts, got {type(v).__name__}")
    return tuple(str(o) for o in v)


def _options_block(options: tuple[str, ...], header: str = "Choices") -> str:
    if options and all(o.strip() == LETTERS[i] for i, o in enumerate(options)):  # options drawn in the image
        return f"\n{header}: " + ", ".join(options)
    return f"\n{header}:\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options)) if options else ""


def _gold_letter(gold: str, options: tuple[str, ...], col: str = "answer") -> str:
    letter = gold_choice(gold)
    if letter is None or (options and LETTERS.index(letter) >= len(options)):
        raise _RowError(col, f"{gold!r} is not the letter of one of {len(options) or 'the'} options")
    return letter


def _place_markers(text: str, images: list[bytes], marker_re: str) -> tuple[str, tuple[bytes, ...]]:
    """Replace the benchmark's numbered image markers (``<image 2>``, ``<image1>``) by
    ``IMAGE_MARKER`` with the images in marker order; without markers the images go first."""
    found = [int(m.group(1)) for m in re.finditer(marker_re, text)]
    if not found or any(not 1 <= k <= len(images) for k in found):
        return re.sub(marker_re, "", text).strip(), tuple(images)
    # Each image goes in once, at its first marker; a later mention stays as text ("image 2").
    seen: list[int] = []

    def place(m: re.Match[str]) -> str:
        k = int(m.group(1))
        if k in seen:
            return f"image {k}"
        seen.append(k)
        return IMAGE_MARKER

    text = re.sub(marker_re, place, text)
    ordered = [images[k - 1] for k in seen]
    unused = [im for k, im in enumerate(images, 1) if k not in seen]
    return IMAGE_MARKER * len(unused) + text, tuple(unused + ordered)


# --------------------------------------------------------------------------------------------
# The four benchmarks
# --------------------------------------------------------------------------------------------


def _mathvista(row: Row, split: str, base: Path, file: Path) -> EvalItem:
    qtype = _text(row, "question_type")
    choices = _options(row, "choices")
    answer = _text(row, "answer")
    unit = _text(row, "unit", required=False) or None
    precision = row.get("precision")
    if not _missing(precision) and not isinstance(precision, int | float):
        raise _RowError("precision", f"should be a number, got {type(precision).__name__}")
    question = _text(row, "question") + (f" (Unit: {unit})" if unit else "")
    meta = _meta(row)
    atype: AnswerType
    if qtype == "multi_choice":
        if not choices:
            raise _RowError("choices", "is empty for a multi_choice question")
        letter = letter_of(answer, choices)
        if letter is None:
            raise _RowError("answer", f"{answer!r} is not one of the choices")
        atype, gold = "choice", letter
    elif qtype == "free_form":
        at = _text(row, "answer_type")
        if at not in ("integer", "float", "text", "list"):
            raise _RowError("answer_type", f"unknown answer type {at!r}")
        atype, gold = at, answer  # type: ignore[assignment]
    else:
        raise _RowError("question_type", f"unknown question type {qtype!r} (multi_choice | free_form)")
    return EvalItem(
        id=_text(row, "pid"),
        benchmark="mathvista",
        split=split,
        category=str(meta.get("task") or "all"),
        question=question + _options_block(choices),
        images=(_first_image(row, ("decoded_image", "image"), base),),
        gold=gold,
        answer_type=atype,
        options=choices,
        precision=None if precision is None or _missing(precision) else int(precision),
        unit=unit,
        meta={k: meta.get(k) for k in ("source", "context", "grade", "skills") if k in meta},
    )


_MATHVERSE_CHOICE_RE = re.compile(r"^\s*\(?([A-H])\)?\s*[:.)]\s*(.*\S)\s*$", re.M)


def _mathverse(row: Row, split: str, base: Path, file: Path) -> EvalItem:
    qtype = _text(row, "question_type")
    question = _text(row, "question", required=False) or _text(row, "query_wo", required=False)
    if not question.strip():  # "Vision Only": the whole problem is in the image
        question = "Answer the question shown in the image."
    answer = _text(row, "answer")
    options: tuple[str, ...] = ()
    if qtype == "multi-choice":
        # The options are part of the question text (or only in the image): read them when listed.
        listed = _MATHVERSE_CHOICE_RE.findall(question.split("Choices")[-1]) if "Choices" in question else []
        if [m[0] for m in listed] == list(LETTERS[: len(listed)]):
            options = tuple(m[1] for m in listed)
        atype: AnswerType = "choice"
        gold = _gold_letter(answer, options)
    elif qtype == "free-form":
        atype, gold = "expression", answer
    else:
        raise _RowError("question_type", f"unknown question type {qtype!r} (multi-choice | free-form)")
    meta = _meta(row)
    return EvalItem(
        id=_text(row, "sample_index"),
        benchmark="mathverse",
        split=split,
        category=_text(row, "problem_version"),
        question=question,
        images=(_first_image(row, ("image",), base),),
        gold=gold,
        answer_type=atype,
        options=options,
        meta={"problem_index": row.get("problem_index"), **{k: meta.get(k) for k in ("subject", "subfield")}},
    )


def _mathvision(row: Row, split: str, base: Path, file: Path) -> EvalItem:
    options = _options(row, "options")
    answer = _text(row, "answer")
    image = _first_image(row, ("decoded_image", "image"), base)
    question, images = _place_markers(_text(row, "question"), [image], r"<image\s*(\d+)>")
    if options:
        atype: AnswerType = "choice"
        gold = _gold_letter(answer, options)
    else:
        atype, gold = "expression", answer
    return EvalItem(
        id=_text(row, "id"),
        benchmark="mathvision",
        split=split,
        category=_text(row, "subject"),
        question=question + _options_block(options),
        images=images,
        gold=gold,
        answer_type=atype,
        options=options,
        meta={"level": row.get("level")},
    )


def _mmmu_pro(row: Row, split: str, base: Path, file: Path) -> EvalItem:
    options = _options(row, "options")
    gold = _gold_letter(_text(row, "answer"), options)
    if split == "vision":  # one screenshot holding the question and its options
        question = "Answer the multiple-choice question shown in the image with the letter of the correct option."
        images: tuple[bytes, ...] = (_first_image(row, ("image",), base),)
        shown: tuple[str, ...] = options
    else:
        present = [f"image_{k}" for k in range(1, 8) if not _missing(row.get(f"image_{k}"))]
        if not present:
            raise _RowError("image_1", "has no image")
        imgs = [_image(row[c], c, base) for c in present]
        text = _text(row, "question") + _options_block(options, "Options")
        question, images = _place_markers(text, imgs, r"<image\s+(\d+)>")
        shown = options
    return EvalItem(
        id=_text(row, "id"),
        benchmark="mmmu_pro",
        split=split,
        category=_text(row, "subject"),
        question=question,
        images=images,
        gold=gold,
        answer_type="choice",
        options=shown,
        meta={k: row.get(k) for k in ("topic_difficulty", "img_type") if k in row},
    )


def _synthetic(row: Row, split: str, base: Path, file: Path) -> EvalItem:
    """A row of the package's synthetic visual task (``srpo_mcore.data.synthetic``)."""
    images = row.get("images")
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not images:
        raise _RowError("images", "should be a non-empty list of image paths")
    gold = _text(row, "answer").strip()
    atype: AnswerType = "choice" if gold_choice(gold) == gold else "integer"
    return EvalItem(
        id=_text(row, "id"),
        benchmark="synthetic",
        split=split,
        category=_text(row, "task"),
        question=_text(row, "question"),
        images=tuple(_image(im, "images", file.parent) for im in images),
        gold=gold,
        answer_type=atype,
    )


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "mathvista": BenchmarkSpec(
        "mathvista",
        ("MathVista",),
        ("testmini",),
        ("pid", "question", "choices", "answer", "question_type", "answer_type", "precision", "unit"),
        _mathvista,
    ),
    "mathverse": BenchmarkSpec(
        "mathverse",
        ("MathVerse",),
        ("testmini",),
        ("sample_index", "problem_version", "question", "answer", "question_type", "image"),
        _mathverse,
    ),
    "mathvision": BenchmarkSpec(
        "mathvision",
        ("MathVision", "MATH-V", "MATH-Vision"),
        ("test", "testmini"),
        ("id", "question", "options", "answer", "subject"),
        _mathvision,
    ),
    "mmmu_pro": BenchmarkSpec(
        "mmmu_pro",
        ("MMMU_Pro", "MMMU-Pro"),
        ("standard (10 options)", "vision"),
        ("id", "options", "answer", "subject"),
        _mmmu_pro,
    ),
    "synthetic": BenchmarkSpec(
        "synthetic",
        ("synthetic",),
        ("test", "train"),
        ("id", "question", "answer", "images", "task"),
        _synthetic,
    ),
}
"""Every benchmark by its ``--benchmarks`` name."""
PAPER_BENCHMARKS = ("mathvista", "mathverse", "mathvision", "mmmu_pro")
"""The four the SRPO paper reports (the CLI's default); ``synthetic`` is the laptop demo's."""


def parse_benchmarks(spec: str) -> list[tuple[str, str]]:
    """``"mathvista,mathvision:testmini,mmmu_pro"`` -> ``[(name, split), ...]``.

    A name alone means its default split(s): MMMU-Pro's are both ``standard (10 options)`` and
    ``vision`` (its overall score is their mean); the others' is the first of their splits.

    Raises:
        ValueError: An unknown benchmark or split.
    """
    out: list[tuple[str, str]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, split = part.partition(":")
        name = name.strip().lower().replace("-", "_")
        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        b = BENCHMARKS[name]
        if split and split not in b.splits:
            raise ValueError(f"{name} has no split {split!r}; choose from {', '.join(b.splits)}")
        splits = [split] if split else (list(b.splits) if name == "mmmu_pro" else [b.splits[0]])
        out.extend((name, s) for s in splits)
    if not out:
        raise ValueError("no benchmark named")
    return out


def iter_items(name: str, split: str, data_root: str | Path, limit: int | None = None) -> Iterator[EvalItem]:
    """The items of one benchmark split, in file order; at most `limit`.

    Args:
        name: A key of ``BENCHMARKS``.
        split: One of its splits (for MMMU-Pro, a configuration: ``standard (10 options)`` | ``vision``).
        data_root: The directory holding the benchmarks' directories.
        limit: Stop after this many items (None: all).

    Raises:
        EvalDataError: The directory, split or a required column is missing, or a row is malformed
            (the message names file, row and column).
    """
    spec = BENCHMARKS[name]
    root = Path(data_root).expanduser()
    bench = _bench_dir(root, spec)
    search_dir, file_split = bench, split
    if name == "mmmu_pro":
        config_dir = next((p for p in bench.iterdir() if p.is_dir() and p.name.lower() == split.lower()), None)
        if config_dir is None:
            raise EvalDataError(f"mmmu_pro: no {split!r} configuration directory under {bench}")
        search_dir, file_split = config_dir, "test"
    count = 0
    for file in split_files(search_dir, file_split):
        rows = read_rows(file)
        if rows:
            missing = [c for c in spec.required if c not in rows[0]]
            if missing:
                raise EvalDataError(
                    f"{file}: missing column(s) {', '.join(missing)} of the published {name} schema "
                    f"(has: {', '.join(rows[0])})"
                )
        for i, row in enumerate(rows):
            if limit is not None and count >= limit:
                return
            try:
                item = spec.row_to_item(row, split, bench, file)
            except _RowError as e:
                rid = next((row.get(c) for c in ("pid", "sample_index", "id") if row.get(c) is not None), None)
                raise EvalDataError(f"{file}: row {i} (id {rid!r}): column {e.column!r} {e.why}") from None
            count += 1
            yield item


def load_items(name: str, split: str, data_root: str | Path, limit: int | None = None) -> list[EvalItem]:
    """``iter_items`` as a list."""
    return list(iter_items(name, split, data_root, limit))
