"""Run a function on N local processes with torchrun-style environment variables (gloo/NCCL).

Owns: ``spawn`` — used by the offline tools (checkpoint conversion: one process per TP x PP rank)
and by the tests. Each process gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; return values come back through files; a failure in any rank raises with every
failing rank's traceback; a rank dies with the process that spawned it. ``run_here``: the one-rank case inside the calling process (no new
interpreter to start: torch + Megatron imports cost ~8 s on a 2-core machine).
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from srpo_mcore.parallel.lifetime import die_with_parent


def free_port() -> int:
    """An unused TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int, world: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple, threads: int, parent: int
) -> None:
    die_with_parent(parent)  # a rank never outlives the process that started it
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(threads)
    try:
        result = fn(*args)
        torch.save({"ok": True, "result": result}, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        torch.save({"ok": False, "error": traceback.format_exc()}, Path(out_dir) / f"rank{rank}.pt")
        raise


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, threads: int | None = None) -> list[Any]:
    """Run ``fn(*args)`` on `world_size` fresh processes; return the per-rank results in rank order.

    Args:
        fn: A module-level function (it is pickled by reference).
        threads: torch intra-op threads per process (default: cores // world_size, at least 1).
    """
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.start_processes(
                _entry,
                args=(world_size, free_port(), out_dir, fn, args, threads, os.getpid()),
                nprocs=world_size,
                start_method="spawn",
            )
        except Exception as e:
            errors = []
            for r in range(world_size):
                f = Path(out_dir) / f"rank{r}.pt"
                if f.exists():
                    payload = torch.load(f, weights_only=False)
                    if not payload["ok"]:
                        errors.append(f"--- rank {r} ---\n{payload['error']}")
            raise RuntimeError("distributed run failed:\n" + "\n".join(errors)) from e
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False)["result"] for r in range(world_size)]


def run_here(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` as the only rank of a one-process world in this process.

    The torchrun variables are set for the call and restored afterwards; `fn` must tear down any
    process group it creates (as the spawned workers do).
    """
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        return fn(*args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
