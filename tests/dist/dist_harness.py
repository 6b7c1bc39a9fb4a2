"""Test helper: run a function on N gloo processes (the product's own launcher, one thread each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from srpo_mcore.parallel.launch import free_port, spawn

__all__ = ["free_port", "run_distributed"]


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(*args)`` on `world_size` processes; return the per-rank results in rank order."""
    return spawn(fn, world_size, *args, threads=1)
