"""``python -m srpo_mcore.sft``: the command line of SRPO stage 1 (reflection SFT, ``sft_trainer.SFTTrainer``).

``python -m srpo_mcore.sft --config RECIPE.yaml [--set k=v ...]``, under torchrun or srun. Kept free
of torch and Megatron imports (``trainer_cli``): ``--help`` answers at once, and a second trainer on a
live run directory refuses before it imports anything heavy.
"""

from __future__ import annotations

from collections.abc import Sequence

from srpo_mcore.trainer_cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run SRPO stage 1 (reflection SFT) from a recipe."""
    return run_cli("srpo_mcore.sft_trainer:SFTTrainer", "sft", "python -m srpo_mcore.sft", main.__doc__ or "", argv)


if __name__ == "__main__":
    raise SystemExit(main())
