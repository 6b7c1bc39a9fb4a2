"""RL prompt datasets: local jsonl / parquet rows with images, validated, chat-templated, counted.

Owns: finding the files named by ``DataConfig.train_files`` (files or directories of them), reading
them with HF ``datasets`` (local files only, into memory, with a throw-away cache so no stale
Arrow cache can ever be read back), validating every row — a bad row is skipped and reported by
id and reason, never fatal —, the clear ``DataError`` for everything that is the recipe's fault
(a missing file, an unsupported or unreadable file, a missing column, nothing left to train on),
and turning a row into what the rollout engine takes: the chat-templated prompt with the system
prompt of ``data.prompt``, its RGB images, and the prompt's token count after image expansion.

Does not own: the system prompt texts (``system_prompts``), batching, shuffling and episodes
(the trainer), or scoring answers against the gold (``srpo_mcore.rl.rewards``).

Skip reasons (``LoadReport.skipped`` keys): ``missing_id`` (an empty id in the id column),
``duplicate_id`` (an id seen on an earlier row, whatever became of that row), ``bad_row`` (a value
of a type that cannot be a question / gold / image), ``empty_question``, ``empty_answer`` (None,
empty or NaN gold), ``missing_image`` (no such file), ``unreadable_image`` (PIL cannot verify it),
``image_marker_mismatch`` (the question's ``<image>`` markers do not match its images) and
``too_long`` (more than ``data.max_prompt_tokens`` prompt tokens; only when a processor is given).
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from srpo_mcore.config import DataConfig
from srpo_mcore.data.system_prompts import system_prompt
from srpo_mcore.rollout.types import RolloutRequest

log = logging.getLogger(__name__)

type ImageRef = str | bytes
"""An image of a row: a resolved absolute file path, or the encoded bytes of an embedded image."""

FORMATS: dict[str, str] = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""File extension -> HF ``datasets`` builder."""
IMAGE_MARKER = "<image>"
"""Marks where an image goes in a question (LLaVA-style data); stripped from the prompt."""
REASONS = (
    "missing_id",
    "duplicate_id",
    "bad_row",
    "empty_question",
    "empty_answer",
    "missing_image",
    "unreadable_image",
    "image_marker_mismatch",
    "too_long",
)
"""Every reason a row can be skipped for (see the module docstring)."""
SUMMARY_IDS = 5
"""How many ids per reason ``LoadReport.summary`` shows."""


class DataError(ValueError):
    """The prompt data cannot be used as configured. The message names the file and/or config field."""


@dataclass(frozen=True)
class PromptRow:
    """One validated RL prompt."""

    id: str
    question: str
    """Question text as in the data (``<image>`` markers, if any, still in place)."""
    answer: str
    """Gold answer as a string (numbers converted: 3 -> "3", 2.5 -> "2.5")."""
    images: tuple[ImageRef, ...]
    """Absolute paths or encoded image bytes, in prompt order; each was verified readable."""


@dataclass
class LoadReport:
    """What ``load_prompt_rows`` read, kept and skipped (reason -> ids of the skipped rows)."""

    total: int = 0
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, row_id: str) -> None:
        """Record that row `row_id` was skipped for `reason`."""
        self.skipped.setdefault(reason, []).append(row_id)

    @property
    def num_skipped(self) -> int:
        """Rows skipped, all reasons together."""
        return sum(len(ids) for ids in self.skipped.values())

    def summary(self) -> str:
        """A readable table: totals on the first line, then one line per reason with the first ids."""
        lines = [f"prompt rows: {self.total} read, {self.kept} kept, {self.num_skipped} skipped"]
        width = max((len(r) for r in self.skipped), default=0)
        for reason, ids in self.skipped.items():
            shown = ", ".join(ids[:SUMMARY_IDS]) + (", …" if len(ids) > SUMMARY_IDS else "")
            lines.append(f"  {reason:<{width}}  {len(ids):>6}  e.g. {shown}")
        return "\n".join(lines)


class _Skip(Exception):
    """A row is unusable for `reason` (caught per row; never escapes this module)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def resolve_files(train_files: Sequence[str]) -> list[Path]:
    """Expand ``data.train_files`` into data files, in order (a directory's files sorted by name).

    Args:
        train_files: Paths of jsonl/json/parquet files or of directories holding them (not recursive).

    Returns:
        The data files.

    Raises:
        DataError: The list is empty, a path does not exist, a file has an unsupported extension or
            a directory holds no data file.
    """
    if not train_files:
        raise DataError("data.train_files is empty: name at least one jsonl or parquet file (or a directory of them)")
    exts = ", ".join(FORMATS)
    files: list[Path] = []
    for entry in train_files:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS and not p.name.startswith(".")
            )
            if not found:
                raise DataError(f"data.train_files: directory {path} holds no data files ({exts})")
            files.extend(found)
        elif not path.exists():
            raise DataError(f"data.train_files: {path} does not exist")
        elif path.suffix.lower() not in FORMATS:
            raise DataError(
                f"data.train_files: {path} has unsupported extension {path.suffix!r}; expected one of {exts}"
            )
        else:
            files.append(path)
    return files


@contextmanager
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """Silence HF ``datasets`` progress bars inside the block unless `enabled`."""
    import datasets

    turn_off = not enabled and not datasets.are_progress_bars_disabled()
    if turn_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            datasets.enable_progress_bars()


def _undecoded(feature: Any) -> Any | None:
    """The same feature with images left encoded ({"bytes", "path"}), or None if it holds no Image."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List | datasets.LargeList) and isinstance(feature.feature, datasets.Image):
        return replace(feature, feature=datasets.Image(decode=False))
    return None


def read_file(path: Path, cfg: DataConfig, cache_dir: str) -> Any:
    """Read one data file into an in-memory HF ``Dataset``, checking the configured columns.

    Args:
        path: A jsonl/json/parquet file.
        cfg: The data config (column names).
        cache_dir: Where ``datasets`` may write its Arrow cache (a temporary directory).

    Returns:
        The ``datasets.Dataset`` (image features left undecoded), or None for an empty file.

    Raises:
        DataError: The file cannot be parsed as its format, or a configured column is missing.
    """
    import datasets

    if path.stat().st_size == 0:
        return None
    builder = FORMATS[path.suffix.lower()]
    try:
        ds = datasets.load_dataset(
            builder, data_files=str(path), split="train", cache_dir=cache_dir, keep_in_memory=True
        )
    except Exception as e:  # datasets wraps parser errors in several types; the cause is what helps
        cause = e.__cause__ or e
        kind = "jsonl" if builder == "json" else builder
        raise DataError(f"{path} is not a valid {kind} file: {type(cause).__name__}: {cause}") from e
    columns = list(ds.column_names)
    for name in ("question_field", "answer_field", "image_field"):
        column = getattr(cfg, name)
        if column not in columns:
            hint = " (for text-only rows keep the column with null or [] values)" if name == "image_field" else ""
            raise DataError(f"data.{name}={column!r} not in columns {columns} of {path}{hint}")
    undecoded = _undecoded(ds.features[cfg.image_field])
    if undecoded is not None:  # keep the encoded bytes: no decode now, no lossy re-encode later
        ds = ds.cast_column(cfg.image_field, undecoded)
    return ds


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


def _scalar_str(value: Any) -> str | None:
    """A gold answer or id as a string; None when empty. Raises ``_Skip("bad_row")`` for non-scalars."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Skip("bad_row")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise _Skip("bad_row")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    raise _Skip("bad_row")


def _image_ref(value: Any, base_dir: Path) -> ImageRef:
    """One image value of a row -> a path or encoded bytes (not yet checked)."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return _image_ref(value["bytes"], base_dir)
        if value.get("path"):
            return _image_ref(value["path"], base_dir)
        raise _Skip("bad_row")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(value, str):
        if not value.strip():
            raise _Skip("missing_image")
        path = Path(value).expanduser()
        return str((path if path.is_absolute() else base_dir / path).resolve())
    raise _Skip("bad_row")


def _check_image(ref: ImageRef) -> None:
    """Raise ``_Skip`` unless `ref` is an existing, PIL-verifiable image."""
    if isinstance(ref, str) and not Path(ref).is_file():
        raise _Skip("missing_image")
    try:
        with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as im:
            im.verify()
    except Exception:
        raise _Skip("unreadable_image") from None


def _parse_row(raw: dict[str, Any], cfg: DataConfig, base_dir: Path) -> PromptRow:
    """Validate one raw row (its id already checked) and build the ``PromptRow``."""
    question = raw.get(cfg.question_field)
    if question is not None and not isinstance(question, str):
        raise _Skip("bad_row")
    if question is None or not question.strip():
        raise _Skip("empty_question")
    answer = _scalar_str(raw.get(cfg.answer_field))
    if answer is None:
        raise _Skip("empty_answer")
    value = raw.get(cfg.image_field)
    values = [] if value is None else list(value) if isinstance(value, list | tuple) else [value]
    images = tuple(_image_ref(v, base_dir) for v in values)
    for ref in images:
        _check_image(ref)
    markers = question.count(IMAGE_MARKER)
    if markers and markers != len(images):
        raise _Skip("image_marker_mismatch")
    return PromptRow(id="", question=question, answer=answer, images=images)


def load_prompt_rows(
    cfg: DataConfig, *, progress: bool = True, processor: Any | None = None
) -> tuple[list[PromptRow], LoadReport]:
    """Read every file of ``cfg.train_files`` in order, validate every row, keep the good ones.

    A bad row never stops loading: it is skipped and its id recorded under its reason in the report
    (rows without an id get ``"<file name>#<row in file>"``). When the id column is absent, the row
    number across all files (from 0) is the id. Relative image paths resolve against
    ``cfg.image_root``, else the data file's directory.

    Args:
        cfg: The data section of the run config.
        progress: Show progress bars (reading and the validation pass).
        processor: When given (an HF processor of the policy), rows whose prompt — chat template,
            ``cfg.prompt`` system prompt and expanded image tokens — exceeds
            ``cfg.max_prompt_tokens`` are skipped as ``too_long``. This opens every image.

    Returns:
        The kept rows, in file order, and the load report.

    Raises:
        DataError: ``train_files`` is empty, a file is missing / of an unsupported type / not
            parseable, a configured column is missing, or no row is left.
    """
    files = resolve_files(cfg.train_files)
    image_root = Path(cfg.image_root).expanduser().resolve() if cfg.image_root else None
    report = LoadReport()
    rows: list[PromptRow] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="srpo-datasets-") as cache_dir, _datasets_progress(progress):
        tables = [(path, read_file(path, cfg, cache_dir)) for path in files]
        total = sum(len(ds) for _, ds in tables if ds is not None)
        bar = tqdm(total=total, desc="validating prompts", unit="row", disable=not progress)
        number = 0
        for path, ds in tables:
            if ds is None:
                continue
            base_dir = image_root or path.parent.resolve()
            has_id = cfg.id_field in ds.column_names
            for i, raw in enumerate(ds):
                report.total += 1
                fallback = f"{path.name}#{i}"
                row_id = fallback
                try:
                    rid = _scalar_str(raw[cfg.id_field]) if has_id else str(number)
                    if rid is None:
                        raise _Skip("missing_id")
                    row_id = rid
                    if rid in seen:
                        raise _Skip("duplicate_id")
                    seen.add(rid)
                    row = replace(_parse_row(raw, cfg, base_dir), id=rid)
                    if processor is not None and too_long(row, processor, cfg):
                        raise _Skip("too_long")
                except _Skip as skip:
                    report.skip(skip.reason, row_id)
                except Exception:  # whatever a strange row does, it costs that row only
                    log.exception("prompt row %s of %s", row_id, path)
                    report.skip("bad_row", row_id)
                else:
                    rows.append(row)
                number += 1
                bar.update()
        bar.close()
    report.kept = len(rows)
    if not rows:
        raise DataError(f"no usable prompt rows in {[str(f) for f in files]}:\n{report.summary()}")
    log.debug("%s", report.summary())  # the caller decides how to show the report
    return rows, report


def too_long(row: PromptRow, processor: Any, cfg: DataConfig) -> bool:
    """Whether `row`'s prompt has more than ``cfg.max_prompt_tokens`` tokens after image expansion."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return prompt_token_count(processor, to_request(row, tokenizer, cfg.prompt)) > cfg.max_prompt_tokens


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def open_image(ref: ImageRef) -> Image.Image:
    """Decode one image to RGB; transparent pixels are composited onto white (not black)."""
    with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as im:
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def open_images(row: PromptRow) -> tuple[Image.Image, ...]:
    """The row's images, decoded to RGB, in prompt order."""
    return tuple(open_image(ref) for ref in row.images)


def user_content(question: str, num_images: int) -> list[dict[str, str]]:
    """The user message content: images before the text, or at the question's ``<image>`` markers.

    Args:
        question: The question; ``<image>`` markers (if any) are replaced by the images, and line
            breaks right next to a marker are dropped.
        num_images: How many images the row has.

    Returns:
        Chat content parts: ``{"type": "image"}`` and ``{"type": "text", "text": ...}``.

    Raises:
        ValueError: The question has markers, but not one per image.
    """
    if IMAGE_MARKER not in question:
        return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question.strip()}]
    pieces = question.split(IMAGE_MARKER)
    if len(pieces) - 1 != num_images:
        raise ValueError(f"question has {len(pieces) - 1} {IMAGE_MARKER} markers for {num_images} images")
    content: list[dict[str, str]] = []
    for i, piece in enumerate(pieces):
        if i:
            content.append({"type": "image"})
        text = piece.lstrip("\n") if i else piece
        text = text.rstrip("\n") if i < len(pieces) - 1 else text
        if text.strip():
            content.append({"type": "text", "text": text})
    return content


def chat_prompt(row: PromptRow, tokenizer: Any, kind: str) -> str:
    """The row's prompt text: system prompt of `kind`, the user turn with images, generation prompt.

    Args:
        row: The prompt row.
        tokenizer: An HF tokenizer (or processor) with the model's chat template.
        kind: ``data.prompt``: ``"srpo"``, ``"plain"`` or ``"none"`` (no system message).

    Returns:
        The chat-templated text, ending with the assistant header; one image placeholder per image.
    """
    system = system_prompt(kind)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_content(row.question, len(row.images))})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str), f"apply_chat_template returned {type(text).__name__}, not str"
    return text


def to_request(row: PromptRow, tokenizer: Any, kind: str) -> RolloutRequest:
    """The rollout request of `row`: chat prompt, RGB images, and the row id as key."""
    return RolloutRequest(prompt=chat_prompt(row, tokenizer, kind), images=open_images(row), key=row.id)


def prompt_token_count(processor: Any, request: RolloutRequest) -> int:
    """Tokens of the request's prompt once the processor expands each image placeholder.

    Args:
        processor: The policy's HF processor (e.g. ``Qwen2_5_VLProcessor``).
        request: The request (chat-templated prompt and images).

    Returns:
        The length of the processor's ``input_ids`` for the prompt.
    """
    out = processor(text=[request.prompt], images=list(request.images) or None)
    return len(out["input_ids"][0])
