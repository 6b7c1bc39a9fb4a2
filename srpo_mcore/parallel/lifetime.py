"""A job's processes live and die together: a worker whose launcher dies exits.

Owns ``die_with_launcher``, called first thing by every rank a launcher started (the trainers'
command line, the local ``spawn`` of the converters and tests). torchrun's elastic agent starts
each worker in a session of its own, so a SIGKILL of torchrun's process group (``kill -9`` of the
launcher, an OOM kill, a crashed login shell) does not reach the workers: they are orphaned and
train on, writing the run directory next to the job that replaces them. With Linux's
``PR_SET_PDEATHSIG`` the kernel sends the worker SIGKILL the moment its parent exits. SIGKILL, not
SIGTERM: a worker whose launcher (and rendezvous store) is gone cannot finish a collective save;
the checkpoints are atomic, so the last complete one stays valid.

A rank that dies takes the job down too: torchrun stops the other workers when one fails, and
without torchrun (one srun task per rank) the others' collectives fail after
``parallel.timeout_s`` (``init_parallel``).

Only under a launcher: a trainer started by hand (``python -m srpo_mcore.train``, perhaps under
``nohup``) must outlive its shell. Not on macOS (no prctl): there it does nothing.

Does not own: process-group setup (``parallel.setup``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """Whether this process is a worker of torchrun's elastic agent."""
    env = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in env


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Ask the kernel for SIGKILL when the parent process exits; returns whether it was set.

    `parent_pid` is the launcher's pid as the worker first saw it: if the parent is already another
    process (the launcher died before this call), exit at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    expected = parent_pid if parent_pid is not None else os.getppid()
    if os.getppid() != expected:  # orphaned between fork and prctl
        os._exit(1)
    return True


def die_with_launcher() -> bool:
    """``die_with_parent`` when this process is a torchrun worker (see the module docstring)."""
    return launched_by_torchrun() and die_with_parent()
