"""The on-disk index of a prompt data file: its rows in one shape, memory-mapped, cached next to it.

Owns: reading a jsonl / json / parquet file in bounded batches (never the whole file in memory),
turning each row into the common shape of ``formats`` with its id, resolved image references
(absolute paths, or embedded image bytes) and the row-level skip reason, and writing that as an
Arrow IPC file (``Index``) that every rank memory-maps: a row's question and image bytes are read
when the row is used, so a rank's memory does not grow with the number of rows or their embedded
images. Also the per-row checks cache (images verified, prompt tokens counted by the policy's
processor) and the keys both caches are found by.

Cache files (in ``data.cache_dir``, default ``.srpo-cache`` next to the data file, or
``~/.cache/srpo_mcore/data`` when that is not writable): ``<file>.<key>.arrow`` (the index; key:
the file's content hash, format, columns, image root and this module's ``INDEX_VERSION``),
``<file>.<key>.checks-<processor key>.json`` (the checks; key also: processor files, chat template
and system prompt — not ``max_prompt_tokens``, so another limit reuses the counts) and
``<file>.stat.json`` (size and mtime of the file when it was hashed: an unchanged file is not
hashed again). Every file is written to a temporary name and renamed, so concurrent jobs or a
killed one never leave a half-written cache that is read back.

Does not own: which rows are kept across files (duplicate ids, the report: ``rl_dataset``).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from srpo_mcore.data.formats import IMAGE_MARKER, Columns, DataError, Skip, columns_of, detect_format, to_raw_prompt

INDEX_VERSION = 1
"""Bump when the index layout or the row rules change: older caches are then not read."""
BATCH_ROWS = 64
"""Rows per record batch of the index (and per read batch of the source)."""
SCHEMA = pa.schema(
    [
        ("number", pa.int64()),
        ("id", pa.string()),
        ("skip", pa.string()),
        ("system", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("image_paths", pa.list_(pa.string())),
        ("image_bytes", pa.list_(pa.binary())),
    ]
)
"""One row per source row, in order. ``skip`` is the row-level reason (null = usable); an image
is either a path (``image_bytes`` entry null) or embedded bytes (``image_paths`` entry null)."""


# --------------------------------------------------------------------------------------------
# Keys and cache files
# --------------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_dir_for(path: Path, configured: str | None) -> Path:
    """Where `path`'s caches live: `configured`, else ``.srpo-cache`` beside it if writable, else ~/.cache."""
    if configured:
        out = Path(configured).expanduser()
    else:
        out = path.parent / ".srpo-cache"
        if not (out.is_dir() and os.access(out, os.W_OK)) and not os.access(path.parent, os.W_OK):
            out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "srpo_mcore" / "data"
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def content_hash(path: Path, cache: Path) -> str:
    """SHA-256 of the file's bytes; reused from ``<file>.stat.json`` while size and mtime are unchanged."""
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "path": str(path.resolve())}
    memo = cache / f"{path.name}.stat.json"
    try:
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in stamp} == stamp:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    write_atomically(memo, lambda tmp: tmp.write_text(json.dumps(stamp | {"sha256": digest})))
    return digest


def processor_key(processor: Any | None, system: str) -> str:
    """What a prompt's token count depends on: tokenizer files, chat template, image processor, system prompt."""
    if processor is None:
        return "verify"
    tok = getattr(processor, "tokenizer", processor)
    files = {}
    source = Path(str(getattr(tok, "name_or_path", "")))
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.jinja"):
        if (source / name).is_file():
            files[name] = hashlib.sha256((source / name).read_bytes()).hexdigest()
    image = getattr(processor, "image_processor", None)
    image_config = image.to_json_string() if image is not None else ""
    return _digest(type(processor).__name__, len(tok), tok.chat_template, image_config, files, system)


# --------------------------------------------------------------------------------------------
# Reading source files in batches
# --------------------------------------------------------------------------------------------


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file (one object per line) or of a JSON array file."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not a valid json file: {e}") from e
        for row in rows:
            yield row if isinstance(row, dict) else {}
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not a valid jsonl file: line {n}: {e}") from e
            yield row if isinstance(row, dict) else {}


def source_columns(path: Path) -> list[str]:
    """The columns of a data file (for JSON: every key of any row, in first-seen order)."""
    if path.suffix.lower() == ".parquet":
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path} is not a valid parquet file: {type(e).__name__}: {e}") from e
    seen: dict[str, None] = {}
    for row in _json_rows(path):
        seen.update(dict.fromkeys(row))
    return list(seen)


def source_batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    """The rows of a data file, ``BATCH_ROWS`` at a time (parquet: one row group in memory at most)."""
    if path.suffix.lower() == ".parquet":
        try:  # pre_buffer=False: else the reader keeps every column chunk it read (the whole file, measured)
            for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS):
                yield batch.to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path} is not a valid parquet file: {type(e).__name__}: {e}") from e
        return
    rows: list[dict[str, Any]] = []
    for row in _json_rows(path):
        rows.append(row)
        if len(rows) == BATCH_ROWS:
            yield rows
            rows = []
    if rows:
        yield rows


# --------------------------------------------------------------------------------------------
# Rows in the common shape
# --------------------------------------------------------------------------------------------


def scalar_str(value: Any) -> str | None:
    """A gold answer or id as a string; None when empty. Raises ``Skip("bad_row")`` for non-scalars."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise Skip("bad_row")
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value in (float("inf"), float("-inf")):
            raise Skip("bad_row")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    raise Skip("bad_row")


def image_ref(value: Any, base_dir: Path) -> str | bytes:
    """One image value of a row -> an absolute path or encoded bytes (the file is not yet checked)."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return image_ref(value["bytes"], base_dir)
        if value.get("path"):
            return image_ref(value["path"], base_dir)
        raise Skip("bad_row")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(value, str):
        if not value.strip():
            raise Skip("missing_image")
        if value.startswith(("http://", "https://")):
            raise Skip("remote_image")
        if value.startswith("file://"):
            value = value[len("file://") :]
        path = Path(value).expanduser()
        return str((path if path.is_absolute() else base_dir / path).resolve())
    raise Skip("bad_row")


def check_image(ref: str | bytes) -> None:
    """Raise ``Skip`` unless `ref` is an existing, PIL-verifiable image."""
    if isinstance(ref, str) and not Path(ref).is_file():
        raise Skip("missing_image")
    try:
        with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as im:
            im.verify()
    except Exception:
        raise Skip("unreadable_image") from None


@dataclass(frozen=True)
class IndexedRow:
    """One row of the index, as Python values."""

    number: int
    id: str | None
    skip: str | None
    system: str | None
    question: str | None
    answer: str | None
    images: tuple[str | bytes, ...]


def _index_row(raw: dict[str, Any], fmt: str, cols: Columns, id_field: str | None, answer_from: str,
               base_dir: Path) -> tuple[str | None, str | None, tuple[Any, ...]]:  # fmt: skip
    """(id, skip reason, (system, question, answer, images)) of one raw row."""
    rid = None
    if id_field is not None:
        try:
            rid = scalar_str(raw.get(id_field))
        except Skip:
            return None, "bad_row", ()
        if rid is None:
            return None, "missing_id", ()
    try:
        p = to_raw_prompt(raw, fmt, cols, answer_from)  # type: ignore[arg-type]
        if p.question is not None and not isinstance(p.question, str):
            raise Skip("bad_row")
        if p.question is None or not p.question.strip():
            raise Skip("empty_question")
        answer = scalar_str(p.answer)
        if answer is None:
            raise Skip("empty_answer")
        images = tuple(image_ref(v, base_dir) for v in p.images)
        for ref in images:
            if isinstance(ref, str) and not Path(ref).is_file():
                raise Skip("missing_image")
        markers = p.question.count(IMAGE_MARKER)
        if markers and markers != len(images):
            raise Skip("image_marker_mismatch")
        if p.system is not None and not isinstance(p.system, str):
            raise Skip("bad_row")
    except Skip as skip:
        return rid, skip.reason, ()
    except Exception:  # whatever a strange row does, it costs that row only
        return rid, "bad_row", ()
    return rid, None, (p.system, p.question, answer, images)


def _to_batch(rows: list[tuple[int, str | None, str | None, tuple[Any, ...]]]) -> pa.RecordBatch:
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for number, rid, skip, body in rows:
        system, question, answer, images = body or (None, None, None, ())
        cols["number"].append(number)
        cols["id"].append(rid)
        cols["skip"].append(skip)
        cols["system"].append(system)
        cols["question"].append(question)
        cols["answer"].append(answer)
        cols["image_paths"].append([r if isinstance(r, str) else None for r in images])
        cols["image_bytes"].append([r if isinstance(r, bytes) else None for r in images])
    return pa.RecordBatch.from_pydict(cols, schema=SCHEMA)


@dataclass(frozen=True)
class IndexSpec:
    """How a file is indexed: everything the index's content depends on besides the file's bytes."""

    format: str
    """A format of ``formats.FORMATS`` (``auto`` already resolved)."""
    columns: Columns
    id_field: str | None
    """The id column, or None when the file has none (ids are then row numbers across files)."""
    answer_from: str
    base_dir: str
    """Relative image paths resolve against this directory."""

    def key(self, content: str) -> str:
        return _digest(INDEX_VERSION, content, self.format, self.columns, self.id_field, self.answer_from,
                       self.base_dir)  # fmt: skip


def spec_for(path: Path, cfg: Any, answer_from: str, image_root: Path | None) -> IndexSpec:
    """The index spec of `path` under data config `cfg` (format detected when ``data.format: auto``).

    Raises:
        DataError: The file cannot be read as its type, or lacks a column its format needs.
    """
    file_columns = source_columns(path)
    fmt = cfg.format if cfg.format != "auto" else detect_format(file_columns, cfg.question_field)
    cols = columns_of(fmt, file_columns, cfg)
    field_of = {cfg.question_field: "question_field", cfg.answer_field: "answer_field", cfg.image_field: "image_field"}
    for column in cols.required:
        if column not in file_columns:
            if fmt == "rows":
                name = field_of[column]
                hint = " (for text-only rows keep the column with null or [] values)" if name == "image_field" else ""
                raise DataError(f"data.{name}={column!r} not in columns {file_columns} of {path}{hint}")
            raise DataError(f"data.format={fmt}: column {column!r} not in columns {file_columns} of {path}")
    base = image_root or path.parent.resolve()
    id_field = cfg.id_field if cfg.id_field in file_columns else None
    return IndexSpec(fmt, cols, id_field, answer_from, str(base))


def build_index(path: Path, spec: IndexSpec, out: Path, *, progress: bool = False) -> None:
    """Write the index of `path` to `out` (atomically), reading `path` in batches."""
    from tqdm import tqdm

    def write(tmp: Path) -> None:
        base = Path(spec.base_dir)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            number = 0
            with tqdm(desc=f"indexing {path.name}", unit="row", disable=not progress) as bar:
                for raw_rows in source_batches(path):
                    rows = []
                    for raw in raw_rows:
                        rows.append((number, *_index_row(raw, spec.format, spec.columns, spec.id_field,
                                                         spec.answer_from, base)))  # fmt: skip
                        number += 1
                    writer.write_batch(_to_batch(rows))
                    bar.update(len(rows))

    write_atomically(out, write)


def _indexed_row(d: dict[str, Any]) -> IndexedRow:
    images = tuple(p if p is not None else data for p, data in zip(d["image_paths"], d["image_bytes"], strict=True))
    return IndexedRow(d["number"], d["id"], d["skip"], d["system"], d["question"], d["answer"], images)


class Index:
    """A memory-mapped index file: row `i` is read (and its image bytes copied) only when asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open()

    def _open(self) -> None:
        self._source = pa.memory_map(str(self.path), "r")
        reader = pa.ipc.open_file(self._source)
        self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self._starts = [0]
        for b in self._batches:
            self._starts.append(self._starts[-1] + b.num_rows)

    def __len__(self) -> int:
        return self._starts[-1]

    def column(self, name: str) -> list[Any]:
        """One small column (``number``, ``id``, ``skip``) for every row."""
        return [v for b in self._batches for v in b.column(name).to_pylist()]

    def batch_of(self, i: int) -> int:
        """The record batch holding row `i`."""
        return bisect.bisect_right(self._starts, i) - 1

    def row(self, i: int) -> IndexedRow:
        """Row `i`, read through the mapping (only its own pages are touched)."""
        b = self.batch_of(i)
        (d,) = self._batches[b].slice(i - self._starts[b], 1).to_pylist()
        return _indexed_row(d)

    def read_batch(self, b: int) -> dict[int, IndexedRow]:
        """The rows of batch `b` by row number, read into memory of their own (not through the mapping:
        a pass over every row, like the checks, then leaves no mapped pages behind)."""
        with pa.OSFile(str(self.path), "rb") as f:
            batch = pa.ipc.open_file(f).get_batch(b)
        return {self._starts[b] + k: _indexed_row(d) for k, d in enumerate(batch.to_pylist())}

    def close(self) -> None:
        self._batches = []
        self._source.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._open()
