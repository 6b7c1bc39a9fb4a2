"""Run a function on N gloo processes (torch.multiprocessing spawn) and collect what each returns.

Test helper: each worker gets torchrun-style RANK/WORLD_SIZE/MASTER_* variables, so the code
under test initialises exactly as it does under torchrun. Results travel back as torch.save files.
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        result = fn(*args)
        torch.save({"ok": True, "result": result}, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        torch.save({"ok": False, "error": traceback.format_exc()}, Path(out_dir) / f"rank{rank}.pt")
        raise


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(*args)`` on `world_size` processes; return the per-rank results in rank order."""
    with tempfile.TemporaryDirectory() as out_dir:
        port = free_port()
        try:
            mp.start_processes(_entry, args=(world_size, port, out_dir, fn, args), nprocs=world_size, start_method="spawn")
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
