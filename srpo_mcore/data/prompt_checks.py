"""Per-row checks of indexed prompts that open the images: readable, and the prompt's token count.

Owns: ``check_rows`` — for the given rows of an ``Index`` (a rank's share), verify every image
with PIL and, with a processor, count the prompt's tokens after image expansion (the length
filter) — and the JSON cache of the result (``read_checks`` / ``write_checks``). These are the
slow part of loading (the processor runs over every image, ~90 rows/s on one core), so they run
in parallel across ranks and once per file content, processor and system prompt.

Does not own: the row-level checks that need no image decode (``prompt_index``), or the threshold
``data.max_prompt_tokens`` (applied by ``rl_dataset`` to the cached counts).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from srpo_mcore.data.formats import Skip
from srpo_mcore.data.prompt_index import Index, IndexedRow, check_image, write_atomically

log = logging.getLogger(__name__)

type Checks = dict[int, int | str]
"""Row of the index -> its prompt token count (-1 without a processor), or the reason it fails."""


def check_rows(
    index: Index,
    rows: Sequence[int],
    count_tokens: Callable[[Any], int] | None,
    *,
    progress: bool = False,
) -> Checks:
    """Check rows `rows` of `index` (each must have no row-level skip reason).

    Args:
        index: The file's index.
        rows: Which of its rows to check, in order.
        count_tokens: Prompt tokens of an ``IndexedRow`` (opens its images); None = verify only.
        progress: Show a progress bar.

    Returns:
        For each row: its token count (-1 when not counted), ``"unreadable_image"``, or
        ``"bad_row"`` when the processor fails on it (logged with the row's id).
    """
    out: Checks = {}
    bar = tqdm(total=len(rows), desc="validating prompts", unit="row", disable=not progress)
    batch: dict[int, IndexedRow] = {}
    for i in rows:
        if i not in batch:  # rows are read a batch at a time, without the mapping (see Index.read_batch)
            batch = index.read_batch(index.batch_of(i))
        row = batch[i]
        bar.update()
        try:
            for ref in row.images:
                check_image(ref)
            out[i] = count_tokens(row) if count_tokens is not None else -1
        except Skip as skip:
            out[i] = skip.reason
        except Exception:  # whatever a strange row does, it costs that row only
            log.exception("prompt row %s of %s", row.id or row.number, index.path)
            out[i] = "bad_row"
    bar.close()
    return out


def read_checks(path: Path) -> Checks | None:
    """The cached checks at `path`, or None when there are none (or they cannot be read)."""
    try:
        saved = json.loads(path.read_text())
        return {int(k): v for k, v in saved["rows"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_checks(path: Path, checks: Checks) -> None:
    """Cache `checks` at `path` (atomically)."""
    body = json.dumps({"rows": {str(k): v for k, v in sorted(checks.items())}})
    write_atomically(path, lambda tmp: tmp.write_text(body))
