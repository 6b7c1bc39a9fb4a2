"""Run a function in one fresh torchrun-style process (Megatron's global state stays out of pytest).

Reuses tests/dist's harness and input builders.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dist"))

from dist_harness import run_distributed


def run_single(fn: Callable[..., Any], *args: Any) -> Any:
    return run_distributed(fn, 1, *args)[0]
