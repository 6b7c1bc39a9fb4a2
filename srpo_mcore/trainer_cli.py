"""The command line both trainers share: recipe, one writer per run directory, the job's lifetime.

Owns ``run_cli``, which ``python -m srpo_mcore.sft`` and ``python -m srpo_mcore.train`` call: a torchrun
worker asks to die with its launcher (``parallel.lifetime``), the recipe is read (``--config`` /
``--set``; a bad one is a usage error naming the field), rank 0 takes the run directory's lock
(``run_lock``) for the run's whole life, and only then is the trainer imported (torch, Megatron,
transformers: seconds on a busy 2-core machine) and run. A second trainer on a live run directory
therefore exits within a second or two, naming the holder, and touches nothing.

Exit codes: 0 done (or stopped by SIGTERM after saving), 2 usage / config / a checkpoint that
cannot resume at this layout, 3 the run directory is held by another writer.

Does not own: the trainers (``trainer_core``, ``sft_trainer``, ``grpo_trainer``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from srpo_mcore.config import ConfigError, add_config_args, config_from_args
from srpo_mcore.parallel.env import dist_env_from_environ
from srpo_mcore.parallel.lifetime import die_with_launcher
from srpo_mcore.run_lock import DirLocked, hold_dir


def run_cli(trainer: str, name: str, prog: str, description: str, argv: Sequence[str] | None) -> int:
    """Parse the recipe, hold the run directory, run the trainer ``"module:Class"``; returns the exit code.

    Args:
        trainer: Where the trainer class lives, imported after the lock is held.
        name: The trainer's name in the lock (``the <name> trainer``).
    """
    die_with_launcher()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        parser.error(str(e))
    with contextlib.ExitStack() as stack:
        if dist_env_from_environ().rank == 0:  # before anything is built: a second writer refuses at once
            try:
                stack.enter_context(hold_dir(Path(cfg.output_dir) / cfg.name, f"the {name} trainer"))
            except DirLocked as e:
                print(f"error: {e}", file=sys.stderr)
                return 3
        module, cls = trainer.split(":")
        trainer_cls = getattr(importlib.import_module(module), cls)
        from srpo_mcore.checkpoint.train_state import CheckpointLayoutError

        try:
            run = trainer_cls(cfg)
        except ConfigError as e:
            parser.error(str(e))
        try:
            return run.run()
        except CheckpointLayoutError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            run.close()
