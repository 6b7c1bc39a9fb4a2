"""``python -m srpo_mcore.train``: the command line of SRPO stage 2 (GRPO, ``grpo_trainer.GRPOTrainer``).

``python -m srpo_mcore.train --config RECIPE.yaml [--set k=v ...]``, under torchrun or srun (one
process per device). Kept free of torch and Megatron imports (``trainer_cli``): ``--help`` answers at
once, and a second trainer on a live run directory refuses before it imports anything heavy.
"""

from __future__ import annotations

from collections.abc import Sequence

from srpo_mcore.trainer_cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run SRPO stage 2 (GRPO with the reflection reward) from a recipe."""
    return run_cli(
        "srpo_mcore.grpo_trainer:GRPOTrainer", "grpo", "python -m srpo_mcore.train", main.__doc__ or "", argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
