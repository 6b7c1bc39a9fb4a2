"""Fixtures of the GRPO trainer tests: a small synthetic task, a format-warm policy, a runner.

- ``secret_task``, ``warm_policy``, ``learning_recipe``: the secret-number task
  (``srpo_mcore.tiny.secret_task``, re-exported here).
- ``run_train``: ``python -m srpo_mcore.train`` (or torchrun with 2 processes) as a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from srpo_mcore.tiny.secret_task import GOLD, learning_recipe, secret_task, srpo_response, warm_policy

__all__ = ["GOLD", "learning_recipe", "secret_task", "srpo_response", "warm_policy"]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def train_command(recipe: Path, overrides: list[str] = (), nproc: int = 1) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    if nproc == 1:
        return [sys.executable, "-m", "srpo_mcore.train", "--config", str(recipe), *sets]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [*torchrun, "--master_port", str(free_port()), "-m", "srpo_mcore.train", "--config", str(recipe), *sets]


def train_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.setdefault("MASTER_PORT", str(free_port()))
    return env


def run_train(recipe: Path, overrides: list[str] = (), *, nproc: int = 1, timeout: int = 600) -> str:
    """Run the trainer to completion; return its output (raises with the output on failure)."""
    proc = subprocess.run(
        train_command(recipe, overrides, nproc),
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"trainer exited with {proc.returncode}:\n{out[-6000:]}")
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    from srpo_mcore.observe.metrics_log import MetricsLog

    return MetricsLog.read(run_dir)
