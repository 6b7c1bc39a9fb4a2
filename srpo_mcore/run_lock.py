"""One writer per output directory: an exclusive lock, held for the writer's whole life.

Owns ``hold_dir(directory, what)`` (a context manager) and ``DirLocked`` (the refusal). The
trainers (SFT, GRPO), the demo, the reflection builder and the converters hold it on their output
directory; a second writer refuses at once with a message naming the holder.

The lock is ``<dir>/.lock`` (for a directory that appears only when complete — a converter's
output, renamed into place at the end — it is the sibling ``<parent>/.<name>.lock``). The file holds
the holder's record (SLURM job id, host, pid, start time, command) as JSON, for the message.

Mechanisms (``SRPO_LOCK=flock | lease``, default flock):

- ``flock``: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the open file. The kernel releases it when the
  holder's last descriptor closes, so a holder that dies in any way (SIGKILL, OOM kill, a node that
  reboots) leaves no lock behind and the next writer takes over without cleanup. On NFS (v3 with
  lockd, v4 natively) Linux implements ``flock`` as a whole-file byte-range lock on the server, so
  it holds across hosts. On Lustre it holds across hosts only when the client mounts with
  ``-o flock``; with ``localflock`` it is node-local (another node can take it too) and with
  ``noflock`` it fails — that failure (ENOSYS / ENOLCK / EOPNOTSUPP / EINVAL) falls back to the lease.
  On a ``localflock`` mount set ``SRPO_LOCK=lease``.
- ``lease``: the file is created with ``O_CREAT | O_EXCL`` (atomic on NFSv3+ and Lustre); a thread
  of the holder refreshes its mtime every ``heartbeat_s``. A lease is stale when its holder is on
  this host and no longer alive, or when it was not refreshed for ``stale_s`` (another host's
  holder); a stale lease is taken over by renaming it aside (only one contender's rename succeeds)
  and creating a fresh one. Released by deleting it.

Forked children inherit a ``flock`` descriptor: a child that outlives its parent keeps the
directory locked, which is what we want (it is still writing).

Does not own: what is written into the directory.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
_FLOCK_UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}


class DirLocked(RuntimeError):
    """Another live writer holds the directory."""


def lock_path(directory: str | Path, *, appears_at_end: bool = False) -> Path:
    """Where the lock of `directory` lives (see the module docstring)."""
    d = Path(directory)
    return d.parent / f".{d.name}.lock" if appears_at_end else d / LOCK_NAME


def holder_record(what: str) -> dict[str, Any]:
    """Who this process is, for the lock file."""
    return {
        "what": what,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return None


def _refusal(directory: Path, path: Path) -> DirLocked:
    rec = _read_record(path)
    if rec is None:
        holder, rec = f"an unknown process (its lock file {path} cannot be read)", {}
    else:
        job = f", SLURM job {rec['slurm_job_id']}" if rec.get("slurm_job_id") else ""
        holder = (
            f"{rec.get('what', 'a writer')} (pid {rec.get('pid', '?')} on {rec.get('host', '?')}{job}, "
            f"since {rec.get('started', '?')}: {rec.get('command', '')})"
        )
    how = f"scancel {rec['slurm_job_id']}" if rec.get("slurm_job_id") else f"kill {rec.get('pid', '<pid>')}"
    return DirLocked(
        f"{directory} is being written by {holder}. Two writers would corrupt it: wait for that "
        f"one to finish, stop it ({how}), or write elsewhere (another output_dir / name). A lock whose holder "
        f"has died is taken over automatically; {path} never needs deleting by hand."
    )


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record, indent=2) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


# -- flock --------------------------------------------------------------------------------------


def _hold_flock(directory: Path, path: Path, record: dict[str, Any]) -> int | None:
    """The locked descriptor, or None when the filesystem has no flock. Raises DirLocked when held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _refusal(directory, path) from None
        if e.errno in _FLOCK_UNSUPPORTED:
            return None
        raise
    _write_record(fd, record)
    return fd


# -- lease --------------------------------------------------------------------------------------


def _alive_here(record: dict[str, Any]) -> bool | None:
    """Whether the holder is alive, when it is on this host (None when it is not: unknown)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return None
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lease_stale(path: Path, stale_s: float) -> tuple[bool, str]:
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return True, ""
    try:
        record = json.loads(text or "{}")
    except ValueError:
        record = {}
    alive = _alive_here(record)
    if alive is not None:
        return not alive, text
    return time.time() - mtime > stale_s, text


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path, every_s: float) -> None:
        super().__init__(name="srpo-lock-heartbeat", daemon=True)
        self.path, self.every_s, self.stop = path, every_s, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _hold_lease(directory: Path, path: Path, record: dict[str, Any], stale_s: float) -> None:
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            stale, seen = _lease_stale(path, stale_s)
            if not stale:
                raise _refusal(directory, path) from None
            aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
            try:
                os.rename(path, aside)  # one contender wins; the others find the path gone or fresh
            except FileNotFoundError:
                continue
            if aside.read_text() != seen:  # renamed a lease someone took over meanwhile: put it back
                with contextlib.suppress(OSError):
                    os.link(aside, path)
                aside.unlink(missing_ok=True)
                raise _refusal(directory, path) from None
            aside.unlink(missing_ok=True)
            continue
        try:
            _write_record(fd, record)
        finally:
            os.close(fd)
        return
    raise _refusal(directory, path)


# -- the lock -----------------------------------------------------------------------------------


@contextlib.contextmanager
def hold_dir(
    directory: str | Path,
    what: str,
    *,
    appears_at_end: bool = False,
    mode: str | None = None,
    heartbeat_s: float = 10.0,
    stale_s: float = 60.0,
) -> Iterator[Path]:
    """Hold the exclusive lock of `directory` (created if missing) for the ``with`` block.

    Args:
        what: Who holds it, for another writer's message (e.g. ``"the GRPO trainer"``).
        appears_at_end: The directory is renamed into place when complete: lock its sibling file.
        mode: ``flock`` or ``lease`` (default: ``$SRPO_LOCK``, else flock).

    Raises:
        DirLocked: A live writer holds it (the message names the holder and how to proceed).
    """
    directory = Path(directory)
    path = lock_path(directory, appears_at_end=appears_at_end)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = mode or os.environ.get("SRPO_LOCK", "flock")
    if mode not in ("flock", "lease"):
        raise ValueError(f"SRPO_LOCK={mode!r}: choose flock or lease")
    record = holder_record(what)
    fd = _hold_flock(directory, path, record) if mode == "flock" else None
    beat = None
    if fd is None:
        _hold_lease(directory, path, {**record, "lease": True}, stale_s)
        beat = _Heartbeat(path, heartbeat_s)
        beat.start()
    try:
        yield path
    finally:
        if fd is not None:
            os.close(fd)  # the file stays (deleting it would race a waiting writer's open)
        else:
            assert beat is not None
            beat.stop.set()
            path.unlink(missing_ok=True)
