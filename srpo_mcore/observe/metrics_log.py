"""The run's durable metrics record: ``<run_dir>/metrics.jsonl``, one JSON object per step.

Owns: the file format (``{"step": int, "<name>": float | null, ...}``, one line per step), durable
appends (flush + fsync, so a run killed with SIGKILL keeps every line it wrote), rewinding on resume
(``truncate_after``: an atomic rewrite that drops steps past the checkpoint and a torn last line),
and reading the file back for plots and reports.

Does not own: which metrics exist or how they are reduced across ranks (the trainer), wandb
(``wandb_run``), or pictures (``plots``). Non-finite values are stored as ``null`` so every line
is strict JSON that any tool can parse; a reader cannot tell NaN from inf afterwards, by design.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _to_json_value(name: str, value: Any) -> float | None:
    """One metric value as a finite float or None (JSON null); NaN/inf become None."""
    if value is None:
        return None
    try:
        as_float = float(value)  # also takes numpy scalars and 0-d tensors
    except (TypeError, ValueError) as err:
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}") from err
    return as_float if math.isfinite(as_float) else None


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: some filesystems refuse directory fds)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_lines(text: str, path: Path) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """Parse jsonl text into ``(raw_line, record)`` pairs; return whether a torn last line was dropped.

    Only the last line may be unparseable (a write cut short by a kill). A bad line anywhere else is
    corruption, not a torn write, and raises ``ValueError`` naming the line.
    """
    lines = text.split("\n")
    # A complete file ends with "\n", so the final element is "" unless the last write was torn.
    out: list[tuple[str, dict[str, Any]]] = []
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        is_last = i == len(lines) - 1
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except ValueError as err:
            if is_last:
                torn = True
                continue
            raise ValueError(f"{path}:{i + 1}: corrupt metrics line ({err}): {line[:200]!r}") from err
        if is_last:
            # Parseable but unterminated: the newline never made it to disk, treat as torn too so that
            # the next append cannot glue onto it.
            torn = True
            continue
        out.append((line, record))
    return out, torn


class MetricsLog:
    """Append-only ``metrics.jsonl`` for one run; a no-op when ``enabled`` is False (non-zero ranks).

    Args:
        run_dir: The run directory; created if missing (when enabled).
        enabled: False on every rank but the one that writes (usually global rank 0).

    A torn last line left by a previous kill is cut off on construction, so appends always start on a
    fresh line.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = enabled
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._cut_torn_tail()

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one line ``{"step": step, **metrics}`` and make it durable before returning.

        Args:
            step: The training step (an int; it is the x axis of every plot).
            metrics: Flat mapping of metric name to a number (float, int, bool, numpy or 0-d tensor)
                or None. NaN and inf are written as ``null``.

        Raises:
            ValueError: If `metrics` contains the key ``"step"``.
            TypeError: If a value is not a number.
        """
        if not self.enabled:
            return
        if "step" in metrics:
            raise ValueError("'step' is reserved for the step number; do not pass it as a metric")
        record: dict[str, Any] = {"step": int(step)}
        record.update((name, _to_json_value(name, value)) for name, value in metrics.items())
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        # One write per line, opened per call: truncate_after may have replaced the inode since.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> int:
        """On resume, drop every line with ``step > step`` (and a torn last line) by an atomic rewrite.

        The kept lines are copied byte for byte into a temporary file in the run directory, which then
        replaces ``metrics.jsonl`` with ``os.replace``; a kill at any point leaves either the old or the
        new file, never a mix.

        Args:
            step: The last step whose metrics remain valid (the step of the checkpoint resumed from).

        Returns:
            The number of lines removed (a torn line counts as one).
        """
        if not self.enabled or not self.path.exists():
            return 0
        parsed, torn = _parse_lines(self.path.read_text(encoding="utf-8"), self.path)
        kept = [line for line, record in parsed if record["step"] <= step]
        removed = len(parsed) - len(kept) + int(torn)
        if removed == 0:
            return 0
        fd, tmp_name = tempfile.mkstemp(prefix=f".{METRICS_FILE}.tmp-", dir=self.run_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in kept))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(self.run_dir)
        return removed

    @staticmethod
    def read(run_dir: str | Path) -> list[dict[str, Any]]:
        """All records of a run, in file order; ``[]`` if there is no metrics file yet.

        A torn last line (a write cut short, or one being written by a live run) is skipped.

        Args:
            run_dir: The run directory holding ``metrics.jsonl``.

        Raises:
            ValueError: If a line other than the last is not a JSON object with an integer ``step``.
        """
        path = Path(run_dir) / METRICS_FILE
        if not path.exists():
            return []
        parsed, _ = _parse_lines(path.read_text(encoding="utf-8"), path)
        return [record for _, record in parsed]

    def _cut_torn_tail(self) -> None:
        """Truncate the file back to its last newline, dropping a partial line from a killed run."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Scan back in blocks for the last newline; a torn line is at most one record long.
            pos, block = size, 1 << 16
            while pos > 0:
                start = max(0, pos - block)
                f.seek(start)
                chunk = f.read(pos - start)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    f.truncate(start + nl + 1)
                    break
                pos = start
            else:
                f.truncate(0)
            f.flush()
            os.fsync(f.fileno())
