"""A seeded synthetic visual-reasoning task, rendered with PIL, for the laptop demo and the tests.

Owns: three small task kinds mixed in turn — counting shapes of one kind (answer an integer),
reading the tallest bar of a four-bar chart (answer its letter A-D, or its height in grid units)
and arithmetic on two seven-segment digits (answer an integer) —, their generator with per-row
metadata (``SyntheticItem.meta``: what was drawn, so tests can check every answer by
construction), and ``write_synthetic_task``, which writes ``train.jsonl``, ``test.jsonl`` and
``images/*.png`` atomically. Everything is drawn with rectangles, ellipses and polygons (no fonts),
so one seed gives byte-identical files wherever Pillow's PNG encoder is the same.

Does not own: loading the rows (``rl_dataset.load_prompt_rows`` reads them like any other data) or
judging answers (``srpo_mcore.rl.rewards``; the answers are plain integers or letters, which
``math-verify`` and the choice-letter rule check).

Run ``python -m srpo_mcore.data.synthetic --help`` for the command line.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from srpo_mcore.atomic_dir import atomic_dir

TASKS = ("count", "bars", "arith")
"""Task kinds, assigned in turn (row i gets ``TASKS[i % 3]``)."""
BASE = 56
"""Geometry is laid out for 56 px and scaled to ``image_size``."""
WHITE = (255, 255, 255)
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square", "triangle")
GRID = 4
"""Counting images are a GRID x GRID grid of cells, at most one shape per cell."""
BAR_LABELS = ("A", "B", "C", "D")
BAR_COLOR = (40, 70, 220)
GRIDLINE_COLOR = (200, 200, 200)
MAX_UNITS = 6
"""Bar heights are distinct integers in 1..MAX_UNITS grid units."""
INK = (0, 0, 0)
# Seven-segment encoding: which of the segments a (top), b (top right), c (bottom right), d (bottom),
# e (bottom left), f (top left), g (middle) are lit for each digit.
SEGMENTS = {
    0: "abcdef",
    1: "bc",
    2: "abdeg",
    3: "abcdg",
    4: "bcfg",
    5: "acdfg",
    6: "acdefg",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}
ARITH_OPS = ("sum", "difference", "product")


@dataclass(frozen=True)
class SyntheticItem:
    """One generated row with its image and what was drawn."""

    id: str
    task: str
    question: str
    answer: str
    image: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)
    """count: target, shapes [(cell, shape, color)]; bars: heights, asks; arith: digits, op."""

    def row(self, image_path: str) -> dict[str, Any]:
        """The jsonl row, with the image stored at `image_path` (relative to the jsonl file)."""
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "images": [image_path],
            "task": self.task,
        }


# --------------------------------------------------------------------------------------------
# Geometry (shared with the tests, which read the pixels back)
# --------------------------------------------------------------------------------------------


def cell_box(cell: int, size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), inclusive, of the shape drawn in grid `cell` (row-major)."""
    step = size // GRID
    margin = max(1, step // 7)
    r, c = divmod(cell, GRID)
    return (c * step + margin, r * step + margin, (c + 1) * step - margin - 1, (r + 1) * step - margin - 1)


def bar_layout(size: int) -> tuple[int, int, list[tuple[int, int]]]:
    """(baseline y, pixels per unit, [(x0, x1) of each bar]) of the bar chart, inclusive x ranges."""
    pad = size // 14
    unit = (size - 2 * pad) // MAX_UNITS
    baseline = pad + MAX_UNITS * unit
    slot = size // len(BAR_LABELS)
    width = max(2, slot * 4 // 7)
    bars = [
        (i * slot + (slot - width) // 2, i * slot + (slot - width) // 2 + width - 1) for i in range(len(BAR_LABELS))
    ]
    return baseline, unit, bars


def segment_boxes(size: int, position: int) -> dict[str, tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1), inclusive, of the seven segments of digit `position` (0 or 1)."""
    s = size / BASE
    half = size // 2
    t = max(2, round(3 * s))  # stroke
    w, h = round(16 * s), round(30 * s)
    x0 = position * half + (half - w) // 2
    y0 = (size - h) // 2
    x1, y1, ym = x0 + w - 1, y0 + h - 1, y0 + (h - t) // 2
    return {
        "a": (x0, y0, x1, y0 + t - 1),
        "g": (x0, ym, x1, ym + t - 1),
        "d": (x0, y1 - t + 1, x1, y1),
        "f": (x0, y0, x0 + t - 1, ym + t - 1),
        "b": (x1 - t + 1, y0, x1, ym + t - 1),
        "e": (x0, ym, x0 + t - 1, y1),
        "c": (x1 - t + 1, ym, x1, y1),
    }


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def _count_item(rng: random.Random, size: int) -> tuple[str, str, Image.Image, dict[str, Any]]:
    target = rng.choice(SHAPES)
    n_target, n_other = rng.randint(1, 5), rng.randint(0, 4)
    cells = rng.sample(range(GRID * GRID), n_target + n_other)
    others = [s for s in SHAPES if s != target]
    kinds = [target] * n_target + [rng.choice(others) for _ in range(n_other)]
    image = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(image)
    shapes = []
    for cell, kind in zip(cells, kinds):
        color = rng.choice(sorted(COLORS))
        x0, y0, x1, y1 = cell_box(cell, size)
        fill = COLORS[color]
        if kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        shapes.append((cell, kind, color))
    question = f"How many {target}s are in the image? Answer with a number."
    return question, str(n_target), image, {"target": target, "shapes": shapes}


def _bars_item(rng: random.Random, size: int) -> tuple[str, str, Image.Image, dict[str, Any]]:
    heights = rng.sample(range(1, MAX_UNITS + 1), len(BAR_LABELS))
    asks = rng.choice(("letter", "value"))
    image = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(image)
    baseline, unit, bars = bar_layout(size)
    for k in range(MAX_UNITS + 1):
        draw.line((0, baseline - k * unit, size - 1, baseline - k * unit), fill=GRIDLINE_COLOR)
    for (x0, x1), h in zip(bars, heights):
        draw.rectangle((x0, baseline - h * unit, x1, baseline), fill=BAR_COLOR)
    tallest = max(range(len(heights)), key=heights.__getitem__)
    if asks == "letter":
        question = (
            "The bars are labelled A, B, C, D from left to right. Which bar is the tallest? Answer with its letter."
        )
        answer = BAR_LABELS[tallest]
    else:
        question = "The grid lines are one unit apart. How many units tall is the tallest bar? Answer with a number."
        answer = str(heights[tallest])
    return question, answer, image, {"heights": heights, "asks": asks}


def _arith_item(rng: random.Random, size: int) -> tuple[str, str, Image.Image, dict[str, Any]]:
    op = rng.choice(ARITH_OPS)
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if op == "difference" and a < b:
        a, b = b, a
    image = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(image)
    for position, digit in enumerate((a, b)):
        boxes = segment_boxes(size, position)
        for seg in SEGMENTS[digit]:
            draw.rectangle(boxes[seg], fill=INK)
    if op == "sum":
        question, value = "The image shows two digits. What is their sum?", a + b
    elif op == "difference":
        question, value = "The image shows two digits. What is the left digit minus the right digit?", a - b
    else:
        question, value = "The image shows two digits. What is their product?", a * b
    return question, str(value), image, {"digits": (a, b), "op": op}


_MAKERS = {"count": _count_item, "bars": _bars_item, "arith": _arith_item}


def _check_size(image_size: int) -> None:
    if image_size < BASE or image_size % 28:
        raise ValueError(f"image_size={image_size} must be a multiple of 28 (patch 14 x merge 2) and at least {BASE}")


def generate_items(n: int, *, seed: int, split: str, image_size: int = BASE) -> list[SyntheticItem]:
    """Generate `n` items of `split`; the same (seed, split, image_size) always gives the same items.

    Args:
        n: Number of items.
        seed: Random seed.
        split: Split name; also the id prefix (``"<split>-00000"``) and part of the random stream.
        image_size: Side of the square images in pixels (a multiple of 28, at least 56).

    Returns:
        The items; item i is of kind ``TASKS[i % 3]``.
    """
    _check_size(image_size)
    rng = random.Random(f"srpo-synthetic/{seed}/{split}")  # str seeds hash with sha512: stable
    items = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        question, answer, image, meta = _MAKERS[task](rng, image_size)
        items.append(SyntheticItem(f"{split}-{i:05d}", task, question, answer, image, meta))
    return items


def _write_split(root: Path, split: str, items: Sequence[SyntheticItem]) -> None:
    lines = []
    for item in items:
        rel = f"images/{item.id}.png"
        item.image.save(root / rel, format="PNG")
        lines.append(json.dumps(item.row(rel), ensure_ascii=False) + "\n")
    (root / f"{split}.jsonl").write_text("".join(lines))


OUTPUTS = ("train.jsonl", "test.jsonl", "images")


def write_synthetic_task(
    out_dir: str | Path, *, n_train: int, n_test: int, seed: int, image_size: int = BASE
) -> dict[str, Path]:
    """Write the synthetic task to `out_dir` (replaced atomically): jsonl splits and PNG images.

    Args:
        out_dir: Output directory. An existing one is replaced only if it holds nothing but a
            previous synthetic task (so a wrong path never deletes unrelated files).
        n_train: Rows in ``train.jsonl``.
        n_test: Rows in ``test.jsonl``.
        seed: Random seed; the same arguments give byte-identical files.
        image_size: Image side in pixels (a multiple of 28, at least 56).

    Returns:
        ``{"train": .../train.jsonl, "test": .../test.jsonl, "images": .../images}``.

    Raises:
        ValueError: Bad counts or image size.
        FileExistsError: `out_dir` exists and holds something other than a synthetic task.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train={n_train} and n_test={n_test} must be >= 0")
    _check_size(image_size)
    out = Path(out_dir)
    if out.exists():
        foreign = [p.name for p in out.iterdir()] if out.is_dir() else [out.name]
        foreign = [name for name in foreign if name not in OUTPUTS]
        if foreign or not out.is_dir():
            raise FileExistsError(f"{out} exists and holds other files ({sorted(foreign)[:5]}); not replacing it")
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for split, n in (("train", n_train), ("test", n_test)):
            _write_split(tmp, split, generate_items(n, seed=seed, split=split, image_size=image_size))
    return {"train": out / "train.jsonl", "test": out / "test.jsonl", "images": out / "images"}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the synthetic task and print where it went."""
    parser = argparse.ArgumentParser(
        prog="python -m srpo_mcore.data.synthetic",
        description=(
            "Write a seeded synthetic visual-reasoning task (counting shapes, tallest bar of a chart, "
            "arithmetic on two digits) as train.jsonl / test.jsonl with PNGs under images/. "
            "Point data.train_files at train.jsonl. The same arguments give byte-identical files."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced atomically)")
    parser.add_argument("--n-train", type=int, default=256, help="training rows (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=64, help="test rows (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--image-size", type=int, default=BASE, help="image side in pixels, a multiple of 28 (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        paths = write_synthetic_task(
            args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, image_size=args.image_size
        )
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    for split in ("train", "test"):
        tasks = Counter(json.loads(line)["task"] for line in paths[split].read_text().splitlines())
        print(f"{paths[split]}: {sum(tasks.values())} rows ({', '.join(f'{k} {v}' for k, v in sorted(tasks.items()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
