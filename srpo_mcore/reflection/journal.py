"""Append-only, fsync'd jsonl journals: the builder's progress that survives a kill at any point.

Owns: appending one record per line with ``flush`` + ``fsync`` (a finished item is on disk before
the next one starts), reading a journal back keyed by ``id`` (the last record of an id wins; a
torn last line from a kill is ignored and counted), and the run fingerprint check that refuses to
resume a work directory made with different generation settings.

Does not own: what the records mean (``build``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    """One jsonl file of records, each a JSON object."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.torn_lines = 0
        """Unparseable lines met by ``read`` (a kill in the middle of a write leaves at most one)."""

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` as one line and make it durable before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every intact record, in order."""
        self.torn_lines = 0
        if not self.path.exists():
            return []
        records = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.torn_lines += 1
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records

    def by_id(self) -> dict[str, dict[str, Any]]:
        """Records keyed by their ``id`` (the last one of an id wins)."""
        return {str(r["id"]): r for r in self.read() if "id" in r}


def check_fingerprint(path: Path, fingerprint: dict[str, Any]) -> None:
    """Store `fingerprint` at `path` on the first run; on a rerun, refuse a different one.

    Raises:
        ValueError: The work directory was made with other settings (resuming would mix outputs).
    """
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != fingerprint:
            diff = {k: (stored.get(k), fingerprint.get(k)) for k in set(stored) | set(fingerprint)}
            diff = {k: v for k, v in diff.items() if v[0] != v[1]}
            raise ValueError(
                f"{path.parent} was made with other settings {diff} (stored, now); use a new --out or delete it"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    os.replace(tmp, path)
