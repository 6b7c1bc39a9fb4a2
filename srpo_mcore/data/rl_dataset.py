"""RL and SFT prompt data: local files in the formats users have, validated, indexed, chat-templated.

Owns: finding the files named by ``DataConfig.train_files`` (files or directories of them),
``load_prompt_rows`` — which indexes each file once (``prompt_index``: any of the ``formats``, read
in batches, memory-mapped, cached next to the data), checks every row's images and prompt length
once, in parallel across the ranks of a job (``prompt_checks``, cached too), and keeps the usable
rows across files — the clear ``DataError`` for everything that is the recipe's fault (a missing
file, an unsupported or unreadable file, a missing column, nothing left to train on), and turning a
row into what the rollout engine takes: the chat-templated prompt with the system prompt of
``data.prompt``, its RGB images, and the prompt's token count after image expansion.

A bad row is skipped and reported by id and reason, never fatal. Skip reasons (``LoadReport.skipped``
keys): ``missing_id`` (an empty id in the id column), ``duplicate_id`` (an id seen on an earlier row,
whatever became of that row), ``bad_row`` (a value of a type that cannot be a question / gold /
image), ``bad_conversation`` (a chat / ShareGPT / LLaVA row that is not one [system] user [assistant]
exchange), ``empty_question``, ``empty_answer`` (None, empty or NaN gold; an SFT conversation without
an assistant turn), ``missing_image`` (no such file), ``remote_image`` (an http(s) URL: jobs read local
files only), ``unreadable_image`` (PIL cannot verify it), ``image_marker_mismatch`` (the question's
``<image>`` markers do not match its images) and ``too_long`` (more than ``data.max_prompt_tokens``
prompt tokens; only when a processor is given).

System turns: with ``data.prompt: srpo`` or ``plain`` the policy is asked for that format, so our
system prompt replaces any system turn of the data; with ``data.prompt: none`` the data's own
system turn (if any) is kept.

Does not own: the system prompt texts (``system_prompts``), batching, shuffling and episodes
(the trainer), or scoring answers against the gold (``srpo_mcore.rl.rewards``).
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from PIL import Image

from srpo_mcore.config import DataConfig
from srpo_mcore.data.formats import IMAGE_MARKER, AnswerFrom, DataError
from srpo_mcore.data.prompt_checks import Checks, check_rows, read_checks, write_checks
from srpo_mcore.data.prompt_index import (
    Index,
    IndexedRow,
    IndexSpec,
    build_index,
    cache_dir_for,
    content_hash,
    processor_key,
    spec_for,
)
from srpo_mcore.data.system_prompts import system_prompt
from srpo_mcore.rollout.types import RolloutRequest

log = logging.getLogger(__name__)

__all__ = ["IMAGE_MARKER", "DataError", "LoadReport", "PromptRow", "PromptRows", "load_prompt_rows"]

type ImageRef = str | bytes
"""An image of a row: a resolved absolute file path, or the encoded bytes of an embedded image."""

EXTENSIONS = (".jsonl", ".json", ".parquet")
"""Data file extensions (JSON: one object per line, or one array of objects)."""
REASONS = (
    "missing_id",
    "duplicate_id",
    "bad_row",
    "bad_conversation",
    "empty_question",
    "empty_answer",
    "missing_image",
    "remote_image",
    "unreadable_image",
    "image_marker_mismatch",
    "too_long",
)
"""Every reason a row can be skipped for (see the module docstring)."""
SUMMARY_IDS = 5
"""How many ids per reason ``LoadReport.summary`` shows."""


@dataclass(frozen=True)
class PromptRow:
    """One validated RL prompt (or SFT example: ``answer`` is then the target response)."""

    id: str
    question: str
    """Question text as in the data (``<image>`` markers, if any, still in place)."""
    answer: str
    """Gold answer as a string (numbers converted: 3 -> "3", 2.5 -> "2.5")."""
    images: tuple[ImageRef, ...]
    """Absolute paths or encoded image bytes, in prompt order; each was verified readable."""
    system: str | None = None
    """The data's own system turn (used only with ``data.prompt: none``)."""


@dataclass
class LoadReport:
    """What ``load_prompt_rows`` read, kept and skipped (reason -> ids of the skipped rows)."""

    total: int = 0
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    """Data file name -> the format its rows were read as."""

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
        if self.formats:
            lines.append("  formats: " + ", ".join(f"{name}={fmt}" for name, fmt in self.formats.items()))
        return "\n".join(lines)


class PromptRows(Sequence[PromptRow]):
    """The kept rows of a load, read from the memory-mapped indexes when indexed (cheap to pickle)."""

    def __init__(self, indexes: list[Index], kept: list[tuple[int, int, str, int]]) -> None:
        self._indexes = indexes
        self._kept = kept
        """(file, row of its index, id, prompt tokens or -1) of every kept row, in order."""

    def __len__(self) -> int:
        return len(self._kept)

    @overload
    def __getitem__(self, k: int) -> PromptRow: ...
    @overload
    def __getitem__(self, k: slice) -> list[PromptRow]: ...
    def __getitem__(self, k: int | slice) -> PromptRow | list[PromptRow]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        f, i, rid, _ = self._kept[k]
        r: IndexedRow = self._indexes[f].row(i)
        assert r.question is not None and r.answer is not None
        return PromptRow(rid, r.question, r.answer, r.images, r.system)

    def __iter__(self) -> Iterator[PromptRow]:
        return (self[i] for i in range(len(self)))

    def positions(self) -> dict[str, int]:
        """Row id -> its position (no row is read)."""
        return {rid: k for k, (_, _, rid, _) in enumerate(self._kept)}

    def prompt_tokens(self) -> list[int]:
        """Each row's prompt tokens after image expansion (-1 when loaded without a processor)."""
        return [tokens for *_, tokens in self._kept]


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
    exts = ", ".join(EXTENSIONS)
    files: list[Path] = []
    for entry in train_files:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")
            )
            if not found:
                raise DataError(f"data.train_files: directory {path} holds no data files ({exts})")
            files.extend(found)
        elif not path.exists():
            raise DataError(f"data.train_files: {path} does not exist")
        elif path.suffix.lower() not in EXTENSIONS:
            raise DataError(
                f"data.train_files: {path} has unsupported extension {path.suffix!r}; expected one of {exts}"
            )
        else:
            files.append(path)
    return files


@dataclass(frozen=True)
class IndexedFile:
    """A data file, how it is indexed, and where its caches are."""

    source: Path
    spec: IndexSpec
    index: Path
    cache: Path
    key: str


def index_files(cfg: DataConfig, answer_from: AnswerFrom, *, progress: bool) -> list[IndexedFile]:
    """Index every non-empty file of ``cfg.train_files`` (reusing cached indexes of unchanged files)."""
    image_root = Path(cfg.image_root).expanduser().resolve() if cfg.image_root else None
    out = []
    for path in resolve_files(cfg.train_files):
        if path.stat().st_size == 0:
            continue
        spec = spec_for(path, cfg, answer_from, image_root)
        cache = cache_dir_for(path, cfg.cache_dir)
        key = spec.key(content_hash(path, cache))
        index = cache / f"{path.name}.{key}.arrow"
        if index.exists():
            log.info("%s: indexed rows cached at %s", path, index)
        else:
            build_index(path, spec, index, progress=progress)
        out.append(IndexedFile(path, spec, index, cache, key))
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _dist() -> Any:
    """``torch.distributed`` when this process is one rank of an initialised group, else None."""
    if "torch.distributed" not in sys.modules:  # never import torch for a single-process load
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _from_rank0(dist: Any, obj: Any) -> Any:
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _checks(files: list[IndexedFile], cfg: DataConfig, processor: Any | None, progress: bool) -> list[Checks]:
    """The checks of every file's usable rows: cached, or computed now with every rank taking a share."""
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    pk = processor_key(processor, f"{cfg.prompt}:{system_prompt(cfg.prompt)}")
    paths = [f.cache / f"{f.source.name}.{f.key}.checks-{pk}.json" for f in files]
    cached = _from_rank0(dist, [read_checks(p) for p in paths] if rank == 0 else None)
    count = None
    if processor is not None:
        tokenizer = getattr(processor, "tokenizer", processor)

        def count(r: IndexedRow) -> int:
            row = PromptRow(r.id or "", r.question or "", r.answer or "", r.images, r.system)
            return prompt_token_count(processor, to_request(row, tokenizer, cfg.prompt))

    out = []
    for file, path, checks in zip(files, paths, cached, strict=True):
        if checks is None:
            index = Index(file.index)
            todo = [i for i, reason in enumerate(index.column("skip")) if reason is None]
            share = todo[rank * len(todo) // world : (rank + 1) * len(todo) // world]  # contiguous: few batches each
            mine = check_rows(index, share, count, progress=progress and rank == 0)
            index.close()
            checks = mine
            if dist:
                parts: list[Any] = [None] * world
                dist.all_gather_object(parts, mine)
                checks = {k: v for part in parts for k, v in part.items()}
            if rank == 0:
                write_checks(path, checks)
        else:
            log.info("%s: row checks cached at %s", file.source, path)
        out.append(checks)
    return out


def load_prompt_rows(
    cfg: DataConfig,
    *,
    progress: bool = True,
    processor: Any | None = None,
    answer_from: AnswerFrom = "gold",
) -> tuple[PromptRows, LoadReport]:
    """Read every file of ``cfg.train_files`` in order, validate every row, keep the good ones.

    Collective when ``torch.distributed`` is initialised (call it on every rank): rank 0 indexes the
    files, every rank checks a share of the rows, and every rank gets the same rows. A bad row never
    stops loading: it is skipped and its id recorded under its reason in the report (rows without
    an id get ``"<file name>#<row in file>"``). When the id column is absent, the row number across
    all files (from 0) is the id. Relative image paths resolve against ``cfg.image_root``, else the
    data file's directory.

    Args:
        cfg: The data section of the run config.
        progress: Show progress bars (indexing and the validation pass).
        processor: When given (an HF processor of the policy), rows whose prompt — chat template,
            ``cfg.prompt`` system prompt and expanded image tokens — exceeds
            ``cfg.max_prompt_tokens`` are skipped as ``too_long``.
        answer_from: ``gold`` (RL: a conversation's answer is ``cfg.answer_field`` when the file has
            it) or ``response`` (SFT: the assistant turn is the target).

    Returns:
        The kept rows, in file order, and the load report.

    Raises:
        DataError: ``train_files`` is empty, a file is missing / of an unsupported type / not
            parseable, a configured column is missing, or no row is left.
    """
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    result: Any = None
    if rank == 0:
        try:
            result = index_files(cfg, answer_from, progress=progress)
        except DataError as e:
            result = e
    result = _from_rank0(dist, result)
    if isinstance(result, DataError):
        raise DataError(str(result))
    files: list[IndexedFile] = result
    checks = _checks(files, cfg, processor, progress)
    report = LoadReport(formats={f.source.name: f.spec.format for f in files})
    indexes = [Index(f.index) for f in files]
    kept: list[tuple[int, int, str, int]] = []
    seen: set[str] = set()
    number = 0
    for n, (file, index, file_checks) in enumerate(zip(files, indexes, checks, strict=True)):
        has_id = file.spec.id_field is not None
        for i, (rid, reason, row_number) in enumerate(
            zip(index.column("id"), index.column("skip"), index.column("number"), strict=True)
        ):
            report.total += 1
            rid = rid if has_id else str(number)
            number += 1
            if rid is None:
                report.skip(reason or "missing_id", f"{file.source.name}#{row_number}")
                continue
            if rid in seen:
                report.skip("duplicate_id", rid)
                continue
            seen.add(rid)
            check = file_checks.get(i, "bad_row") if reason is None else reason
            if isinstance(check, int) and processor is not None and check > cfg.max_prompt_tokens:
                check = "too_long"
            if isinstance(check, str):
                report.skip(check, rid)
            else:
                kept.append((n, i, rid, check))
    report.kept = len(kept)
    if not kept:
        raise DataError(
            f"no usable prompt rows in {[str(f) for f in resolve_files(cfg.train_files)]}:\n{report.summary()}"
        )
    log.debug("%s", report.summary())  # the caller decides how to show the report
    return PromptRows(indexes, kept), report


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
        kind: ``data.prompt``: ``"srpo"``, ``"plain"`` or ``"none"`` (the row's own system turn, if any).

    Returns:
        The chat-templated text, ending with the assistant header; one image placeholder per image.
    """
    system = system_prompt(kind) if kind != "none" else row.system
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
