"""Group-relative advantages (GRPO) and the accuracy filter of the SRPO recipe.

Owns pure tensor functions over rewards arranged as ``[G, N]`` (G prompt groups of N samples):
``group_advantages`` = (r - mean_group) / (std_group + eps), with the std of the group taken as
the population std (N in the denominator, as the GRPO paper writes it), torch's default
Bessel-corrected std (N - 1: what the authors' released SRPO code computes, with eps 1e-9), or not
at all; and ``accuracy_filter``, which keeps groups whose mean accuracy lies in [low, high] —
groups that are all right or all wrong carry no learning signal.

Legend: ``G`` groups (prompts), ``N`` samples per group.
"""

from __future__ import annotations

import torch

STD_MODES = ("population", "unbiased", "none")


def group_advantages(rewards_GN: torch.Tensor, *, std: str = "population", eps: float = 1e-6) -> torch.Tensor:
    """Advantages ``[G, N]``: reward minus its group's mean, divided by the group's std + eps.

    Args:
        std: ``population`` (divide by N), ``unbiased`` (N - 1; a group of one sample has std 0
            there, not NaN) or ``none`` (no division).
    """
    if std not in STD_MODES:
        raise ValueError(f"grpo.std must be one of {', '.join(STD_MODES)}, got {std!r}")
    centered = rewards_GN - rewards_GN.mean(dim=1, keepdim=True)
    if std == "none":
        return centered
    if std == "unbiased" and rewards_GN.shape[1] < 2:
        return centered / eps  # centred values are all 0: a one-sample group carries no signal
    return centered / (rewards_GN.std(dim=1, unbiased=std == "unbiased", keepdim=True) + eps)


def accuracy_filter(correct_GN: torch.Tensor, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Boolean ``[G]``: groups whose mean accuracy lies in [low, high] (inclusive)."""
    acc = correct_GN.float().mean(dim=1)
    return (acc >= low - 1e-12) & (acc <= high + 1e-12)
