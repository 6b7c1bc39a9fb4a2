"""Directories that appear only when complete: write into a temporary sibling, then rename.

Owns ``atomic_dir``, used by every writer of checkpoints and run artefacts, so an interrupted
write never leaves anything that looks finished: the temporary ``.<name>.tmp-*`` sibling is
removed on failure, and on success it replaces `out` in one rename.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` write into `tmp`; on exit `tmp` becomes `out` (replacing it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
